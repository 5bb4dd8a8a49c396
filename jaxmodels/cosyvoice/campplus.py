"""CAM++ (Wang et al. 2023, "CAM++: A Fast and Efficient Network for Speaker Verification
Using Context-Aware Masking"): the speaker embedder whose x-vectors condition CosyVoice's LM
and flow decoder, as 3D-Speaker builds it (speakerlab/models/campplus/DTDNN.py, layers.py).

Kaldi fbank (80 bins, Povey window, the waveform unscaled) with its mean over time removed,
as CosyVoice's frontend computes it; a 2-D convolutional front (FCM: two residual stages
that halve the frequency axis, then a third halving) flattened to channels x frequency; a
TDNN layer of stride 2; three densely connected TDNN blocks (12, 24, 16 layers, growth 32)
whose layers mask their local convolution by a context of the utterance's mean and its
100-frame segments' means (context-aware masking), each block followed by a transition that
halves the channels; mean and standard deviation over time; a linear layer to the embedding
with a BatchNorm without affine parameters. Inference only: BatchNorms use their running
statistics ({"params", "batch_stats"}). Padded batches give each utterance's own embedding:
every convolution over time reads zeros past an utterance's end, and the means and
statistics count its own frames only.

    model, variables = campplus.load("campplus_cn_common.bin")
    xvectors = campplus.embed(model, variables, wav_16k, lengths)      # (B, 192)
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.asr.frontend import fbank
from jaxmodels.nn.variants import named_config


@dataclasses.dataclass(frozen=True)
class CAMPPlusConfig:
    """CAMPPlus's arguments; defaults are the 192-wide model CosyVoice ships (campplus_cn_common)."""

    feat_dim: int = 80
    embedding_size: int = 192
    growth_rate: int = 32
    bn_size: int = 4
    init_channels: int = 128
    m_channels: int = 32  # FCM's
    block_layers: tuple = (12, 24, 16)
    block_dilations: tuple = (1, 2, 2)
    segment: int = 100  # frames per context segment


CONFIGS = {"campplus_192": CAMPPlusConfig()}


def config(name: str, **overrides) -> CAMPPlusConfig:
    return named_config(CONFIGS, name, "CAM++", **overrides)


def _norm(name, affine=True):
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, use_scale=affine, use_bias=affine, name=name)


def _bn_relu(x, name):
    return nn.relu(_norm(name)(x))


def _masked(x, valid):
    return jnp.where(valid, x, 0.0)


class BasicResBlock(nn.Module):
    """(B, F, T, C) -> (B, F / stride, T, planes)."""

    planes: int
    stride: int

    @nn.compact
    def __call__(self, x, valid):
        conv = lambda k, s, p, name: nn.Conv(self.planes, (k, k), (s, 1), ((p, p), (p, p)), use_bias=False, name=name)
        out = nn.relu(_norm("bn1")(conv(3, self.stride, 1, "conv1")(x)))
        out = _norm("bn2")(conv(3, 1, 1, "conv2")(_masked(out, valid)))
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = _norm("shortcut_1")(conv(1, self.stride, 0, "shortcut_0")(x))
        return nn.relu(out + x)


class FCM(nn.Module):
    """The 2-D front: (B, T, F) -> (B, T, m_channels * F / 8)."""

    m_channels: int

    @nn.compact
    def __call__(self, x, valid):
        m = self.m_channels
        valid = valid[:, None, :, None]  # (B, 1, T, 1): the front's layout is (B, F, T, C), as torch's H, W
        x = jnp.swapaxes(x, 1, 2)[..., None]
        x = _masked(nn.relu(_norm("bn1")(nn.Conv(m, (3, 3), padding=1, use_bias=False, name="conv1")(x))), valid)
        for layer in ("layer1", "layer2"):
            for i, stride in enumerate((2, 1)):
                x = _masked(BasicResBlock(m, stride, name=f"{layer}_{i}")(x, valid), valid)
        conv2 = nn.Conv(m, (3, 3), (2, 1), ((1, 1), (1, 1)), use_bias=False, name="conv2")
        x = nn.relu(_norm("bn2")(conv2(x)))  # (B, F / 8, T, m)
        b, f, t, c = x.shape
        return jnp.transpose(x, (0, 2, 3, 1)).reshape(b, t, c * f)  # torch's (C, F) flattening order


class CAMLayer(nn.Module):
    """The local convolution, masked by a sigmoid of the utterance's and its segment's context."""

    features: int
    dilation: int
    segment: int

    @nn.compact
    def __call__(self, x, valid, lengths):
        d = self.dilation
        y = nn.Conv(self.features, (3,), kernel_dilation=(d,), padding=((d, d),), use_bias=False, name="linear_local")(
            _masked(x, valid)
        )
        context = _valid_mean(x, valid, lengths) + _segment_means(x, valid, self.segment)
        context = nn.relu(nn.Dense(x.shape[-1] // 2, name="linear1")(context))
        return y * nn.sigmoid(nn.Dense(self.features, name="linear2")(context))


def _valid_mean(x, valid, lengths):
    """(B, 1, C): the mean over each row's own frames."""
    return jnp.sum(_masked(x, valid), axis=1, keepdims=True) / jnp.maximum(lengths, 1)[:, None, None]


def _segment_means(x, valid, segment: int):
    """(B, T, C): each frame's segment mean (segments of ``segment`` frames; the last one of a row
    averages the frames it has, as avg_pool1d with ceil_mode)."""
    b, t, c = x.shape
    pad = -t % segment
    xs = jnp.pad(_masked(x, valid), ((0, 0), (0, pad), (0, 0))).reshape(b, -1, segment, c)
    counts = jnp.pad(valid.astype(x.dtype), ((0, 0), (0, pad), (0, 0))).reshape(b, -1, segment, 1)
    means = jnp.sum(xs, axis=2) / jnp.maximum(jnp.sum(counts, axis=2), 1.0)
    return jnp.repeat(means, segment, axis=1)[:, :t]


class CAMDenseTDNNLayer(nn.Module):
    growth: int
    bn_channels: int
    dilation: int
    segment: int

    @nn.compact
    def __call__(self, x, valid, lengths):
        x = nn.Dense(self.bn_channels, use_bias=False, name="linear1")(_bn_relu(x, "nonlinear1_batchnorm"))
        x = _bn_relu(x, "nonlinear2_batchnorm")
        return CAMLayer(self.growth, self.dilation, self.segment, name="cam_layer")(x, valid, lengths)


class CAMPPlus(nn.Module):
    cfg: CAMPPlusConfig

    @nn.compact
    def __call__(self, feats, lengths):
        """Features (B, T, feat_dim) (fbank less its mean; frames past ``lengths`` ignored) -> (B, embedding_size)."""
        c = self.cfg
        valid = jnp.arange(feats.shape[1])[None] < lengths[:, None]
        x = FCM(c.m_channels, name="head")(feats, valid)
        x = nn.Conv(c.init_channels, (5,), (2,), ((2, 2),), use_bias=False, name="xvector_tdnn_linear")(
            _masked(x, valid[..., None])
        )
        x = _bn_relu(x, "xvector_tdnn_nonlinear_batchnorm")
        lengths = (lengths - 1) // 2 + 1
        valid = (jnp.arange(x.shape[1])[None] < lengths[:, None])[..., None]
        for i, (layers, dilation) in enumerate(zip(c.block_layers, c.block_dilations), 1):
            for j in range(1, layers + 1):
                layer = CAMDenseTDNNLayer(
                    c.growth_rate, c.bn_size * c.growth_rate, dilation, c.segment, name=f"xvector_block{i}_tdnnd{j}"
                )
                x = jnp.concatenate([x, layer(x, valid, lengths)], axis=-1)
            x = _bn_relu(x, f"xvector_transit{i}_nonlinear_batchnorm")
            x = nn.Dense(x.shape[-1] // 2, use_bias=False, name=f"xvector_transit{i}_linear")(x)
        x = _bn_relu(x, "xvector_out_nonlinear_batchnorm")
        mean = _valid_mean(x, valid, lengths)
        var = (
            jnp.sum(_masked((x - mean) ** 2, valid), axis=1, keepdims=True)
            / jnp.maximum(lengths - 1, 1)[:, None, None]
        )
        stats = jnp.concatenate([mean, jnp.sqrt(var)], axis=-1)[:, 0]
        x = nn.Dense(c.embedding_size, use_bias=False, name="xvector_dense_linear")(stats)
        return _norm("xvector_dense_nonlinear_batchnorm", affine=False)(x)


def features(wav, lengths):
    """CosyVoice's CAM++ input: Kaldi fbank of 16 kHz audio (80 bins, Povey window, unscaled,
    no dither) less its mean over each utterance's frames; (B, T, 80) and frame counts."""
    feats, frames = fbank(wav, lengths, num_mel_bins=80, window="povey", scale=1.0)
    valid = (jnp.arange(feats.shape[1])[None] < frames[:, None])[..., None]
    mean = jnp.sum(_masked(feats, valid), axis=1, keepdims=True) / jnp.maximum(frames, 1)[:, None, None]
    return _masked(feats - mean, valid), frames


def embed(model: CAMPPlus, variables, wav, lengths):
    """x-vectors (B, embedding_size) of 16 kHz waveforms (B, N) with lengths (B,), as CosyVoice's frontend."""
    feats, frames = features(wav, lengths)
    return model.apply(variables, feats, frames)


_STATS = {"running_mean": "mean", "running_var": "var"}


def from_torch(state_dict, cfg: CAMPPlusConfig) -> dict:
    """{"params", "batch_stats"} of a CAMPPlus from 3D-Speaker's state_dict (campplus_cn_common.bin).
    The BatchNorm counters are left out; a key or shape that does not fit is an error listing them."""
    from jaxmodels.nn.state_dict import assign_state_dict, torch_to_flax_leaf

    model = CAMPPlus(cfg)
    shapes = nn.meta.unbox(
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, cfg.feat_dim)), jnp.array([8]))
    )

    def key_map(key, value):
        parts = key.split(".")
        leaf = parts[-1]
        if parts[0] == "head":  # head.layer1.0.shortcut.1.weight -> head/layer1_0/shortcut_1
            path = ["head"]
            for part in parts[1:-1]:
                if part.isdigit():
                    path[-1] = f"{path[-1]}_{part}"
                else:
                    path.append(part)
        else:  # xvector.block1.tdnnd1.cam_layer.linear1.weight -> xvector_block1_tdnnd1/cam_layer/linear1
            inner = parts[1:-1]
            if "cam_layer" in inner:
                at = inner.index("cam_layer")
                path = ["_".join(parts[:1] + inner[:at]), *inner[at:]]
            elif len(inner) >= 2 and inner[1].startswith("tdnnd"):  # a dense layer's own parts
                path = ["_".join(parts[:1] + inner[:2]), "_".join(inner[2:])]
            else:
                path = ["_".join(parts[:1] + inner)]
        if leaf in _STATS:
            return ("batch_stats", *path, _STATS[leaf]), value
        if leaf == "weight" and value.ndim == 3 and value.shape[-1] == 1:  # 1x1 Conv1d as a Dense
            return ("params", *path, "kernel"), value[..., 0].T
        if leaf == "weight" and value.ndim == 1:  # BatchNorm's affine scale
            return ("params", *path, "scale"), value
        name, value = torch_to_flax_leaf(leaf, value)
        return ("params", *path, name), value

    ignore = lambda key: key.endswith("num_batches_tracked")  # noqa: E731
    return jax.tree.map(np.asarray, assign_state_dict(state_dict, shapes, key_map, ignore))


def load(path: str, name: str = "campplus_192"):
    """(model, variables) of 3D-Speaker's CAM++ weights (a .bin / .pt state_dict or .safetensors)."""
    from jaxmodels.nn.state_dict import load_state_dict

    cfg = config(name)
    return CAMPPlus(cfg), from_torch(load_state_dict(path), cfg)
