"""Makes tests/data/ssl_reference.npz: transformers' HubertModel (Base layout: post-LN,
group-norm feature encoder) and Wav2Vec2Model (Large layout: pre-LN, layer norms, conv
bias), small and with random weights, on a padded batch of two waveforms (attention_mask
given); Wav2Vec2ForPreTraining (Base layout) on the same batch with masked spans and
sampled distractors (eval mode: the quantizer's argmax); and transformers' parameter counts
of the named configs (built on the meta device).

    pip install torch==2.13.0 transformers
    python tests/data/make_ssl_reference.py

Per case: the state_dict ("<case>/sd/<key>"), the config ("<case>/config", JSON of
config.to_dict()), and every element of hidden_states with output_hidden_states=True
("<case>/hidden_<i>"), plus last_hidden_state. The pretraining case ("pretraining/"): its
mask_time_indices, sampled_negative_indices (transformers' flat indices), projected_states,
projected_quantized_states, codevector_perplexity and the three losses.
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
)
CASES = {
    "hubert_base_layout": ("hubert", dict(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    "wav2vec2_large_layout": (
        "wav2vec2",
        dict(
            num_conv_pos_embeddings=15,
            num_conv_pos_embedding_groups=2,
            conv_bias=True,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
        ),
    ),
}


def main():
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    from jaxmodels.ssl import VARIANTS

    classes = {"hubert": (HubertConfig, HubertModel), "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model)}
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((2, 1600)).astype(np.float32)
    audio[1, 1203:] = 0.0
    mask = np.ones((2, 1600), np.int64)
    mask[1, 1203:] = 0
    out = {"audio": audio, "attention_mask": mask}
    torch.manual_seed(0)
    for case, (kind, extra) in CASES.items():
        config_class, model_class = classes[kind]
        config = config_class(**SMALL, **extra)
        model = model_class(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():  # norms and the weight norm's gain away from their init
                p.add_(0.1 * torch.randn_like(p) * (1.0 if p.ndim == 1 or "original0" in name else 0.5))
            result = model(torch.from_numpy(audio), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
        out[f"{case}/config"] = json.dumps(config.to_dict())
        out.update({f"{case}/sd/{k}": v.numpy() for k, v in model.state_dict().items()})
        out.update({f"{case}/hidden_{i}": h.numpy() for i, h in enumerate(result.hidden_states)})
        out[f"{case}/last"] = result.last_hidden_state.numpy()
    out.update(pretraining(audio, mask))
    counts = {}
    for name, args in VARIANTS.items():
        config_class, model_class = classes[name.split("_")[0]]
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in model_class(config_class(**args)).parameters())
    out["param_counts"] = json.dumps(counts)
    np.savez(os.path.join(HERE, "ssl_reference.npz"), **out)
    print(counts)


def pretraining(audio, mask) -> dict:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    head = dict(num_codevector_groups=2, num_codevectors_per_group=7, codevector_dim=12, proj_codevector_dim=10)
    config = Wav2Vec2Config(
        **SMALL, **head, num_negatives=5, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4
    )
    model = Wav2Vec2ForPreTraining(config).eval()
    frames = model._get_feat_extract_output_lengths(torch.from_numpy(mask.sum(1))).numpy()
    frame_mask = (np.arange(frames.max())[None] < frames[:, None]).astype(np.int64)
    np.random.seed(0)
    time_mask = _compute_mask_indices((2, int(frames.max())), 0.5, 4, torch.from_numpy(frame_mask), min_masks=2)
    negatives = _sample_negative_indices((2, int(frames.max())), config.num_negatives, time_mask)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        result = model(
            torch.from_numpy(audio),
            attention_mask=torch.from_numpy(mask),
            mask_time_indices=torch.from_numpy(time_mask),
            sampled_negative_indices=torch.from_numpy(negatives).long(),
        )
    out = {"pretraining/config": json.dumps(config.to_dict()), "pretraining/mask": time_mask}
    out.update({f"pretraining/sd/{k}": v.numpy() for k, v in model.state_dict().items()})
    out["pretraining/negatives"] = negatives
    names = ("projected_states", "projected_quantized_states", "codevector_perplexity", "loss", "contrastive_loss")
    for name in (*names, "diversity_loss"):
        out[f"pretraining/{name}"] = getattr(result, name).numpy()
    return out


if __name__ == "__main__":
    main()
