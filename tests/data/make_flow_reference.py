"""Makes tests/data/flow_reference.npz: CosyVoice's flow decoder (cosyvoice/flow/flow.py
MaskedDiffWithXvec with its ConformerEncoder, InterpolateRegulator, ConditionalCFM and
ConditionalDecoder, after Matcha-TTS), narrowed, with random weights.

    git clone --recursive https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice   # read at ace7c47
    pip install torch diffusers einops conformer omegaconf
    PYTHONPATH=/tmp/CosyVoice:/tmp/CosyVoice/third_party/Matcha-TTS python tests/data/make_flow_reference.py

Three modules are stood in for, as none of their code runs here: the repository's class
registry (cosyvoice/utils/class_utils.py imports the whole package, LLMs and CLI included;
the encoder needs only its tables of transformer parts, filled here from the same files),
cosyvoice/utils/onnx.py (online token extraction in training: onnxruntime, torchaudio) and
Matcha's logger (lightning).

The file holds the config (JSON, FlowConfig's fields), the state_dict under "sd/", and:
- "train/*": a padded batch of two token sequences through the embedding, the encoder and its
  projection ("h", (B, L, C)), then the length regulator to the longest mel ("mu", (B, T, C),
  padded frames zeroed), and the shorter row's interpolated frames refined alone ("mu_alone");
- "estimator/*": the estimator's velocity of a padded batch ("v", (B, T, C)), and of its
  shorter row alone, unpadded ("v_alone");
- "prompt/*" and "sft/*": MaskedDiffWithXvec.inference of 45 tokens after a prompt of 7
  tokens and 12 mel frames (the split interpolation of more than 40 tokens), and of 30 tokens
  without one, its Gaussian noise ("z", (1, T, C), torch.randn_like's draw) saved beside the
  mel ("mel").
Arrays are channels-last.
"""

import json
import logging
import os
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import torch


def _stand_ins():
    from cosyvoice.transformer import attention, embedding, subsampling

    registry = ModuleType("cosyvoice.utils.class_utils")
    registry.COSYVOICE_SUBSAMPLE_CLASSES = {"linear": subsampling.LinearNoSubsampling}
    registry.COSYVOICE_EMB_CLASSES = {"rel_pos_espnet": embedding.EspnetRelPositionalEncoding}
    registry.COSYVOICE_ATTENTION_CLASSES = {"rel_selfattn": attention.RelPositionMultiHeadedAttention}
    registry.COSYVOICE_ACTIVATION_CLASSES = {"swish": torch.nn.SiLU}
    onnx = ModuleType("cosyvoice.utils.onnx")
    onnx.SpeechTokenExtractor, onnx.online_feature, onnx.onnx_path = None, False, None
    pylogger = ModuleType("matcha.utils.pylogger")
    pylogger.get_pylogger = logging.getLogger
    sys.modules.update({m.__name__: m for m in (registry, onnx, pylogger)})


_stand_ins()

from cosyvoice.flow.decoder import ConditionalDecoder  # noqa: E402
from cosyvoice.flow.flow import MaskedDiffWithXvec  # noqa: E402
from cosyvoice.flow.flow_matching import ConditionalCFM  # noqa: E402
from cosyvoice.flow.length_regulator import InterpolateRegulator  # noqa: E402
from cosyvoice.transformer.encoder import ConformerEncoder  # noqa: E402

CONFIG = dict(
    vocab_size=50,
    input_size=32,
    output_size=80,  # solve_euler allocates 80 bins
    spk_embed_dim=12,
    attention_heads=2,
    linear_units=48,
    num_blocks=2,
    channels=[32, 32],
    attention_head_dim=8,
    n_blocks=2,
    num_mid_blocks=2,
    num_heads=2,
)


# CosyVoice's cfm_params (its flow decoders' conf, 300M and 2 alike)
CFM_PARAMS = SimpleNamespace(
    sigma_min=1e-6,
    solver="euler",
    t_scheduler="cosine",
    training_cfg_rate=0.2,
    inference_cfg_rate=0.7,
    reg_loss_type="l1",
)


def build(c):
    encoder = ConformerEncoder(
        input_size=c["input_size"],
        output_size=c["input_size"],
        attention_heads=c["attention_heads"],
        linear_units=c["linear_units"],
        num_blocks=c["num_blocks"],
        normalize_before=True,
        input_layer="linear",
        pos_enc_layer_type="rel_pos_espnet",
        selfattention_layer_type="rel_selfattn",
        use_cnn_module=False,
        macaron_style=False,
    )
    estimator = ConditionalDecoder(
        in_channels=4 * c["output_size"],
        out_channels=c["output_size"],
        channels=c["channels"],
        dropout=0.0,
        attention_head_dim=c["attention_head_dim"],
        n_blocks=c["n_blocks"],
        num_mid_blocks=c["num_mid_blocks"],
        num_heads=c["num_heads"],
        act_fn="gelu",
    )
    decoder = ConditionalCFM(
        in_channels=3 * c["output_size"],
        cfm_params=CFM_PARAMS,
        n_spks=1,
        spk_emb_dim=c["output_size"],
        estimator=estimator,
    )
    return MaskedDiffWithXvec(
        input_size=c["input_size"],
        output_size=c["output_size"],
        spk_embed_dim=c["spk_embed_dim"],
        vocab_size=c["vocab_size"],
        input_frame_rate=50,
        encoder=encoder,
        length_regulator=InterpolateRegulator(channels=c["output_size"], sampling_ratios=[1, 1, 1, 1]),
        decoder=decoder,
    ).eval()


def randomise(model):
    """Every parameter drawn afresh (norm scales near one), so that no layer is an identity."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1 if name.endswith("weight") else 0) + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.5 / p[0].numel() ** 0.5)


def channels_last(t):
    return t.transpose(1, 2).detach().numpy()


def inference(model, out, name, tokens, prompt_tokens, prompt_feat, embedding):
    noise = {}

    def randn_like(x, **kw):
        noise["z"] = torch.randn(x.shape, dtype=x.dtype)
        return noise["z"].clone()

    real = torch.randn_like
    torch.randn_like = randn_like
    try:
        with torch.no_grad():
            mel, _ = model.inference(
                tokens,
                torch.tensor([tokens.shape[1]]),
                prompt_tokens,
                torch.tensor([prompt_tokens.shape[1]]),
                prompt_feat,
                torch.tensor([prompt_feat.shape[1]]),
                embedding,
                torch.zeros(1, model.output_size, 0, 2),
            )
    finally:
        torch.randn_like = real
    out.update(
        {
            f"{name}/tokens": tokens.numpy(),
            f"{name}/prompt_tokens": prompt_tokens.numpy(),
            f"{name}/prompt_feat": prompt_feat.numpy(),
            f"{name}/embedding": embedding.numpy(),
            f"{name}/z": channels_last(noise["z"]),
            f"{name}/mel": channels_last(mel),
        }
    )


def main():
    torch.manual_seed(0)
    c = CONFIG
    model = build(c)
    randomise(model)
    out = {"config": np.array(json.dumps(c))}
    out.update({f"sd/{k}": v.detach().numpy() for k, v in model.state_dict().items()})

    tokens = torch.randint(0, c["vocab_size"], (2, 11))
    token_len = torch.tensor([11, 7])
    feat_len = torch.tensor([19, 12])
    with torch.no_grad():
        mask = (torch.arange(11)[None] < token_len[:, None]).unsqueeze(-1).float()
        h, _ = model.encoder(model.input_embedding(tokens) * mask, token_len)
        h = model.encoder_proj(h)
        mu, _ = model.length_regulator(h, feat_len)
        # The shorter row's interpolated frames refined alone, unpadded
        frames = torch.nn.functional.interpolate(h.transpose(1, 2), size=int(feat_len.max()), mode="linear")
        mu_alone = model.length_regulator.model(frames[1:, :, : feat_len[1]])
    out.update(
        {
            "train/tokens": tokens.numpy(),
            "train/token_len": token_len.numpy(),
            "train/feat_len": feat_len.numpy(),
            "train/h": h.numpy(),
            "train/mu": mu.numpy(),
            "train/mu_alone": channels_last(mu_alone),
        }
    )

    b, t, f = 2, 23, c["output_size"]
    x, mu_e, cond = torch.randn(b, f, t), torch.randn(b, f, t), torch.randn(b, f, t)
    mask = (torch.arange(t)[None] < torch.tensor([23, 16])[:, None]).float().unsqueeze(1)
    spks, times = torch.randn(b, f), torch.tensor([0.3, 0.85])
    with torch.no_grad():
        v = model.decoder.estimator(x, mask, mu_e, times, spks, cond)
        alone = [a[1:, :, :16] for a in (x, mask, mu_e)]
        v_alone = model.decoder.estimator(*alone, times[1:], spks[1:], cond[1:, :, :16])
    out.update(
        {
            "estimator/x": channels_last(x),
            "estimator/mask": mask[:, 0].numpy(),
            "estimator/mu": channels_last(mu_e),
            "estimator/t": times.numpy(),
            "estimator/spks": spks.numpy(),
            "estimator/cond": channels_last(cond),
            "estimator/v": channels_last(v),
            "estimator/v_alone": channels_last(v_alone),
        }
    )

    vocab = c["vocab_size"]
    inference(
        model,
        out,
        "prompt",
        torch.randint(0, vocab, (1, 45)),
        torch.randint(0, vocab, (1, 7)),
        torch.randn(1, 12, f),
        torch.randn(1, c["spk_embed_dim"]),
    )
    inference(
        model,
        out,
        "sft",
        torch.randint(0, vocab, (1, 30)),
        torch.zeros(1, 0, dtype=torch.long),
        torch.zeros(1, 0, f),
        torch.randn(1, c["spk_embed_dim"]),
    )
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flow_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(out)} arrays")


if __name__ == "__main__":
    main()
