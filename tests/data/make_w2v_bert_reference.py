"""Makes tests/data/w2v_bert_reference.npz: transformers' Wav2Vec2BertModel, small and with
random weights (perturbed away from their init), on a padded batch of two feature sequences
(40 and 27 valid frames, attention_mask given), once per position embedding type and once
with the adapter and the feed-forward before it; and transformers' parameter count of the
default config (facebook/w2v-bert-2.0's, built on the meta device).

    pip install torch==2.13.0 transformers==5.24.0
    python tests/data/make_w2v_bert_reference.py

Per case: the state_dict ("<case>/sd/<key>"), the config ("<case>/config", JSON of
config.to_dict()), every element of hidden_states with output_hidden_states=True
("<case>/hidden_<i>") and last_hidden_state ("<case>/last"). The relative_key case also with
mask_time_indices ("mask"): "relative_key/masked_hidden_0" and "relative_key/masked_last".
From audio: SeamlessM4TFeatureExtractor's features of two waveforms ("audio/wave_<i>", 16 kHz,
47 and 68 filterbank frames) each alone ("audio/features_<i>") and as a padded batch
("audio/batch_features", "audio/batch_mask"), and the relative_key model's hidden_states of
each alone, stacked ("relative_key/audio_hidden_<i>").
"""

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    feature_projection_input_dim=160,
    conv_depthwise_kernel_size=5,
    left_max_position_embeddings=6,
    right_max_position_embeddings=2,
)
TINY = dict(SMALL, hidden_size=16, num_attention_heads=2)
CASES = {
    "relative_key": SMALL,
    "no_positions": dict(TINY, position_embeddings_type=None),
    "rotary": dict(TINY, position_embeddings_type="rotary"),
    "relative": dict(TINY, position_embeddings_type="relative"),
    "adapter": dict(
        TINY,
        add_adapter=True,
        num_adapter_layers=2,
        use_intermediate_ffn_before_adapter=True,
        output_hidden_size=12,
        mask_time_prob=0.0,
    ),
}


def main():
    import torch
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 40, 160)).astype(np.float32)
    features[1, 27:] = 0.0  # the feature extractor pads with zeros
    attention_mask = np.ones((2, 40), np.int64)
    attention_mask[1, 27:] = 0
    mask = np.zeros((2, 40), bool)
    mask[0, 5:15] = mask[1, 20:25] = True
    out = {"features": features, "attention_mask": attention_mask, "mask": mask}
    extractor = SeamlessM4TFeatureExtractor()
    audio = np.random.default_rng(1)
    t = np.arange(11237) / 16000
    waves = [
        (0.3 * np.sin(2 * np.pi * 220 * t[:n]) + 0.05 * audio.standard_normal(n)).astype(np.float32)
        for n in (7771, 11237)
    ]
    alone = [extractor(wave, sampling_rate=16000, return_tensors="pt") for wave in waves]
    for i, wave in enumerate(waves):
        out[f"audio/wave_{i}"], out[f"audio/features_{i}"] = wave, alone[i]["input_features"].numpy()
    batch = extractor(waves, sampling_rate=16000, return_tensors="np")
    out["audio/batch_features"], out["audio/batch_mask"] = batch["input_features"], batch["attention_mask"]
    torch.manual_seed(0)
    inputs = dict(input_features=torch.from_numpy(features), attention_mask=torch.from_numpy(attention_mask))
    for case, args in CASES.items():
        config = Wav2Vec2BertConfig(**args)
        model = Wav2Vec2BertModel(config).eval()
        with torch.no_grad():
            for p in model.parameters():  # norms and biases away from their init
                p.add_(0.1 * torch.randn_like(p) * (1.0 if p.ndim == 1 else 0.5))
            result = model(**inputs, output_hidden_states=True)
            if case == "relative_key":
                masked = model(**inputs, mask_time_indices=torch.from_numpy(mask), output_hidden_states=True)
                out[f"{case}/masked_hidden_0"] = masked.hidden_states[0].numpy()
                out[f"{case}/masked_last"] = masked.last_hidden_state.numpy()
                for i, features in enumerate(alone):
                    hidden = model(**features, output_hidden_states=True).hidden_states
                    out[f"{case}/audio_hidden_{i}"] = torch.cat(hidden).numpy()
        out[f"{case}/config"] = json.dumps(config.to_dict())
        out.update({f"{case}/sd/{k}": v.numpy() for k, v in model.state_dict().items()})
        out.update({f"{case}/hidden_{i}": h.numpy() for i, h in enumerate(result.hidden_states)})
        out[f"{case}/last"] = result.last_hidden_state.numpy()
    with torch.device("meta"):
        out["param_count"] = sum(p.numel() for p in Wav2Vec2BertModel(Wav2Vec2BertConfig()).parameters())
    np.savez(os.path.join(HERE, "w2v_bert_reference.npz"), **out)
    print(out["param_count"], os.path.getsize(os.path.join(HERE, "w2v_bert_reference.npz")))


if __name__ == "__main__":
    main()
