"""The paper-scale configs build their real models and compile sharded (reduced batch)."""

import base64
import json

import jax
import numpy as np
import pytest

from trainers import config as config_lib
from trainers.loop import Trainer


@pytest.mark.slow  # published-scale compiles
def test_mambaout_tiny_imagenet_compiles_fsdp_sharded():
    cfg = config_lib.load("configs/mambaout_tiny_imagenet.yaml", ["data.batch_size=8", "mesh.data=1", "mesh.fsdp=8"])
    trainer = Trainer(cfg)
    params = jax.tree.leaves(trainer.abstract_state.params)
    assert sum(p.size for p in params) == 26545096  # the published MambaOut-Tiny
    assert any("fsdp" in str(p.sharding.spec) for p in params)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
        for k, v in trainer.task.example_batch(8).items()
    }
    assert batch["image"].shape == (8, 224, 224, 3)
    with trainer.context():
        compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
    # The step hands back every parameter in the layout it took it: nothing gathered or resharded.
    out_params = compiled.output_shardings[0].params
    assert jax.tree.leaves(out_params) == jax.tree.leaves(trainer.param_shardings)
    np.testing.assert_equal(len(jax.tree.leaves(out_params)), len(params))


def test_dit_xl2_imagenet_compiles_fsdp_sharded():
    # The real width (1152, 16 heads, 32x32x4 latents, 1000 classes); two of the 28 blocks.
    cfg = config_lib.load(
        "configs/dit_xl2_imagenet256.yaml", ["data.batch_size=8", "mesh.data=1", "mesh.fsdp=8", "model.args.depth=2"]
    )
    trainer = Trainer(cfg)
    params = jax.tree.leaves(trainer.abstract_state.params)
    block = trainer.abstract_state.params["blocks"]
    assert block["attn"]["qkv"]["kernel"].shape == (2, 1152, 3, 16, 72)
    assert "fsdp" in str(block["mlp"]["fc1"]["kernel"].sharding.spec)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
        for k, v in trainer.task.example_batch(8).items()
    }
    assert batch["x"].shape == (8, 32, 32, 4)
    with trainer.context():
        compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
    np.testing.assert_equal(len(jax.tree.leaves(compiled.output_shardings[0].params)), len(params))


def _sensevoice_trainer(tmp_path):
    """configs/sensevoice_small.yaml on 8 devices (FSDP), reading a small built-in corpus
    through a 25,055-entry token list, as the published vocabulary."""
    from trainers.data import speech

    speech.build_corpus(str(tmp_path / "corpus"), seed=0, train_size=8, test_size=2)
    pieces = ["<blank>", "<unk>"] + [
        f"\u2581{w}" for w in speech.NUMBERS + speech.NAMES + speech.COLOURS + speech.THINGS
    ]
    pieces += ["\u2581has"] + [f"filler{i}" for i in range(25055 - len(pieces) - 1)]
    (tmp_path / "tokens.json").write_text(json.dumps(pieces))
    cfg = config_lib.load(
        "configs/sensevoice_small.yaml",
        [
            "data.source=speech",
            f"data.path={tmp_path / 'corpus'}",
            "data.eval_split=test",
            "data.batch_size=8",
            "data.max_seconds=4",
            "data.num_workers=0",
            "speech.tokens=pieces",  # the config's SentencePiece model and am.mvn are the release's
            f"speech.token_list={tmp_path / 'tokens.json'}",
            "speech.cmvn_file=",
            "speech.cmvn_utterances=4",
            "mesh.data=1",
            "mesh.fsdp=8",
        ],
    )
    return Trainer(cfg)


def _compile_train_step(trainer):
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
        for k, v in trainer.task.example_batch(8).items()
    }
    with trainer.context():
        compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
    params = jax.tree.leaves(trainer.abstract_state.params)
    np.testing.assert_equal(len(jax.tree.leaves(compiled.output_shardings[0].params)), len(params))


@pytest.mark.slow  # published-scale compiles
def test_sensevoice_small_compiles_fsdp_sharded(tmp_path):
    """The published SenseVoice-Small (70 SAN-M layers 512 wide, 4 heads, FFN 2048, 560
    inputs, 25,055 tokens, prompt queries); its scanned layers compile in seconds."""
    trainer = _sensevoice_trainer(tmp_path)
    params = trainer.abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params)) == 233_999_167
    assert params["ctc_lo"]["kernel"].shape == (512, 25055)
    assert params["encoder"]["encoders0_0"]["self_attn"]["linear_q_k_v"]["kernel"].shape == (560, 1536)
    assert "fsdp" in str(params["encoder"]["tp_encoders"]["feed_forward"]["w_1"]["kernel"].sharding.spec)
    _compile_train_step(trainer)


@pytest.mark.slow  # published-scale compiles
def test_encodec_24khz_compiles_data_parallel_sharded():
    """The published EnCodec 24 kHz with AudioCraft's recipe: real codec, discriminator and
    losses; batch 8 of 1 s over 8 devices."""
    cfg = config_lib.load("configs/encodec_24khz.yaml", ["data.batch_size=8", "mesh.data=8", "data.num_workers=0"])
    trainer = Trainer(cfg)
    params = trainer.abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params["generator"])) == 14_851_810
    assert trainer.abstract_state.model_state["codebooks"]["embed"].shape == (32, 1024, 128)
    assert set(trainer.abstract_state.opt_state) == {"generator", "discriminator"}
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
        for k, v in trainer.task.example_batch(8).items()
    }
    assert batch["audio"].shape == (8, 24000)
    _compile_train_step(trainer)


@pytest.mark.slow  # published-scale compiles
def test_valle_compiles_fsdp_tensor_sharded():
    # The published AR and NAR (12 x 1024, 16 heads, 8 codebooks of 1024), compiled with two
    # of the twelve layers; the codec is only loaded for data, so no weights are needed.
    overrides = [
        "data.batch_size=8",
        "mesh.data=1",
        "mesh.fsdp=4",
        "mesh.tensor=2",
        "tts.max_frames=300",
        "tts.max_text_length=64",
    ]
    params = Trainer(config_lib.load("configs/valle.yaml", overrides)).abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params["ar"])) == 153_781_248
    assert sum(p.size for p in jax.tree.leaves(params["nar"])) == 219_896_832
    trainer = Trainer(config_lib.load("configs/valle.yaml", overrides + ["model.args={num_layers: 2}"]))
    params = trainer.abstract_state.params
    qkv = params["ar"]["decoder"]["layers_0"]["attn"]["qkv"]["kernel"]
    assert qkv.shape == (1024, 3, 16, 64)
    assert "fsdp" in str(qkv.sharding.spec) and "tensor" in str(qkv.sharding.spec)
    assert trainer.task.example_batch(8)["codes"].shape == (8, 300, 8)
    _compile_train_step(trainer)


def test_musicgen_small_compiles_fsdp_sharded():
    overrides = ["data.batch_size=8", "mesh.data=1", "mesh.fsdp=8", "tts.max_frames=200", "tts.max_text_length=64"]
    params = Trainer(config_lib.load("configs/musicgen_small.yaml", overrides)).abstract_state.params["lm"]
    assert sum(p.size for p in jax.tree.leaves(params)) == 319_133_696
    assert params["linears"].shape == (4, 1024, 2048)
    trainer = Trainer(config_lib.load("configs/musicgen_small.yaml", overrides + ["model.args={num_layers: 2}"]))
    assert trainer.task.example_batch(8)["codes"].shape == (8, 200, 4)
    _compile_train_step(trainer)


def test_sd_vae_encodes_and_decodes_256px_fsdp_sharded():
    """DiT's VAE at its published size: encode and decode of 256x256 images, the weights
    sharded over 8 devices (FSDP) and the batch over the same devices."""
    import flax.linen as nn
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxmodels import vae
    from trainers import sharding

    model = vae.create("sd-vae-ft-ema", dtype=jnp.bfloat16)
    mesh = sharding.make_mesh(data=1, fsdp=8)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    param_shardings = sharding.param_shardings(boxed, mesh)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.meta.unbox(boxed), param_shardings
    )
    assert sum(p.size for p in jax.tree.leaves(params)) == 83_653_863
    assert "fsdp" in str(param_shardings["params"]["decoder"]["up_blocks_0"]["resnets_0"]["conv1"]["kernel"].spec)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    images = jax.ShapeDtypeStruct((8, 256, 256, 3), jnp.float32, sharding=batch)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):

        def round_trip(variables, x):
            mean, std = model.apply(variables, x, method=model.encode)
            return mean, model.apply(variables, mean, method=model.decode)

        compiled = jax.jit(round_trip).lower(params, images).compile()
    mean, decoded = compiled.output_shardings
    assert compiled.out_info[0].shape == (8, 32, 32, 4) and compiled.out_info[1].shape == (8, 256, 256, 3)
    assert mean.is_equivalent_to(batch, 4) and decoded.is_equivalent_to(batch, 4)
    # Each device decodes its own image: 0.5 GB of temporaries, 1.2 GB when the batch is gathered.
    assert compiled.memory_analysis().temp_size_in_bytes < 0.8e9


def test_hubert_large_encodes_fsdp_sharded_in_bfloat16():
    """HuBERT Large at its published size (315,438,720 parameters, as transformers counts), its
    24 layers scanned and rematerialised: every hidden state of a padded batch of 2 s
    utterances, the weights FSDP-sharded over 8 devices and the batch over the same devices."""
    import flax.linen as nn
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxmodels import ssl
    from trainers import sharding

    model = ssl.create("hubert_large", dtype=jnp.bfloat16, remat=True)
    mesh = sharding.make_mesh(data=1, fsdp=8)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 400)))
    param_shardings = sharding.param_shardings(boxed, mesh)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.meta.unbox(boxed), param_shardings
    )
    assert sum(p.size for p in jax.tree.leaves(params)) == 315_438_720
    q = param_shardings["params"]["encoder_layers"]["attention_q_proj"]["kernel"]
    assert q.spec == P(None, "fsdp", "tensor")  # (layers, embed, heads): the stacked layers, FSDP by width
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    audio = jax.ShapeDtypeStruct((8, 32000), jnp.float32, sharding=batch)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        compiled = (
            jax.jit(lambda v, x, p: model.apply(v, x, p, method="hidden_states")).lower(params, audio, audio).compile()
        )
    assert len(compiled.out_info) == 25 and compiled.out_info[-1].shape == (8, 99, 1024)
    assert all(s.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 3) for s in compiled.output_shardings)


@pytest.mark.slow  # published-scale compiles
def test_w2v_bert_2_encodes_fsdp_sharded_in_bfloat16():
    """w2v-BERT 2.0 at its published size (580,493,120 parameters, as transformers counts), its
    24 Conformer layers scanned and rematerialised: every hidden state of a padded batch of 10 s
    of features (500 frames of 160), FSDP-sharded over 8 devices and the batch over the same."""
    import flax.linen as nn
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxmodels import ssl
    from trainers import sharding

    model = ssl.create("w2v_bert_2", dtype=jnp.bfloat16, remat=True)
    mesh = sharding.make_mesh(data=1, fsdp=8)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 160)))
    param_shardings = sharding.param_shardings(boxed, mesh)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.meta.unbox(boxed), param_shardings
    )
    assert sum(p.size for p in jax.tree.leaves(params)) == 580_493_120
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    features = jax.ShapeDtypeStruct((8, 500, 160), jnp.float32, sharding=batch)
    paddings = jax.ShapeDtypeStruct((8, 500), jnp.float32, sharding=batch)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        hidden = jax.jit(lambda v, x, p: model.apply(v, x, p, method="hidden_states"))
        compiled = hidden.lower(params, features, paddings).compile()
    assert len(compiled.out_info) == 25 and compiled.out_info[-1].shape == (8, 500, 1024)
    assert all(s.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 3) for s in compiled.output_shardings)


def _extracted(folder, what: str, values, **meta):
    """A one-utterance folder as trainers.extract writes it (only its shapes matter here)."""
    folder.mkdir(parents=True)
    np.save(folder / f"p0_s00000_{what}.npy", values)
    np.save(folder / "p0_s00000_lengths.npy", np.array([len(values)], np.int32))
    np.save(folder / "p0_s00000_indices.npy", np.array([0]))
    index = {"shards": [{"prefix": "p0_s00000", "rows": 1}], "what": what, "keys": ["u0"], **meta}
    (folder / "index.json").write_text(json.dumps(index))


@pytest.mark.slow  # published-scale compiles
def test_speechtokenizer_compiles_data_parallel_sharded_with_distillation(tmp_path):
    """The released SpeechTokenizer (103,675,586 parameters) with its recipe's losses, its three
    discriminators and the D-axis distillation from 768-wide teacher features: batch 8 of 3 s
    over 8 devices."""
    for split in ("train-clean-100+train-clean-360+train-other-500", "dev-clean"):
        _extracted(tmp_path / split, "features", np.zeros((150, 768), np.float16), frame_rate=50, layer="avg")
    overrides = ["data.batch_size=8", "mesh.data=8", "data.num_workers=0", f"codec.semantic_features={tmp_path}"]
    trainer = Trainer(config_lib.load("configs/speechtokenizer_librispeech.yaml", overrides))
    params = trainer.abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params["generator"])) == 103_675_586
    assert sum(p.size for p in jax.tree.leaves(params["discriminator"])) == 71_196_921
    assert trainer.task.example_batch(8)["semantic"].shape == (8, 150, 768)
    _compile_train_step(trainer)


@pytest.mark.slow  # published-scale compiles
def test_audiolm_coarse_stage_compiles_fsdp_tensor_sharded(tmp_path):
    """AudioLM's coarse stage at the paper's size over 500 HuBERT units at 50 Hz and 4 of
    SpeechTokenizer's 8 codebooks (10 s: 500 prefix and 2000 target tokens), compiled with
    two of its twelve layers."""
    for split in ("train", "dev"):
        _extracted(tmp_path / "units" / split, "units", np.zeros(500, np.int32), frame_rate=50, clusters=500)
        _extracted(tmp_path / "codes" / split, "codes", np.zeros((500, 8), np.int16), frame_rate=50, bins=1024)
    overrides = ["data.batch_size=8", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2", "data.num_workers=0"]
    overrides += [f"audiolm.units={tmp_path / 'units'}", f"audiolm.codes={tmp_path / 'codes'}"]
    params = Trainer(config_lib.load("configs/audiolm_coarse.yaml", overrides)).abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params)) == 160_058_368
    trainer = Trainer(config_lib.load("configs/audiolm_coarse.yaml", overrides + ["model.args={num_layers: 2}"]))
    assert trainer.task.example_batch(8)["target"].shape == (8, 2000)
    qkv = trainer.abstract_state.params["transformer"]["layers_0"]["attn"]["qkv"]["kernel"]
    assert "fsdp" in str(qkv.sharding.spec) and "tensor" in str(qkv.sharding.spec)
    _compile_train_step(trainer)


def _cosyvoice_trainer(config: str, tmp_path):
    """A CosyVoice-300M recipe over one extracted utterance's tokens and x-vector: batch 8 of 10 s
    (500 tokens) over 4 x 2 devices, one micro-batch."""
    for split in ("train", "dev"):
        _extracted(tmp_path / "tokens" / split, "units", np.zeros(500, np.int32), frame_rate=50, clusters=4096)
        _extracted(tmp_path / "xvectors" / split, "features", np.zeros((1, 192), np.float16), frame_rate=0.0)
    overrides = ["data.batch_size=8", "data.batch_seconds=0", "data.max_seconds=10", "data.num_workers=0"]
    overrides += ["optimizer.grad_accum_steps=1", "mesh.data=4", "mesh.fsdp=2"]
    overrides += [f"data.tokens={tmp_path / 'tokens'}", f"data.xvectors={tmp_path / 'xvectors'}"]
    if "llm" in config:  # Whisper's 50,257 ranks stood in for by as many made-up ones: 51,866 text ids
        tokens = [bytes([b]) for b in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
        lines = "".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens[:50257]))
        (tmp_path / "multilingual.tiktoken").write_text(lines)
        overrides.append(f"llm.text_tokenizer={tmp_path / 'multilingual.tiktoken'}")
    return Trainer(config_lib.load(config, overrides))


@pytest.mark.slow  # published-scale compiles
def test_cosyvoice_flow_300m_compiles_fsdp_sharded(tmp_path):
    """CosyVoice-300M's flow decoder (104,874,752 parameters) with its recipe's loss: 8 utterances
    of 10 s (500 tokens, 861 mel frames) over 4 x 2 devices."""
    trainer = _cosyvoice_trainer("configs/cosyvoice_flow_300m.yaml", tmp_path)
    params = trainer.abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params)) == 104_874_752
    batch = trainer.task.example_batch(8)
    assert batch["audio"].shape == (8, 220416) and batch["tokens"].shape == (8, 500)
    _compile_train_step(trainer)


@pytest.mark.slow  # published-scale compiles
def test_cosyvoice_llm_300m_compiles_fsdp_sharded(tmp_path):
    """CosyVoice-300M's LM (310,718,465 parameters): 8 utterances of 10 s (500 tokens) and 200
    text ids over 4 x 2 devices."""
    trainer = _cosyvoice_trainer("configs/cosyvoice_llm_300m.yaml", tmp_path)
    params = trainer.abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params)) == 310_718_465
    batch = trainer.task.example_batch(8)
    assert batch["text"].shape == (8, 200) and batch["speech"].shape == (8, 500)
    assert trainer.task.train_transform.text_ids.size == 51866
    _compile_train_step(trainer)


@pytest.mark.slow  # published-scale compiles
def test_cosyvoice2_flow_compiles_fsdp_sharded(tmp_path):
    """CosyVoice 2's flow decoder (112,549,360 parameters): 8 utterances of 10 s (250 tokens at
    25 Hz, 500 mel frames at 24 kHz) over 4 x 2 devices, the streaming choice in the step."""
    for split in ("train", "dev"):
        _extracted(tmp_path / "tokens" / split, "units", np.zeros(250, np.int32), frame_rate=25, clusters=6561)
        _extracted(tmp_path / "xvectors" / split, "features", np.zeros((1, 192), np.float16), frame_rate=0.0)
    overrides = ["data.batch_size=8", "data.batch_seconds=0", "data.max_seconds=10", "data.num_workers=0"]
    overrides += ["optimizer.grad_accum_steps=1", "mesh.data=4", "mesh.fsdp=2", "model.init_from="]
    overrides += [f"data.tokens={tmp_path / 'tokens'}", f"data.xvectors={tmp_path / 'xvectors'}"]
    trainer = Trainer(config_lib.load("configs/cosyvoice2_flow.yaml", overrides))
    assert sum(p.size for p in jax.tree.leaves(trainer.abstract_state.params)) == 112_549_360
    batch = trainer.task.example_batch(8)
    assert batch["audio"].shape == (8, 240000) and batch["tokens"].shape == (8, 250)
    _compile_train_step(trainer)


@pytest.mark.slow  # published-scale compiles
def test_cosyvoice2_llm_compiles_fsdp_sharded(tmp_path):
    """CosyVoice 2's LM (505,803,812 parameters, Qwen2-0.5B inside): 8 utterances of 10 s (250
    tokens at 25 Hz) and 200 text ids over 4 x 2 devices, the bistream packing in the step."""
    for split in ("train", "dev"):
        _extracted(tmp_path / "tokens" / split, "units", np.zeros(250, np.int32), frame_rate=25, clusters=6561)
    overrides = ["data.batch_size=8", "data.batch_seconds=0", "data.max_seconds=10", "data.num_workers=0"]
    overrides += ["optimizer.grad_accum_steps=1", "mesh.data=4", "mesh.fsdp=2", "model.init_from="]
    overrides += [f"data.tokens={tmp_path / 'tokens'}", "llm.text_tokenizer=tests/data/cosyvoice_text/qwen2"]
    trainer = Trainer(config_lib.load("configs/cosyvoice2_llm.yaml", overrides))
    params = trainer.abstract_state.params
    assert sum(p.size for p in jax.tree.leaves(params)) == 505_803_812
    assert params["llm"]["layers"]["self_attn_k_proj"]["kernel"].shape == (24, 896, 128)
    batch = trainer.task.example_batch(8)
    assert batch["text"].shape == (8, 200) and batch["speech"].shape == (8, 250)
    _compile_train_step(trainer)


@pytest.mark.slow  # published-scale compiles
@pytest.mark.parametrize("config", ["hubert_base_librispeech", "wav2vec2_base_librispeech"])
def test_ssl_pretraining_recipes_compile_fsdp_sharded(config, tone_corpus, tmp_path):
    """HuBERT Base's first iteration and wav2vec 2.0 Base as fairseq's recipes set them (the
    Base encoder's 94,371,712 parameters, dropout and layer drop, Adam's 0.98 and 1e-6): their
    train steps compile over 4 x 2 devices, here on the tone corpus with 8 crops of 2 s (and 5 clusters:
    the corpus has too few frames for 100)."""
    data = [f"data.source=manifest data.path={tone_corpus} data.train_split=train data.eval_split=test"]
    data += ["data.batch_seconds=0 data.batch_size=8 data.eval_batch_size=8 data.max_seconds=2.0 data.num_workers=0"]
    overrides = " ".join(data + ["mesh.data=4 mesh.fsdp=2"]).split()
    if config.startswith("hubert"):
        overrides += [f"hubert.targets_dir={tmp_path / 'targets'}", "hubert.fit_utterances=24", "hubert.clusters=5"]
    trainer = Trainer(config_lib.load(f"configs/{config}.yaml", overrides))
    encoder = trainer.abstract_state.params["encoder"]
    assert sum(p.size for p in jax.tree.leaves(encoder)) == 94_371_712
    assert trainer.task.encoder.layerdrop == 0.05 and trainer.task.encoder.hidden_dropout == 0.1
    assert (trainer.cfg.optimizer.b2, trainer.cfg.optimizer.eps) == (0.98, 1e-6)
    _compile_train_step(trainer)
