"""What CosyVoice's LM and flow tasks share: a speech corpus with the S3 tokens and x-vectors that
trainers.extract wrote of it, looked up per utterance."""

import functools
from dataclasses import dataclass

from trainers.config import ConfigError
from trainers.data.extracted import ExtractedFrames
from trainers.data.speech import AudioDataConfig


@dataclass
class CosyVoiceDataConfig(AudioDataConfig):
    """A speech corpus with what trainers.extract wrote of it (folders holding <split>/)."""

    tokens: str = ""  # S3 tokens: python -m trainers.extract s3tokens
    xvectors: str = ""  # speaker embeddings: python -m trainers.extract xvectors


def extracted(cfg, split: str, vocab: int, token_rate: float | None = None, xvectors: bool = True):
    """(tokens, xvectors): the split's ExtractedFrames, the tokens checked to be S3 tokens of the
    model's vocabulary (and rate, when it reads them at one); xvectors None where not asked for."""
    d = cfg.data
    for key, kind in (("tokens", "s3tokens"), ("xvectors", "xvectors"))[: 2 if xvectors else 1]:
        if not getattr(d, key):
            raise ConfigError(f"data.{key}: give the folder of python -m trainers.extract {kind}")
    tokens = ExtractedFrames(f"{d.tokens}/{split}")
    xvectors = ExtractedFrames(f"{d.xvectors}/{split}") if xvectors else None
    if tokens.what != "units" or tokens.meta.get("clusters") != vocab:
        raise ConfigError(
            f"data.tokens: {d.tokens} holds {tokens.what} of {tokens.meta.get('clusters')} codes; model "
            f"{cfg.model.name} reads S3 tokens of {vocab}"
        )
    if token_rate is not None and tokens.frame_rate != token_rate:
        raise ConfigError(
            f"data.tokens: {d.tokens} holds tokens at {tokens.frame_rate} Hz; model {cfg.model.name} reads them "
            f"at {token_rate} Hz"
        )
    return tokens, xvectors


def xvector(xvectors, key: str, width: int):
    """The utterance's x-vector (width,), checked against the model's width."""
    value = xvectors[key][0]
    if value.shape != (width,):
        raise ConfigError(f"data.xvectors: {value.shape[0]}-wide x-vectors; the model's spk_embed_dim is {width}")
    return value


def prompt_audio(path: str, sample_rate: int):
    """(16 kHz samples, samples at ``sample_rate``) of a prompt recording, as a CosyVoice takes
    it (the S3 tokenizer and speaker embedder read the first, the flow's mel the second); the
    file is read once when the rates agree."""
    from trainers.data import speech

    wav_16k = speech.read_audio(path, speech.SAMPLE_RATE, resample=True)
    if sample_rate == speech.SAMPLE_RATE:
        return wav_16k, wav_16k
    return wav_16k, speech.read_audio(path, sample_rate, resample=True)


def voice_from_runs(lm_task, s3tokenizer: str, flow_run: str, hift_run: str, speaker: str, **sampling):
    """A jaxmodels.cosyvoice.pipeline.CosyVoice of parts trained here, without the LM's params
    (lm_params None: the caller's): the LM of a cosyvoice_llm task, the S3 tokenizer of a ctc
    run trained with the quantizer inside, a cosyvoice_flow run, a hift run and the speaker
    embedder the x-vectors were extracted with (python -m trainers.speaker); `sampling`, the
    CosyVoice's flow_temperature and flow_prompt. The prompt's mel is the flow's own features."""
    from jaxmodels.cosyvoice import pipeline
    from trainers.runs import load_run
    from trainers.speaker import SpeakerEmbedder
    from trainers.tasks.ctc import Recognizer

    recogniser = Recognizer(s3tokenizer)
    if not recogniser.task.quantizer:
        raise ConfigError(
            f"{s3tokenizer}: the recogniser has no S3 quantizer (model.args.encoder_conf.quantizer_layer)"
        )
    flow, flow_params = load_run(flow_run, "cosyvoice_flow", "flow decoder")
    vocoder, vocoder_params = load_run(hift_run, "hift", "vocoder")
    embedder = SpeakerEmbedder.load(speaker)
    rates = {"flow": flow.task.config.sample_rate, "hift": vocoder.task.config.sample_rate}
    if rates["flow"] != rates["hift"]:
        raise ConfigError(f"the flow decoder makes mel at {rates['flow']} Hz, the vocoder reads {rates['hift']} Hz")
    return pipeline.CosyVoice(
        lm_task.model,
        None,
        flow.task.model,
        {"params": flow_params},
        vocoder.task.model,
        {"params": vocoder_params["generator"]},
        recogniser.s3_tokens,
        functools.partial(embedder.embed, embedder.params),
        flow.task.mel,
        lm_task.text_ids.tokenizer,
        text_frontend=False,  # the LM read the corpus's transcripts as written
        **sampling,
    )
