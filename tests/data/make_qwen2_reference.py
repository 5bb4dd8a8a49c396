"""Makes tests/data/qwen2_reference.npz: transformers' Qwen2Model (CosyVoice 2's LM backbone)
narrowed, with random weights: the hidden states of a batch with a right-padded row.

    pip install torch transformers
    python tests/data/make_qwen2_reference.py

The file holds the config (JSON, Qwen2Config's fields), the state_dict under "sd/", the
inputs ("embeddings", "attention_mask") and the final norm's states ("hidden", padded
positions included as transformers computes them).
"""

import json

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2Model

CONFIG = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def main():
    torch.manual_seed(0)
    model = Qwen2Model(Qwen2Config(**CONFIG, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and norms away from their initial 0 and 1
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(2, 11, CONFIG["hidden_size"])).astype(np.float32)
    mask = np.ones((2, 11), np.int64)
    mask[1, 7:] = 0
    with torch.no_grad():
        hidden = model(inputs_embeds=torch.from_numpy(embeddings), attention_mask=torch.from_numpy(mask))
    out = {f"sd/{k}": v.numpy() for k, v in model.state_dict().items()}
    out.update(
        config=json.dumps(CONFIG),
        embeddings=embeddings,
        attention_mask=mask,
        hidden=hidden.last_hidden_state.numpy(),
    )
    np.savez_compressed("tests/data/qwen2_reference.npz", **out)


if __name__ == "__main__":
    main()
