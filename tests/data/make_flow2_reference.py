"""Makes tests/data/flow2_reference.npz: CosyVoice 2's flow decoder (cosyvoice/flow/flow.py
CausalMaskedDiffWithXvec with its UpsampleConformerEncoder, CausalConditionalCFM and
CausalConditionalDecoder), narrowed, with random weights.

    git clone --recursive https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice   # read at ace7c47
    pip install torch diffusers einops conformer omegaconf
    PYTHONPATH=/tmp/CosyVoice:/tmp/CosyVoice/third_party/Matcha-TTS python tests/data/make_flow2_reference.py

The stand-ins are make_flow_reference.py's. Upstream's encoder is 512 wide whatever its
configuration says (its look-ahead and upsampling layers are built at 512), about 10 M
parameters here: too many to keep, so every parameter is drawn from numpy's seeded legacy
generator by tests/helpers/seeded_weights.py (state_dict order, the names and shapes kept in
"shapes"), which the test repeats.

The file holds the config (JSON, FlowConfig's fields), "shapes", and (arrays channels-last):
- "train/*": a padded batch of two token sequences through the embedding, the encoder and its
  projection, without and with streaming chunks ("h", "h_stream": (B, 2 L, 80));
- "estimator/*": the estimator's velocity of a padded batch, without and with chunks;
- "prompt/*" and "sft/*": CausalMaskedDiffWithXvec.inference (finalize, not streaming) of 19
  tokens after a prompt of 7 tokens and its 14 mel frames, and of 12 tokens without one; its
  noise ("z", the CFM's fixed rand_noise cut to the frames) beside the mel ("mel").
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "helpers"))
from make_flow_reference import CFM_PARAMS, _stand_ins, channels_last  # noqa: E402
from seeded_weights import seeded_state_dict  # noqa: E402

_stand_ins()

from cosyvoice.flow.decoder import CausalConditionalDecoder  # noqa: E402
from cosyvoice.flow.flow import CausalMaskedDiffWithXvec  # noqa: E402
from cosyvoice.flow.flow_matching import CausalConditionalCFM  # noqa: E402
from cosyvoice.transformer.upsample_encoder import UpsampleConformerEncoder  # noqa: E402

CONFIG = dict(
    vocab_size=50,
    input_size=512,  # upstream's look-ahead and upsampling layers are 512 wide
    output_size=80,
    spk_embed_dim=12,
    input_frame_rate=25,
    sample_rate=24000,
    hop_length=480,
    token_mel_ratio=2,
    attention_heads=8,
    linear_units=32,
    num_blocks=1,
    channels=[32],
    attention_head_dim=8,
    n_blocks=1,
    num_mid_blocks=2,
    num_heads=2,
    causal=True,
    chunk_size=5,
)


def build(c):
    encoder = UpsampleConformerEncoder(
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
        static_chunk_size=c["chunk_size"],
    )
    estimator = CausalConditionalDecoder(
        in_channels=4 * c["output_size"],
        out_channels=c["output_size"],
        channels=c["channels"],
        dropout=0.0,
        attention_head_dim=c["attention_head_dim"],
        n_blocks=c["n_blocks"],
        num_mid_blocks=c["num_mid_blocks"],
        num_heads=c["num_heads"],
        act_fn="gelu",
        static_chunk_size=c["chunk_size"] * c["token_mel_ratio"],
        num_decoding_left_chunks=-1,
    )
    decoder = CausalConditionalCFM(
        in_channels=3 * c["output_size"],
        cfm_params=CFM_PARAMS,
        n_spks=1,
        spk_emb_dim=c["output_size"],
        estimator=estimator,
    )
    return CausalMaskedDiffWithXvec(
        input_size=c["input_size"],
        output_size=c["output_size"],
        spk_embed_dim=c["spk_embed_dim"],
        vocab_size=c["vocab_size"],
        input_frame_rate=c["input_frame_rate"],
        token_mel_ratio=c["token_mel_ratio"],
        pre_lookahead_len=3,
        encoder=encoder,
        decoder=decoder,
    ).eval()


def main():
    c = CONFIG
    model = build(c)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes).items()})
    out = {"config": np.array(json.dumps(c)), "shapes": np.array(json.dumps(shapes))}
    torch.manual_seed(0)
    with torch.no_grad():
        tokens = torch.randint(0, c["vocab_size"], (2, 13))
        token_len = torch.tensor([13, 8], dtype=torch.int32)
        mask = (torch.arange(13)[None] < token_len[:, None]).float().unsqueeze(-1)
        embedded = model.input_embedding(tokens) * mask
        out.update({"train/tokens": tokens.numpy(), "train/token_len": token_len.numpy()})
        for name, streaming in (("h", False), ("h_stream", True)):
            h, _ = model.encoder(embedded, token_len, streaming=streaming)
            out[f"train/{name}"] = model.encoder_proj(h).numpy()

        b, f, t = 2, c["output_size"], 26
        x, mu, cond = torch.randn(b, f, t), torch.randn(b, f, t), torch.randn(b, f, t)
        frame_mask = (torch.arange(t)[None] < torch.tensor([[26], [17]])).float().unsqueeze(1)
        spks, times = torch.randn(b, f), torch.tensor([0.3, 0.85])
        out.update(
            {
                "estimator/x": channels_last(x),
                "estimator/mu": channels_last(mu),
                "estimator/cond": channels_last(cond),
                "estimator/mask": frame_mask[:, 0].numpy(),
                "estimator/spks": spks.numpy(),
                "estimator/t": times.numpy(),
            }
        )
        for name, streaming in (("v", False), ("v_stream", True)):
            v = model.decoder.estimator(x, frame_mask, mu, times, spks, cond, streaming=streaming)
            out[f"estimator/{name}"] = channels_last(v)

        vocab = c["vocab_size"]
        prompt = (torch.randint(0, vocab, (1, 7)), torch.randn(1, 14, f))
        cases = {"prompt": (torch.randint(0, vocab, (1, 19)), *prompt), "sft": (torch.randint(0, vocab, (1, 12)),)}
        for name, case in cases.items():
            token = case[0]
            prompt_token = case[1] if len(case) > 1 else torch.zeros(1, 0, dtype=torch.long)
            prompt_feat = case[2] if len(case) > 1 else torch.zeros(1, 0, f)
            embedding = torch.randn(1, c["spk_embed_dim"])
            frames = 2 * (prompt_token.shape[1] + token.shape[1])
            mel, _ = model.inference(
                token,
                torch.tensor([token.shape[1]]),
                prompt_token,
                torch.tensor([prompt_token.shape[1]]),
                prompt_feat,
                torch.tensor([prompt_feat.shape[1]]),
                embedding,
                streaming=False,
                finalize=True,
            )
            out.update(
                {
                    f"{name}/tokens": token.numpy(),
                    f"{name}/prompt_tokens": prompt_token.numpy(),
                    f"{name}/prompt_feat": prompt_feat.numpy(),
                    f"{name}/embedding": embedding.numpy(),
                    f"{name}/z": channels_last(model.decoder.rand_noise[:, :, :frames]),
                    f"{name}/mel": channels_last(mel),
                }
            )
    out["count"] = np.array(sum(p.numel() for p in model.parameters()))
    np.savez_compressed("tests/data/flow2_reference.npz", **out)
    print("parameters", int(out["count"]), {k: v.shape for k, v in out.items() if "/" in k})


if __name__ == "__main__":
    main()
