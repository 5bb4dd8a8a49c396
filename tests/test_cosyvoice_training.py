"""CosyVoice's flow decoder and LM trained on what trainers.extract writes (task: cosyvoice_flow,
task: cosyvoice_llm): each utterance's S3 tokens and x-vector as the models give them alone;
for each task a run that evaluates and resumes exactly, a sharded step equal to one device's,
and the errors that name a missing or mismatched folder or example."""

import concurrent.futures
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import (
    ROOT,
    assert_resumes_bitwise,
    assert_same_updates,
    manifest_data,
    one_step_on_one_and_eight_devices,
)
from PIL import Image

from jaxmodels import speechlm
from jaxmodels.cosyvoice import s3tokenizer

# One resolution and one block of each kind, at the tone corpus's 16 kHz (100 mel frames a
# second of 16 bins) and the tiny S3 tokenizer's 50 Hz tokens of 256 codes.
TINY_FLOW = {
    "vocab_size": 256,
    "input_size": 16,
    "output_size": 16,
    "spk_embed_dim": 128,
    "sample_rate": 16000,
    "hop_length": 160,
    "attention_heads": 2,
    "linear_units": 16,
    "num_blocks": 1,
    "channels": [16],
    "attention_head_dim": 4,
    "n_blocks": 1,
    "num_mid_blocks": 1,
    "num_heads": 2,
}
TINY_LLM = {
    "text_token_size": 256,
    "speech_token_size": 256,
    "text_encoder_input_size": 16,
    "text_encoder_output_size": 16,
    "llm_input_size": 16,
    "llm_output_size": 16,
    "spk_embed_dim": 128,
    "text_encoder_heads": 2,
    "text_encoder_linear_units": 16,
    "text_encoder_blocks": 1,
    "llm_heads": 2,
    "llm_linear_units": 16,
    "llm_blocks": 1,
}
ALIGNED_LLM = {**TINY_LLM, "word_alignment": True}
RUN = {"steps": 4, "log_every": 1, "eval_every": 4, "checkpoint_every": 2, "async_checkpointing": False}
SGD = {"name": "sgd", "lr": 0.1, "schedule": "constant", "weight_decay": 0.0, "clip_grad_norm": 0.0}


@pytest.fixture(scope="module")
def cosyvoice_data(tone_corpus, tmp_path_factory):
    """The tone corpus's S3 tokens (the v1 tokenizer of tests/data/s3tokenizer_reference.npz) and
    x-vectors (a speaker embedder trained on its voices), written by trainers.extract."""
    from safetensors.numpy import save_file

    from trainers import extract, speaker

    root = tmp_path_factory.mktemp("cosyvoice")
    with np.load(ROOT / "tests" / "data" / "s3tokenizer_reference.npz") as f:
        weights = {k[6:]: f[k].astype(np.float32) for k in f.files if k.startswith("v1/sd/")}
        save_file(weights, str(root / "s3.safetensors"))
        s3 = s3tokenizer.S3Config(**json.loads(str(f["v1/config"])))
    data = manifest_data(tone_corpus, max_seconds=0.06)
    (root / "data.yaml").write_text(json.dumps({"task": "cosyvoice_flow", "data": data}))
    common = ["--splits", "train,test", "--batch_size", "8"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(s3tokenizer.CONFIGS, "s3_tiny", s3)
        extract.main(
            ["s3tokens", str(root / "data.yaml"), "--s3tokenizer", str(root / "s3.safetensors"), "--s3tokenizer_model"]
            + ["s3_tiny", "--workdir", str(root / "tokens"), *common]
        )
    speaker.main([str(root / "data.yaml"), "--out", str(root / "speaker.npz"), "--steps", "20"])
    extract.main(
        ["xvectors", str(root / "data.yaml"), "--speaker", str(root / "speaker.npz")]
        + ["--workdir", str(root / "xvectors"), *common]
    )
    return {**data, "tokens": str(root / "tokens"), "xvectors": str(root / "xvectors")}, root, s3


def task_config(data, task, **sections):
    from trainers import config as config_lib

    config = {
        "task": task,
        "data": data,
        "optimizer": {"name": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0},
        "train": RUN,
    }
    if task == "cosyvoice_flow":
        config["model"] = {"name": "flow_cosyvoice_300m", "args": TINY_FLOW}
        config["flow"] = {"n_fft": 320, "win_length": 320, "eval_examples": 2}
        config["flow"].update(prompt_seconds=0.02, generate_seconds=0.02)
    else:
        config["model"] = {"name": "llm_cosyvoice_300m", "args": TINY_LLM}
        config["llm"] = {"max_text_tokens": 16, "eval_examples": 3}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config_lib.parse(config)


def test_cosyvoice_extracted_tokens_and_xvectors_are_each_utterances_own(cosyvoice_data, tone_corpus):
    from safetensors.numpy import load_file

    from trainers.data import speech
    from trainers.data.extracted import ExtractedFrames
    from trainers.speaker import SpeakerEmbedder

    data, root, s3 = cosyvoice_data
    tokens, xvectors = ExtractedFrames(f"{data['tokens']}/test"), ExtractedFrames(f"{data['xvectors']}/test")
    assert tokens.what == "units" and tokens.frame_rate == 50 and tokens.meta["clusters"] == 256 and len(tokens) == 6
    model, variables = s3tokenizer.S3Tokenizer(s3), s3tokenizer.from_torch(load_file(str(root / "s3.safetensors")), s3)
    embedder = SpeakerEmbedder.load(str(root / "speaker.npz"))
    for key in ("test0", "test3"):
        audio = speech.read_audio(str(tone_corpus / "wav" / f"{key}.wav"))
        mel, frames = s3tokenizer.log_mel_spectrogram(audio[None], np.array([len(audio)]))
        alone, n = model.apply(variables, mel, frames, method="quantize")
        np.testing.assert_array_equal(tokens[key], np.asarray(alone)[0, : int(n[0])])
        np.testing.assert_allclose(xvectors[key][0], embedder([audio])[0], atol=2e-3)  # stored in float16
        assert xvectors[key].shape == (1, 128)
    with pytest.MonkeyPatch.context() as patch:  # new audio tokenized as the folder's was (AudioLM's units)
        patch.setitem(s3tokenizer.CONFIGS, "s3_tiny", s3)
        waves = [speech.read_audio(str(tone_corpus / "wav" / f"{key}.wav")) for key in ("test0", "test3")]
        again = tokens.unit_tokenizer()(waves)
    assert [a.tolist() for a in again] == [tokens[key].tolist() for key in ("test0", "test3")]


def test_campplus_xvectors_are_each_utterances_own(cosyvoice_data, tone_corpus, tmp_path):
    """trainers.extract xvectors --campplus: CAM++'s embedding of each utterance (the narrowed model of
    tests/data/campplus_reference.npz), as it gives it alone."""
    from safetensors.numpy import save_file

    from jaxmodels.cosyvoice import campplus
    from trainers import extract
    from trainers.data import speech
    from trainers.data.extracted import ExtractedFrames

    _, root, _ = cosyvoice_data
    with np.load(ROOT / "tests" / "data" / "campplus_reference.npz") as f:
        save_file({k[3:]: f[k] for k in f.files if k.startswith("sd/")}, str(tmp_path / "campplus.safetensors"))
    cfg = campplus.CAMPPlusConfig(growth_rate=8, bn_size=2, init_channels=32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(campplus.CONFIGS, "campplus_tiny", cfg)
        extract.main(
            ["xvectors", str(root / "data.yaml"), "--campplus", str(tmp_path / "campplus.safetensors")]
            + ["--campplus_model", "campplus_tiny", "--workdir", str(tmp_path / "xvectors")]
            + ["--splits", "test", "--batch_size", "8"]
        )
        model, variables = campplus.load(str(tmp_path / "campplus.safetensors"), "campplus_tiny")
    xvectors = ExtractedFrames(f"{tmp_path}/xvectors/test")
    assert xvectors.meta["campplus_model"] == "campplus_tiny" and len(xvectors) == 6
    for key in ("test0", "test3"):
        audio = speech.read_audio(str(tone_corpus / "wav" / f"{key}.wav"))
        alone = np.asarray(campplus.embed(model, variables, audio[None], np.array([len(audio)])))[0]
        assert xvectors[key].shape == (1, 192)
        np.testing.assert_allclose(xvectors[key][0], alone, rtol=2e-3, atol=1e-3 * np.abs(alone).max())  # float16
    with pytest.raises(SystemExit, match="give one of --campplus"):
        extract.main(["xvectors", str(root / "data.yaml"), "--workdir", str(tmp_path / "none")])


@pytest.mark.slow  # two runs: init, the step, eval and generation compiled
@pytest.mark.parametrize("task", ["cosyvoice_flow", "cosyvoice_llm", "cosyvoice_llm_aligned"])
def test_cosyvoice_trains_evaluates_and_resumes_exactly(cosyvoice_data, task, tmp_path):
    from trainers.loop import train

    data, _, _ = cosyvoice_data
    aligned = task.endswith("_aligned")
    cfg = task_config(data, task.removesuffix("_aligned"), **(VARIANTS[task] if aligned else {}))
    final = train(cfg, str(tmp_path / "run"))
    if task == "cosyvoice_flow":
        # The velocity's squared error per value: the log-mels lie about 10 below zero.
        assert 0 < final["eval/loss"] < 300 and 0 < final["eval/mel_distance"] < 20, final
        with Image.open(tmp_path / "run" / "spectrograms.png") as picture:
            assert picture.format == "PNG"
    else:
        assert 0 < final["eval/loss"] < 2 * np.log(257) and 0 <= final["eval/accuracy"] <= 1, final
        # Three tokens fit 0.06 s, and eos waits for twice the text's bytes: every row draws three;
        # word-aligned rows end when their words do, at least a token a word
        assert final["eval/length_ratio"] >= (0.3 if aligned else 1), final
        assert 0 <= final["eval/token_error_rate"] <= 1, final
        if aligned:
            assert 0 < final["eval/advance_loss"] and 0 <= final["eval/advance_accuracy"] <= 1, final
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped"] for r in rows if "train/skipped" in r] == [0.0] * 4

    assert_resumes_bitwise(cfg, tmp_path / "run", 4, final)


DIT_FLOW = {**TINY_FLOW, "estimator": "dit", "dit_hidden": 16, "dit_depth": 2, "dit_heads": 2}
TINY_QWEN2 = {"vocab_size": 420, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2}
QWEN2_LM = {  # CosyVoice 2's LM, narrowed, reading text with the Qwen2 tokenizer of tests/data
    "model": {"name": "llm_cosyvoice2", "args": {"speech_token_size": 256, "llm": TINY_QWEN2}},
    "llm": {"text_tokenizer": str(ROOT / "tests" / "data" / "cosyvoice_text" / "qwen2")},
}
QWEN2_LM["model"]["args"]["llm"].update(num_attention_heads=4, num_key_value_heads=2)
CAUSAL_FLOW = {**TINY_FLOW, "token_mel_ratio": 2, "causal": True, "chunk_size": 2}  # CosyVoice 2's, at 16 kHz
VARIANTS = {
    "cosyvoice_flow_dit": {"model": {"args": DIT_FLOW}},
    "cosyvoice_flow_causal": {"model": {"args": CAUSAL_FLOW}},
    "cosyvoice_llm_qwen2": QWEN2_LM,
    "cosyvoice_llm_aligned": {"model": {"args": ALIGNED_LLM}, "llm": {"pair_prob": 0.5}},
}


@pytest.mark.slow  # two runs: init, the step, eval and generation compiled
def test_cosyvoice2_flow_trains_evaluates_and_resumes_exactly(cosyvoice_data, tmp_path):
    """task: cosyvoice_flow with CosyVoice 2's causal flow: audio cut to two mel frames a token."""
    from trainers.loop import train

    data, _, _ = cosyvoice_data
    cfg = task_config(data, "cosyvoice_flow", model={"args": CAUSAL_FLOW})
    final = train(cfg, str(tmp_path / "run"))
    assert 0 < final["eval/loss"] < 300 and 0 < final["eval/mel_distance"] < 20, final
    assert_resumes_bitwise(cfg, tmp_path / "run", 4, final)


@pytest.mark.slow  # two runs: init, the step, eval and generation compiled
def test_cosyvoice2_lm_trains_evaluates_and_resumes_exactly(cosyvoice_data, tmp_path):
    """task: cosyvoice_llm with CosyVoice 2's Qwen2LM: Qwen2's text ids, no x-vector."""
    from trainers.loop import train

    data, _, _ = cosyvoice_data
    cfg = task_config({**data, "xvectors": ""}, "cosyvoice_llm", **QWEN2_LM)
    final = train(cfg, str(tmp_path / "run"))
    assert 0 < final["eval/loss"] < 2 * np.log(259) and 0 <= final["eval/accuracy"] <= 1, final
    assert final["eval/length_ratio"] > 0 and 0 <= final["eval/token_error_rate"] <= 1, final
    assert_resumes_bitwise(cfg, tmp_path / "run", 4, final)


@pytest.mark.slow  # two steps compiled for each task
@pytest.mark.parametrize("task", ["cosyvoice_flow", *VARIANTS, "cosyvoice_llm"])
def test_cosyvoice_step_on_eight_devices_equals_one(cosyvoice_data, task):
    data, _, _ = cosyvoice_data
    sections = VARIANTS.get(task, {})
    task = task.removesuffix("_dit").removesuffix("_causal").removesuffix("_qwen2").removesuffix("_aligned")

    def batch(task):
        source = task.train_source()
        rows = [task.train_transform(source[i], np.random.default_rng(i)) for i in range(8)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    results = one_step_on_one_and_eight_devices(
        lambda mesh: task_config(data, task, optimizer=SGD, mesh=mesh, **sections), batch
    )
    (before, metrics, after), (_, sharded_metrics, sharded_after) = results
    np.testing.assert_allclose(sharded_metrics["train/loss"], metrics["train/loss"], rtol=1e-5)
    assert_same_updates(before, sharded_after, after)


def test_cosyvoice_errors(cosyvoice_data, tmp_path):
    from trainers.config import ConfigError
    from trainers.tasks import get_task

    data, _, _ = cosyvoice_data
    with pytest.raises(ConfigError, match="data.tokens: give the folder of python -m trainers.extract s3tokens"):
        get_task(task_config({**data, "tokens": ""}, "cosyvoice_flow"))
    with pytest.raises(ConfigError, match="holds tokens at 50.0 Hz; model flow_cosyvoice_300m reads them at 25"):
        get_task(task_config(data, "cosyvoice_flow", model={"args": {**TINY_FLOW, "input_frame_rate": 25}}))
    with pytest.raises(ConfigError, match="256 codes; model llm_cosyvoice_300m reads S3 tokens of 4096"):
        get_task(task_config(data, "cosyvoice_llm", model={"args": {**TINY_LLM, "speech_token_size": 4096}}))
    task = get_task(task_config(data, "cosyvoice_flow", model={"args": {**TINY_FLOW, "spk_embed_dim": 192}}))
    with pytest.raises(ConfigError, match="128-wide x-vectors; the model's spk_embed_dim is 192"):
        task.train_transform(task.train_source()[0], np.random.default_rng(0))
    task = get_task(task_config(data, "cosyvoice_llm", llm={"max_text_tokens": 3}))
    with pytest.raises(ValueError, match=r"speech tokens; the examples hold 3 \(llm.max_text_tokens\)"):
        task.train_transform(task.train_source()[0], np.random.default_rng(0))
    skipping = get_task(task_config({**data, "on_bad_audio": "skip"}, "cosyvoice_llm", llm={"max_text_tokens": 3}))
    assert skipping.train_transform(skipping.train_source()[0], np.random.default_rng(0))["mask"] == 0


def test_cosyvoice_llm_reads_text_as_a_released_tokenizer(cosyvoice_data, tmp_path):
    """llm.text_tokenizer: a .tiktoken ranks file gives the ids jaxmodels.cosyvoice.text gives
    (equal to upstream's: tests/test_cosyvoice_text.py); a model with fewer text ids is an error."""
    import shutil

    from jaxmodels.cosyvoice import text
    from trainers.config import ConfigError
    from trainers.tasks import get_task

    data, _, _ = cosyvoice_data
    ranks = tmp_path / "multilingual.tiktoken"
    shutil.copy(ROOT / "tests" / "data" / "cosyvoice_text" / "ranks.tiktoken", ranks)
    llm_section = {"text_tokenizer": str(ranks), "max_text_tokens": 64}
    task = get_task(
        task_config(data, "cosyvoice_llm", llm=llm_section, model={"args": {**TINY_LLM, "text_token_size": 2065}})
    )
    record = task.train_source()[0]
    example = task.train_transform(record, np.random.default_rng(0))
    ids = text.encode(text.load(str(ranks)), record["target"])
    assert len(ids) < len(record["target"].encode()) and example["text_length"] == len(ids)
    np.testing.assert_array_equal(example["text"][: len(ids)], ids)
    with pytest.raises(ConfigError, match="text_token_size: 256, fewer than the 2065 ids of llm.text_tokenizer"):
        get_task(task_config(data, "cosyvoice_llm", llm=llm_section))
    with pytest.raises(ConfigError, match="llm.text_tokenizer: text tokenizer not found: .*absent.tiktoken"):
        get_task(task_config(data, "cosyvoice_llm", llm={"text_tokenizer": str(tmp_path / "absent.tiktoken")}))


def styled(corpus, root):
    """The tone corpus with its speakers named in the built-in corpus's way (voice/p<pitch>/r<rate>),
    one speaking style each, which speech.speaking_style reads."""
    root.mkdir()
    (root / "wav").symlink_to(corpus / "wav")
    names = {"s0": "tone/p30/r140", "s1": "tone/p50/r170", "s2": "tone/p70/r200", "s3": "tone/p30/r200"}
    for split in ("train", "test"):
        records = [json.loads(line) for line in open(corpus / f"{split}.jsonl")]
        lines = [json.dumps({**r, "speaker": names[r["speaker"]]}) for r in records]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_cosyvoice_instruct_transcripts_follow_their_style(cosyvoice_data, tone_corpus, tmp_path):
    """llm.instruct: the text ids are the utterance's instruction (its speaking style) and then
    its transcript, and the LM reads no x-vector; a speaker key without the style is an error."""
    from trainers.data import speech
    from trainers.tasks import get_task
    from trainers.tasks.cosyvoice_llm import instruction

    data, _, _ = cosyvoice_data
    llm_section = {"instruct": True, "max_text_tokens": 64}
    task = get_task(task_config({**data, "path": str(styled(tone_corpus, tmp_path / "styled"))}, "cosyvoice_llm",
                                llm=llm_section))  # fmt: skip
    record = task.train_source()[0]
    example = task.train_transform(record, np.random.default_rng(0))
    said = bytes(example["text"][: example["text_length"]].tolist()).decode()
    assert said == instruction(speech.speaking_style(record)) + record["target"]
    assert said.startswith(("slow speed, low pitch<|endofprompt|>", "normal speed, normal pitch<|endofprompt|>"))
    assert example["xvector"].shape == (0,) and task.example_batch(2)["xvector"].shape == (2, 0)
    plain = get_task(task_config(data, "cosyvoice_llm", llm=llm_section))
    with pytest.raises(ValueError, match="speaker 's0' is not the built-in corpus's voice/p<pitch>/r<rate>"):
        plain.train_transform(plain.train_source()[0], np.random.default_rng(0))


def test_cosyvoice_pairs_put_another_utterance_of_the_voice_first(cosyvoice_data):
    """llm.pair_prob: an example is another utterance of the voice and then this one (text ids
    and tokens end to end, the first's x-vector), as zero-shot inference prompts the LM; an
    instruct LM takes no pairs."""
    from trainers.config import ConfigError
    from trainers.tasks import get_task

    data, _, _ = cosyvoice_data
    longer = {**data, "max_seconds": 0.12}
    task = get_task(task_config(longer, "cosyvoice_llm", llm={"pair_prob": 1.0}))
    plain = get_task(task_config(longer, "cosyvoice_llm"))
    records = task.train_source().records
    single = {r["key"]: plain.train_transform(r, np.random.default_rng(0)) for r in records}
    record = records[0]
    example = task.train_transform(record, np.random.default_rng(0))
    said = bytes(example["text"][: example["text_length"]].tolist()).decode()
    own = single[record["key"]]
    n, end = example["speech_length"] - own["speech_length"], example["speech_length"]
    np.testing.assert_array_equal(example["speech"][n:end], own["speech"][: own["speech_length"]])
    first = next(
        r
        for r in records
        if r["speaker"] == record["speaker"]
        and r["key"] != record["key"]
        and said == r["target"] + record["target"]
        and single[r["key"]]["speech_length"] == n
        and np.array_equal(single[r["key"]]["speech"][:n], example["speech"][:n])
    )
    np.testing.assert_array_equal(example["xvector"], single[first["key"]]["xvector"])
    with pytest.raises(ConfigError, match="llm.pair_prob: pairs are zero-shot prompts"):
        get_task(task_config(data, "cosyvoice_llm", llm={"pair_prob": 0.5, "instruct": True}))
    with pytest.raises(ConfigError, match="llm.pair_prob with data.batch_seconds"):
        get_task(task_config({**data, "batch_seconds": 1.0}, "cosyvoice_llm", llm={"pair_prob": 0.5}))


def test_cosyvoice_guidance_dropout_trains_rows_without_their_text(cosyvoice_data):
    """llm.guidance_dropout: a training row of the dropped share is scored without its text (at 1,
    every row: the loss of the batch with no text); evaluation keeps the text."""
    from trainers.tasks import get_task

    data, _, _ = cosyvoice_data
    dropping = get_task(task_config(data, "cosyvoice_llm", llm={"guidance_dropout": 1.0}))
    plain = get_task(task_config(data, "cosyvoice_llm"))
    rows = [plain.train_transform(r, None) for r in plain.train_source().records[:3]]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    params = nn.unbox(plain.init(jax.random.key(0), batch)["params"])
    params["llm_decoder"]["kernel"] *= 100  # logits far from uniform, so the text moves the loss
    rng = jax.random.key(1)
    no_text = {**batch, "text_length": np.zeros_like(batch["text_length"])}
    loss, _ = dropping.loss(params, batch, rng, 0)
    np.testing.assert_allclose(loss, plain.loss(params, no_text, rng, 0)[0], rtol=1e-6)
    assert abs(float(loss) - float(plain.loss(params, batch, rng, 0)[0])) > 1e-3
    np.testing.assert_array_equal(
        dropping.eval_outputs(params, batch)["nll"], plain.eval_outputs(params, batch)["nll"]
    )


def test_cosyvoice_speaking_starts_at_the_offset(cosyvoice_data, monkeypatch):
    """llm.speak_offset, llm.speak_pairs: the eval speaks those of the eval split's pairs."""
    from trainers.data import speech
    from trainers.tasks import get_task

    data, _, _ = cosyvoice_data
    task = get_task(task_config(data, "cosyvoice_llm", llm={"speak_offset": 1, "speak_pairs": 1}))
    pairs = speech.prompt_pairs(task.eval_source().records)
    assert len(pairs) >= 2
    monkeypatch.setattr(task, "voice", lambda params: None)
    monkeypatch.setattr(task, "_say", lambda voice, prompt, target, key: (np.zeros(4), np.zeros(4)))
    assert task.speak({})["tts_text"] == [pairs[1][1]["target"]]


def test_cosyvoice_phonemes_are_the_text_ids_of_espeak_phonemes(cosyvoice_data, tone_corpus, tmp_path):
    """llm.text_tokenizer phonemes: the ids are the UTF-8 bytes of eSpeak NG's phonemes of the
    transcript (an instruction's <|endofprompt|> kept as written), in the data and in the tokenizer
    the chain reads; data loaders' threads phonemise at once (eSpeak NG is one state a process)."""
    pytest.importorskip("espeakng_loader")
    from trainers.data import speech
    from trainers.tasks import get_task
    from trainers.tasks.cosyvoice_llm import instruction

    data, _, _ = cosyvoice_data
    llm_section = {"instruct": True, "max_text_tokens": 128, "text_tokenizer": "phonemes"}
    task = get_task(task_config({**data, "path": str(styled(tone_corpus, tmp_path / "styled"))}, "cosyvoice_llm",
                                llm=llm_section))  # fmt: skip
    record = task.train_source()[0]
    example = task.train_transform(record, np.random.default_rng(0))
    said = bytes(example["text"][: example["text_length"]].tolist()).decode()
    asked, words = instruction(speech.speaking_style(record)).split("<|endofprompt|>")[0], record["target"]
    assert said == speech.phonemize([asked])[0] + "<|endofprompt|>" + speech.phonemize([words])[0]
    assert task.text_ids.tokenizer.encode("three red") == list(b"Tr'i: r'Ed")
    texts = [f"{w} red cats" for w in ("one", "two", "three", "four", "five", "six", "seven", "eight")] * 8
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda t: speech.phonemize([t])[0], texts)) == speech.phonemize(texts)


def test_cosyvoice_instruct_eval_generates_after_the_instruction_as_prompt_text(
    cosyvoice_data, tone_corpus, tmp_path, monkeypatch
):
    """The eval's generation gives the LM the instruction as its prompt text, as upstream's
    inference_instruct does, so that the length limits (tokens per text id) count the transcript only."""
    from trainers.data import speech
    from trainers.tasks import cosyvoice_llm, get_task

    data, _, _ = cosyvoice_data
    styled_data = {**data, "path": str(styled(tone_corpus, tmp_path / "styled"))}
    task = get_task(task_config(styled_data, "cosyvoice_llm", llm={"instruct": True, "max_text_tokens": 64}))
    read = []

    def generate(model, params, rng, text, text_length, prompt_text, prompt_length, *rest, max_new_tokens):
        read.extend(zip(prompt_text, prompt_length, text, text_length))
        return np.zeros((len(text), 1), np.int32), np.ones(len(text), np.int32)

    monkeypatch.setattr(cosyvoice_llm.llm, "generate", generate)
    task.generate({}, None)
    for record, (prompt, prompt_n, text, text_n) in zip(task.eval_source(), read):
        assert bytes(prompt[:prompt_n].tolist()).decode() == cosyvoice_llm.instruction(speech.speaking_style(record))
        assert bytes(text[:text_n].tolist()).decode() == record["target"]
    assert len(read) == task.cfg.llm.eval_examples


def s3_recogniser_config(corpus, **encoder):
    """A tiny SenseVoice-style recogniser with CosyVoice's S3 quantizer after its second of three
    layers (8 codes), 50 frames a second (lfr_n 2)."""
    from conftest import TINY_SENSEVOICE

    from trainers import config as config_lib

    conf = {**TINY_SENSEVOICE["args"]["encoder_conf"], "num_blocks": 3, "quantizer_layer": 2, "codebook_size": 8}
    speech = {"tokens": "words", "lfr_m": 2, "lfr_n": 2, "cmvn_utterances": 8, "dither": 0.0}
    return config_lib.parse(
        {
            "task": "ctc",
            "model": {"name": "sensevoice_small", "args": {"encoder_conf": {**conf, **encoder}}},
            "data": manifest_data(corpus),
            "speech": {**speech, "num_freq_masks": 0, "num_time_masks": 0, "beam_size": 2},
            "optimizer": {"name": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0},
            "train": RUN,
        }
    )


@pytest.mark.slow  # a run, its resumption and an extraction: init, the step, eval and tokens compiled
def test_cosyvoice_s3_tokenizer_trains_inside_the_recogniser(tone_corpus, tmp_path):
    """The quantizer's codebook is model state moved by its averages in the step (k-means at the
    first), resumed bitwise with the params; eval reports the codebook's use; trainers.extract
    s3tokens writes each utterance's tokens as the run gives them alone."""
    from trainers import config as config_lib
    from trainers import extract
    from trainers.data import speech
    from trainers.data.extracted import ExtractedFrames
    from trainers.loop import Trainer, train
    from trainers.tasks.ctc import Recognizer

    cfg = s3_recogniser_config(tone_corpus)
    final = train(cfg, str(tmp_path / "run"))
    assert 1 <= final["eval/codes_used"] <= 8 and 1 <= final["eval/code_perplexity"] <= final["eval/codes_used"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["train/commitment"] < 2 for r in rows if "train/loss" in r)

    a = assert_resumes_bitwise(cfg, tmp_path / "run", 4, final)
    codebook = a["state"]["quantizer"]["encoder"]["quantizer"]["codebook"]
    assert bool(codebook["inited"][0]) and np.abs(codebook["embed"]).max() > 0

    (tmp_path / "data.yaml").write_text(config_lib.dump(cfg))
    out = tmp_path / "tokens"
    extract.main(
        ["s3tokens", str(tmp_path / "data.yaml"), "--s3tokenizer", str(tmp_path / "run")]
        + ["--workdir", str(out), "--splits", "test", "--batch_size", "8"]
    )
    tokens = ExtractedFrames(str(out / "test"))
    assert tokens.frame_rate == 50 and tokens.meta["clusters"] == 8
    recogniser = Recognizer(str(tmp_path / "run"))
    audio = speech.read_audio(str(tone_corpus / "wav" / "test2.wav"))
    codes, count = recogniser.s3_tokens(audio[None], np.array([len(audio)]))
    np.testing.assert_array_equal(tokens["test2"], np.asarray(codes)[0, : int(count[0])])
    assert (tokens["test2"] >= 0).all() and (tokens["test2"] < 8).all()

    with pytest.raises(ValueError, match="quantizer_layer 3: the quantizer goes after layer 1 to 2"):
        Trainer(s3_recogniser_config(tone_corpus, quantizer_layer=3))


def test_cosyvoice_s3_fsq_rounds_to_the_grid_with_the_gradient_straight_through():
    """CosyVoice 2's quantizer: each value bounded by tanh and rounded to -1, 0 or 1, the code the
    digits + 1 in base 3 (first least significant), the gradient that of the bounded values; in the
    recogniser, log3(codebook_size) values a frame, codes -1 past each row, no model state."""
    from conftest import TINY_SENSEVOICE

    from jaxmodels.asr.model import SenseVoiceEncoderSmall
    from jaxmodels.codec import quantization

    h = np.array([[-3.0, 0.2, 3.0], [0.6, -0.4, 0.0]], np.float32)
    rounded, codes = quantization.fsq(h)
    np.testing.assert_array_equal(rounded, [[-1, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(codes, [0 + 1 * 3 + 2 * 9, 2 + 1 * 3 + 1 * 9])
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    grad = jax.grad(lambda h: (quantization.fsq(h)[0] * weights).sum())(h)
    np.testing.assert_allclose(grad, weights * 0.999 * (1 - np.tanh(h) ** 2), rtol=1e-4)

    conf = {**TINY_SENSEVOICE["args"]["encoder_conf"], "num_blocks": 3, "quantizer_layer": 2}
    encoder = SenseVoiceEncoderSmall(**conf, quantizer="fsq", codebook_size=27)
    x, lengths = jax.random.normal(jax.random.key(0), (2, 10, 16)), np.array([10, 6])
    variables = nn.unbox(encoder.init(jax.random.key(1), x, lengths))
    assert set(variables) == {"params"}
    assert variables["params"]["quantizer"]["project_down"]["kernel"].shape == (32, 3)
    codes = encoder.apply(variables, x, lengths, tokens_only=True)
    assert ((codes[0] >= 0) & (codes[0] < 27)).all() and (codes[1, 6:] == -1).all() and (codes[1, :6] >= 0).all()
    grads = jax.grad(lambda p: encoder.apply({"params": p}, x, lengths).sum())(variables["params"])
    assert np.abs(grads["encoders"]["feed_forward"]["w_1"]["kernel"]).max() > 0  # through the rounding
    with pytest.raises(ValueError, match=r"codebook_size 32: FSQ at three levels makes 3 \*\* dims codes"):
        SenseVoiceEncoderSmall(**conf, quantizer="fsq", codebook_size=32).init(jax.random.key(1), x, lengths)
    with pytest.raises(ValueError, match="quantizer 'rvq': 'vq' .CosyVoice 1. or 'fsq' .CosyVoice 2."):
        SenseVoiceEncoderSmall(**conf, quantizer="rvq").init(jax.random.key(1), x, lengths)


@pytest.mark.slow  # a run, its resumption and an extraction compiled
def test_cosyvoice_s3_fsq_tokenizer_trains_inside_the_recogniser(tone_corpus, tmp_path):
    """With encoder_conf.quantizer fsq the recogniser trains without a codebook to move, reports
    the codes it uses, resumes bitwise, and trainers.extract writes its tokens (27 codes)."""
    from trainers import config as config_lib
    from trainers import extract
    from trainers.data.extracted import ExtractedFrames
    from trainers.loop import train

    cfg = s3_recogniser_config(tone_corpus, quantizer="fsq", codebook_size=27)
    final = train(cfg, str(tmp_path / "run"))
    assert 1 <= final["eval/codes_used"] <= 27
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any("train/commitment" in r for r in rows)
    a = assert_resumes_bitwise(cfg, tmp_path / "run", 4, final)
    assert not a["state"] and "project_up" in a["params"]["encoder"]["quantizer"]

    (tmp_path / "data.yaml").write_text(config_lib.dump(cfg))
    extract.main(
        ["s3tokens", str(tmp_path / "data.yaml"), "--s3tokenizer", str(tmp_path / "run")]
        + ["--workdir", str(tmp_path / "tokens"), "--splits", "test", "--batch_size", "8"]
    )
    tokens = ExtractedFrames(str(tmp_path / "tokens" / "test"))
    assert tokens.meta["clusters"] == 27
    assert all(((tokens[key] >= 0) & (tokens[key] < 27)).all() for key in tokens)


@pytest.mark.slow  # five tiny runs: init, the steps, eval, extraction and speaking compiled
def test_cosyvoice_speaks_from_trained_runs(cosyvoice_data, tone_corpus, tmp_path, capsys):
    """The chain of parts trained here: an S3 tokenizer inside a recogniser, its tokens and the
    speaker embedder's x-vectors extracted, a flow decoder, a HiFT vocoder and the LM, whose
    eval speaks the eval split's pairs zero-shot through the others for speech_wer (the same
    recogniser) and speaker_similarity; then python -m trainers.tts speaks with the LM's run."""
    from trainers import config as config_lib
    from trainers import extract
    from trainers.data import speech
    from trainers.loop import train
    from trainers.tts import main as tts

    data, root, _ = cosyvoice_data
    two = {**RUN, "steps": 2, "eval_every": 2, "checkpoint_every": 2}
    train(s3_recogniser_config(tone_corpus), str(tmp_path / "s3"))
    extract.main(
        ["s3tokens", str(root / "data.yaml"), "--s3tokenizer", str(tmp_path / "s3")]
        + ["--workdir", str(tmp_path / "tokens"), "--splits", "train,test", "--batch_size", "8"]
    )
    data = {**data, "tokens": str(tmp_path / "tokens")}
    flow_args = {**TINY_FLOW, "vocab_size": 8, "prior_loss_weight": 1.0, "start_time": 0.5}  # the demo's recipe
    flow = task_config(data, "cosyvoice_flow", model={"args": flow_args}, train=two)
    train(flow, str(tmp_path / "flow"))
    vocoder = {"sample_rate": 16000, "in_channels": 16, "base_channels": 16, "f0_channels": 8}
    vocoder.update(upsample_rates=[5, 4, 2], upsample_kernel_sizes=[10, 8, 4], source_resblock_kernel_sizes=[3, 3, 3])
    vocoder.update(source_resblock_dilation_sizes=[[1, 3]] * 3, resblock_kernel_sizes=[3])
    vocoder["resblock_dilation_sizes"] = [[1]]
    hift = {"segment_frames": 4, "n_fft": 320, "win_length": 320, "n_mels": 16, "discriminators": ["mrsd"]}
    hift_config = {
        "task": "hift",
        "model": {"name": "hift_cosyvoice_300m", "args": vocoder},
        "data": manifest_data(tone_corpus, max_seconds=0.06),
        "hift": {**hift, "disc_channel_divisor": 8, "eval_examples": 1},
        "optimizer": {"name": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0},
        "train": two,
    }
    train(config_lib.parse(hift_config), str(tmp_path / "hift"))
    chain = {"s3tokenizer_run": str(tmp_path / "s3"), "flow_run": str(tmp_path / "flow")}
    chain.update(hift_run=str(tmp_path / "hift"), speaker=str(root / "speaker.npz"), speak_pairs=2)
    evals = [{"name": "speech_wer", "run": str(tmp_path / "s3")}]
    evals.append({"name": "speaker_similarity", "weights": str(root / "speaker.npz")})
    lm_args = {**TINY_LLM, "speech_token_size": 8, "top_k": 4}  # of 8 tokens and eos
    lm = task_config(data, "cosyvoice_llm", model={"args": lm_args}, llm=chain, train=two)
    lm = config_lib.parse({**config_lib.to_dict(lm), "evals": evals})
    final = train(lm, str(tmp_path / "lm"))
    assert 0 <= final["eval/wer"] and -1 <= final["eval/speaker_similarity"] <= 1
    assert len(list((tmp_path / "lm" / "tts").glob("*_generated.wav"))) == 2
    # Trained as CosyVoice-Instruct's LM, word-aligned as the demo's: eval speaks in instruct mode, and each style.
    instruct = {**chain, "instruct": True, "style_pairs": 1, "max_text_tokens": 64}
    styled_data = {**data, "path": str(styled(tone_corpus, tmp_path / "styled"))}
    aligned_args = {**lm_args, "word_alignment": True}
    instruct = task_config(styled_data, "cosyvoice_llm", model={"args": aligned_args}, llm=instruct, train=two)
    instruct = config_lib.parse({**config_lib.to_dict(instruct), "evals": evals})
    final = train(instruct, str(tmp_path / "instruct"))
    assert 0 <= final["eval/wer"] and -1 <= final["eval/speaker_similarity"] <= 1
    styles = [f"seconds_{r}" for r in speech.STYLES["rate"]] + [f"f0_{p}" for p in speech.STYLES["pitch"]]
    assert all(final[f"eval/style/{k}"] > 0 for k in styles[:3]) and all(f"eval/style/{k}" in final for k in styles)

    (tmp_path / "lm.yaml").write_text(config_lib.dump(lm))
    prompt = str(tone_corpus / "wav" / "test2.wav")
    tts([str(tmp_path / "lm.yaml"), "--workdir", str(tmp_path / "lm"), "--text", "ab", "--prompt", prompt]
        + ["--prompt-text", "a", "--out", str(tmp_path / "said.wav")])  # fmt: skip
    assert "zero-shot, checkpoint 2" in capsys.readouterr().out
    said = speech.read_audio(str(tmp_path / "said.wav"))
    assert len(said) > 0 and np.all(np.isfinite(said))
    # Word-aligned: eval and python -m trainers.tts tell the LM each token's word
    aligned = task_config(data, "cosyvoice_llm", model={"args": aligned_args}, llm=chain, train=two)
    aligned = config_lib.parse({**config_lib.to_dict(aligned), "evals": evals})
    final = train(aligned, str(tmp_path / "aligned"))
    assert 0 <= final["eval/wer"] and 0 < final["eval/advance_loss"], final
    (tmp_path / "aligned.yaml").write_text(config_lib.dump(aligned))
    tts([str(tmp_path / "aligned.yaml"), "--workdir", str(tmp_path / "aligned"), "--text", "ab cd", "--prompt", prompt]
        + ["--prompt-text", "a", "--out", str(tmp_path / "aligned.wav")])  # fmt: skip
    assert len(speech.read_audio(str(tmp_path / "aligned.wav"))) > 0
    (tmp_path / "instruct.yaml").write_text(config_lib.dump(instruct))
    tts([str(tmp_path / "instruct.yaml"), "--workdir", str(tmp_path / "instruct"), "--text", "ab", "--prompt", prompt]
        + ["--instruct", "fast speed, low pitch<|endofprompt|>", "--out", str(tmp_path / "asked.wav")])  # fmt: skip
    assert "(instruct, checkpoint 2)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="was trained with instructions \\(llm.instruct\\): give --instruct"):
        tts([str(tmp_path / "instruct.yaml"), "--workdir", str(tmp_path / "instruct"), "--text", "ab"]
            + ["--prompt", prompt, "--out", str(tmp_path / "x.wav")])  # fmt: skip


def test_cosyvoice_word_aligned_examples_tell_each_token_its_word(cosyvoice_data):
    """model.args.word_alignment: each text byte's word (-1 at spaces), each position's from
    task_id on the word of the token it predicts (from word_starts at the tokens' rate), one past
    the last where eos is due; in a pair the prompt's tokens are told none and the record's words
    come after the prompt transcript's. The loss adds advance's cross entropy; an LM that reads
    no words between spaces is a config error."""
    from trainers.config import ConfigError
    from trainers.tasks import get_task
    from trainers.tasks.tts.words import frame_words, word_frames

    data, _, _ = cosyvoice_data
    longer = {**data, "max_seconds": 0.12}
    aligned = {"model": {"args": ALIGNED_LLM}}
    task = get_task(task_config(longer, "cosyvoice_llm", **aligned))
    record = next(r for r in task.train_source().records if len(r["target"].split()) == 2)
    example = task.train_transform(record, None)
    n, words = int(example["speech_length"]), record["target"].split()
    expected = [0] * len(words[0]) + [-1] + [1] * len(words[1])
    np.testing.assert_array_equal(example["text_words"][: len(expected)], expected)
    assert np.all(example["text_words"][len(expected) :] == -1)
    rate = task.train_transform.tokens.frame_rate
    own = frame_words(word_frames(record, rate, n), n)
    assert own[0] == 0 and own[-1] == 1
    np.testing.assert_array_equal(example["speech_words"][: n + 1], [*own, 2])

    pairs = get_task(task_config(longer, "cosyvoice_llm", llm={"pair_prob": 1.0}, **aligned))
    pair = pairs.train_transform(record, np.random.default_rng(0))
    p = int(pair["speech_length"]) - n
    prompt_words = int(pair["text_words"].max()) - 1  # the record's two words follow the prompt's
    assert p > 0 and np.all(pair["speech_words"][:p] == -1)
    np.testing.assert_array_equal(pair["speech_words"][p : p + n + 1], [*(own + prompt_words), prompt_words + 2])

    rows = [task.train_transform(r, None) for r in task.train_source().records[:4]]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    params = nn.unbox(task.init(jax.random.key(0), batch)["params"])
    loss, metrics = task.loss(params, batch, jax.random.key(1), 0)
    scores = {k: np.sum(v) for k, v in task.eval_outputs(params, batch).items()}
    assert scores["advance_count"] == sum(int(r["speech_length"]) for r in rows)
    np.testing.assert_allclose(
        loss, scores["nll"] / scores["count"] + scores["advance_nll"] / scores["advance_count"], rtol=1e-5
    )
    assert 0 <= metrics["train/advance_accuracy"] <= 1
    released = {"text_tokenizer": str(ROOT / "tests" / "data" / "cosyvoice_text" / "ranks.tiktoken")}
    with pytest.raises(ConfigError, match="word_alignment reads the text's words between spaces"):
        get_task(task_config(data, "cosyvoice_llm", llm=released, **aligned))


def test_cosyvoice_word_aligned_instruct_lm_reads_the_instruction_as_prompt_words(
    cosyvoice_data, tone_corpus, tmp_path, monkeypatch
):
    """With llm.instruct the instruction's words come first, as a pair's prompt transcript's: no
    token is told one, the transcript's are numbered after them; the eval's generation gives
    each text's words counted from 0, as the chain does."""
    from trainers.data import speech
    from trainers.tasks import cosyvoice_llm, get_task
    from trainers.tasks.tts.words import frame_words, word_frames

    data, _, _ = cosyvoice_data
    styled_data = {**data, "path": str(styled(tone_corpus, tmp_path / "styled")), "max_seconds": 0.12}
    task = get_task(
        task_config(
            styled_data, "cosyvoice_llm", model={"args": ALIGNED_LLM}, llm={"instruct": True, "max_text_tokens": 64}
        )
    )
    record = next(r for r in task.train_source().records if len(r["target"].split()) == 2)
    example = task.train_transform(record, None)
    asked = list(cosyvoice_llm.instruction(speech.speaking_style(record)).encode())  # bytes: one id each
    said = speechlm.text_words(list(record["target"].encode()))
    expected = [*speechlm.text_words(asked), *np.where(said >= 0, said + 4, -1)]  # the instruction's 4 words
    np.testing.assert_array_equal(example["text_words"][: len(expected)], expected)
    n = int(example["speech_length"])
    own = frame_words(word_frames(record, task.train_transform.tokens.frame_rate, n), n)
    np.testing.assert_array_equal(example["speech_words"][: n + 1], [*(own + 4), 6])

    read = {}

    def generate(model, params, rng, text, text_length, prompt_text, prompt_length, *rest, max_new_tokens, **words):
        read.update(text=(text, text_length, words["text_words"]))
        read.update(prompt_text=(prompt_text, prompt_length, words["prompt_text_words"]))
        return np.zeros((len(text), 1), np.int32), np.ones(len(text), np.int32)

    monkeypatch.setattr(cosyvoice_llm.llm, "generate", generate)
    task.generate({}, None)
    for ids, lengths, words in read.values():
        for row, n, told in zip(ids, lengths, words):
            np.testing.assert_array_equal(told, [*speechlm.text_words(row[:n]), *[-1] * (len(row) - n)])
    assert np.all(read["prompt_text"][2].max(1) == 3)  # the instruction's four words
