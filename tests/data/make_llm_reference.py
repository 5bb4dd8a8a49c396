"""Makes tests/data/llm_reference.npz: CosyVoice's text-to-speech-token LM (cosyvoice/llm/llm.py
TransformerLM with its causal ConformerEncoder text encoder and TransformerEncoder LM, as
CosyVoice-300M's config builds them), narrowed, with random weights.

    git clone https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice   # read at ace7c47
    pip install torch transformers
    PYTHONPATH=/tmp/CosyVoice python tests/data/make_llm_reference.py

Three modules are stood in for, as none of their code runs here: the repository's class
registry (cosyvoice/utils/class_utils.py imports the whole package; the encoders need only
its tables of transformer parts, filled here from the same files), cosyvoice/utils/onnx.py
(onnxruntime, torchaudio) and cosyvoice/utils/file_utils.py (torchaudio; only its logger is
used).

The file holds the config (JSON, LMConfig's fields), the state_dict under "sd/", and:
- "train/*": a padded batch of two rows (text, speech tokens, x-vectors) through the training
  forward: the LM's logits ("logits", (B, L, V + 1), rows as upstream packs them) and its
  loss and accuracy;
- "zero_shot/*", "sft/*", "instruct/*": TransformerLM.inference of one text with a prompt
  (text and speech tokens) and a speaker, with a speaker only, and with neither, sampling
  made deterministic (top_k 1 and no repetition fallback: tau_r 2): the tokens drawn
  ("tokens") and the log-probabilities each was drawn from ("logp", (steps, V + 1), eos
  already held back where upstream holds it).
"""

import functools
import json
import logging
import sys
from types import ModuleType

import numpy as np
import torch


def _stand_ins():
    from cosyvoice.transformer import attention, embedding, subsampling

    registry = ModuleType("cosyvoice.utils.class_utils")
    registry.COSYVOICE_SUBSAMPLE_CLASSES = {
        "linear": subsampling.LinearNoSubsampling,
        "linear_legacy": subsampling.LegacyLinearNoSubsampling,
    }
    registry.COSYVOICE_EMB_CLASSES = {"rel_pos_espnet": embedding.EspnetRelPositionalEncoding}
    registry.COSYVOICE_ATTENTION_CLASSES = {"rel_selfattn": attention.RelPositionMultiHeadedAttention}
    registry.COSYVOICE_ACTIVATION_CLASSES = {"swish": torch.nn.SiLU, "relu": torch.nn.ReLU}
    onnx = ModuleType("cosyvoice.utils.onnx")
    onnx.SpeechTokenExtractor, onnx.online_feature, onnx.onnx_path = None, False, None
    files = ModuleType("cosyvoice.utils.file_utils")
    files.logging = logging
    sys.modules.update({m.__name__: m for m in (registry, onnx, files)})


_stand_ins()

from cosyvoice.llm.llm import TransformerLM  # noqa: E402
from cosyvoice.transformer.encoder import ConformerEncoder, TransformerEncoder  # noqa: E402
from cosyvoice.utils.common import ras_sampling  # noqa: E402

CONFIG = dict(
    text_token_size=60,
    speech_token_size=50,
    text_encoder_input_size=16,
    text_encoder_output_size=32,
    llm_input_size=24,
    llm_output_size=24,
    spk_embed_dim=12,
    text_encoder_heads=2,
    text_encoder_linear_units=40,
    text_encoder_blocks=2,
    llm_heads=2,
    llm_linear_units=48,
    llm_blocks=3,
    top_k=1,
    tau_r=2.0,
)


def build(c):
    text_encoder = ConformerEncoder(
        input_size=c["text_encoder_input_size"],
        output_size=c["text_encoder_output_size"],
        attention_heads=c["text_encoder_heads"],
        linear_units=c["text_encoder_linear_units"],
        num_blocks=c["text_encoder_blocks"],
        normalize_before=True,
        input_layer="linear",
        pos_enc_layer_type="rel_pos_espnet",
        selfattention_layer_type="rel_selfattn",
        use_cnn_module=False,
        macaron_style=False,
        use_dynamic_chunk=False,
        use_dynamic_left_chunk=False,
        static_chunk_size=1,
    )
    llm = TransformerEncoder(
        input_size=c["llm_input_size"],
        output_size=c["llm_output_size"],
        attention_heads=c["llm_heads"],
        linear_units=c["llm_linear_units"],
        num_blocks=c["llm_blocks"],
        input_layer="linear_legacy",
        pos_enc_layer_type="rel_pos_espnet",
        selfattention_layer_type="rel_selfattn",
        static_chunk_size=1,
    )
    sampling = functools.partial(ras_sampling, top_p=0.8, top_k=c["top_k"], win_size=10, tau_r=c["tau_r"])
    return TransformerLM(
        text_encoder_input_size=c["text_encoder_input_size"],
        llm_input_size=c["llm_input_size"],
        llm_output_size=c["llm_output_size"],
        text_token_size=c["text_token_size"],
        speech_token_size=c["speech_token_size"],
        text_encoder=text_encoder,
        llm=llm,
        sampling=sampling,
        length_normalized_loss=True,
        lsm_weight=0,
        spk_embed_dim=c["spk_embed_dim"],
    ).eval()


def randomise(model, eos_bias, eos=-1):
    """Every parameter drawn afresh (norm scales near one), so that no layer is an identity;
    eos (the head's output ``eos``) made likely enough that some inference ends by it before its
    length limit."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1 if name.endswith("weight") else 0) + 0.2 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.7 / p[0].numel() ** 0.5)
        model.llm_decoder.bias[eos] += eos_bias


def train(model, out, c):
    text = torch.randint(0, c["text_token_size"], (2, 6))
    text_len = torch.tensor([6, 4], dtype=torch.int32)
    speech = torch.randint(0, c["speech_token_size"], (2, 9))
    speech_len = torch.tensor([7, 9], dtype=torch.int32)
    embedding = torch.randn(2, c["spk_embed_dim"])
    batch = dict(text_token=text, text_token_len=text_len, speech_token=speech, speech_token_len=speech_len)
    batch["embedding"] = embedding
    with torch.no_grad():
        result = model(batch, torch.device("cpu"))
        # the logits of the same forward (upstream returns only the loss and accuracy)
        encoded, encoded_len = model.encode(model.text_embedding(text), text_len)
        speaker = model.spk_embed_affine_layer(torch.nn.functional.normalize(embedding, dim=1)).unsqueeze(1)
        sos = model.llm_embedding.weight[model.sos].reshape(1, 1, -1)
        task = model.llm_embedding.weight[model.task_id].reshape(1, 1, -1)
        lm_input, lm_len = model.pad_unpad_sequence(
            sos, speaker, encoded, encoded_len, task, model.speech_embedding(speech), speech_len
        )
        hidden, _ = model.llm(lm_input, lm_len)
        logits = model.llm_decoder(hidden)
    out.update(
        {
            "train/text": text.numpy(),
            "train/text_len": text_len.numpy(),
            "train/speech": speech.numpy(),
            "train/speech_len": speech_len.numpy(),
            "train/embedding": embedding.numpy(),
            "train/logits": logits.numpy(),
            "train/loss": result["loss"].numpy(),
            "train/acc": result["acc"].numpy(),
        }
    )


def inference(model, out, name, text, prompt_text, prompt_speech, embedding):
    drawn = []
    sampling = model.sampling

    def recording(weighted_scores, decoded_tokens, n):
        drawn.append(weighted_scores.clone())
        return sampling(weighted_scores, decoded_tokens, n)

    model.sampling = recording
    try:
        tokens = list(
            model.inference(
                text,
                torch.tensor([text.shape[1]], dtype=torch.int32),
                prompt_text,
                torch.tensor([prompt_text.shape[1]], dtype=torch.int32),
                prompt_speech,
                torch.tensor([prompt_speech.shape[1]], dtype=torch.int32),
                embedding,
            )
        )
    finally:
        model.sampling = sampling
    out.update(
        {
            f"{name}/text": text.numpy(),
            f"{name}/prompt_text": prompt_text.numpy(),
            f"{name}/prompt_speech": prompt_speech.numpy(),
            f"{name}/embedding": embedding.numpy(),
            f"{name}/tokens": np.array(tokens, np.int32),
            f"{name}/logp": torch.stack(drawn).numpy(),
        }
    )


def main():
    torch.manual_seed(0)
    c = CONFIG
    model = build(c)
    randomise(model, eos_bias=1.7)  # zero-shot and instruct end by eos, sft at its limit
    out = {"config": np.array(json.dumps(c))}
    out.update({f"sd/{k}": v.detach().numpy() for k, v in model.state_dict().items()})
    train(model, out, c)
    text = torch.randint(0, c["text_token_size"], (1, 3), dtype=torch.int32)
    prompt_text = torch.randint(0, c["text_token_size"], (1, 4), dtype=torch.int32)
    prompt_speech = torch.randint(0, c["speech_token_size"], (1, 5), dtype=torch.int32)
    embedding = torch.randn(1, c["spk_embed_dim"])
    none = torch.zeros(1, 0, dtype=torch.int32)
    inference(model, out, "zero_shot", text, prompt_text, prompt_speech, embedding)
    inference(model, out, "sft", text, none, none, embedding)
    inference(model, out, "instruct", text, prompt_text, none, torch.zeros(0, c["spk_embed_dim"]))
    path = "tests/data/llm_reference.npz"
    np.savez_compressed(path, **out)
    drawn = {name: len(out[f"{name}/tokens"]) for name in ("zero_shot", "sft", "instruct")}
    print(f"wrote {path}: tokens drawn {drawn}")


if __name__ == "__main__":
    main()
