"""HiFi-GAN's multi-period and multi-scale discriminators, their least-squares losses and
the log-magnitude mel loss, as jik876/hifi-gan and SpeechTokenizer's trainer build them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.codec import losses
from jaxmodels.codec.hifigan_discriminator import (
    Conv,
    MultipleDiscriminator,
    PeriodDiscriminator,
    ScaleDiscriminator,
    SpecDiscriminator,
)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_speechtokenizer_discriminators_as_released():
    # Parameter counts as torch counts them (weight norm's g and v apart; spectral norm's
    # weight_orig, its u a buffer), and the logits of a 3 s crop at 16 kHz, in upstream's
    # order: five periods, three scales, five STFT resolutions.
    model = MultipleDiscriminator(("mpd", "msd", "msstft"), stft={"filters": 32, "negative_slope": 0.2})
    x = jnp.zeros((1, 48000, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    params = nn.unbox(variables["params"])
    assert {k: _count(v) for k, v in params.items()} == {"mpd": 41_105_770, "msd": 29_618_821, "msstft": 472_330}
    assert list(variables["spectral"]["msd"]) == ["discriminators_0"]  # only the raw-rate scale
    logits, fmaps = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert [int(np.prod(g.shape[1:])) for g in logits[:8]] == [594, 594, 595, 595, 594, 750, 376, 188]
    assert [g.shape[1:3] for g in logits[8:]] == [(184, 65), (90, 129), (372, 33), (747, 17), (1497, 9)]
    assert [len(f) for f in fmaps] == [6] * 5 + [8] * 3 + [5] * 5


def test_cosyvoice_hift_discriminators_as_released():
    # CosyVoice's HiFT trains with mpd and mrsd: the spectrogram discriminators' parameters
    # (280,902 as torch counts them) and logits on a 24576-sample crop, as upstream's.
    model = MultipleDiscriminator(("mpd", "mrsd"))
    x = jnp.zeros((1, 24576, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert _count(nn.unbox(variables["params"])["mrsd"]) == 280_902
    logits, fmaps = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert [g.shape[1:3] for g in logits[5:]] == [(205, 65), (103, 129), (492, 33)]
    assert [len(f) for f in fmaps] == [6] * 8


def _torch_weight(layer):
    """A Conv's effective kernel as torch's (out, in / groups, *kernel)."""
    p = nn.unbox(layer)
    w = (
        p["weight_g"]
        * p["weight_v"]
        / np.sqrt(np.sum(np.square(p["weight_v"]), axis=tuple(range(p["weight_v"].ndim - 1))))
    )
    return np.array(np.moveaxis(np.asarray(w), -1, 0).transpose(0, -1, *range(1, w.ndim - 1))), np.array(p["bias"])


def test_period_and_scale_discriminators_equal_torch_convolutions():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(0).standard_normal((2, 301, 1)).astype(np.float32)
    tx = torch.from_numpy(x[..., 0])[:, None]

    period = PeriodDiscriminator(5, channels=(4, 16, 64, 128, 128))  # an eighth of upstream's widths
    params = period.init(jax.random.key(0), x)["params"]
    logits, fmaps = period.apply({"params": params}, x)
    z = F.pad(tx, (0, 4), mode="reflect").view(2, 1, 61, 5)
    for i in range(5):
        w, b = _torch_weight(params[f"convs_{i}"])
        z = F.leaky_relu(F.conv2d(z, torch.from_numpy(w), torch.from_numpy(b), (3 if i < 4 else 1, 1), (2, 0)), 0.1)
        np.testing.assert_allclose(np.asarray(fmaps[i]), z.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)
    w, b = _torch_weight(params["conv_post"])
    ref = F.conv2d(z, torch.from_numpy(w), torch.from_numpy(b), 1, (1, 0))
    np.testing.assert_allclose(np.asarray(logits), ref.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)

    scale = ScaleDiscriminator(channel_divisor=8)
    params = scale.init(jax.random.key(1), x)["params"]
    logits, fmaps = scale.apply({"params": params}, x)
    z = tx
    for i, (_, k, s, g) in enumerate([(128, 15, 1, 1), (128, 41, 2, 4), (256, 41, 2, 16), (512, 41, 4, 16)]):
        w, b = _torch_weight(params[f"convs_{i}"])
        z = F.leaky_relu(F.conv1d(z, torch.from_numpy(w), torch.from_numpy(b), s, (k - 1) // 2, groups=g), 0.1)
        np.testing.assert_allclose(np.asarray(fmaps[i]), z.permute(0, 2, 1).numpy(), rtol=1e-4, atol=1e-5)
    assert logits.shape == (2, 5, 1)  # 301 samples / 64 in four strides


def test_spectrogram_discriminator_equals_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(1).standard_normal((2, 700, 1)).astype(np.float32)
    model = SpecDiscriminator(128, 30, 80)
    params = model.init(jax.random.key(0), x)["params"]
    logits, fmaps = model.apply({"params": params}, x)
    window = torch.hann_window(80)
    spec = torch.stft(torch.from_numpy(x[..., 0]), 128, 30, 80, window, return_complex=True).abs()
    z = spec.transpose(1, 2)[:, None]  # (B, 1, frames, freq) as upstream
    for i, (k, s) in enumerate([((3, 9), 1), ((3, 9), 2), ((3, 9), 2), ((3, 9), 2), ((3, 3), 1)]):
        w, b = _torch_weight(params[f"discriminators_{i}"])
        pad = (k[0] // 2, k[1] // 2)
        z = F.leaky_relu(F.conv2d(z, torch.from_numpy(w), torch.from_numpy(b), (1, s), pad), 0.1)
        np.testing.assert_allclose(np.asarray(fmaps[i]), z.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    assert logits.shape == (2, 24, 9, 1)


def test_tpr_loss_as_cosyvoice():
    # m = the lower median of a - b; the mean of (d - m)^2 over d < m, capped at tau.
    a = [jnp.array([[0.0, 1.0, 2.0], [3.0, 4.0, 10.0], [9.0, 9.0, 9.0]])]
    b = [jnp.zeros((3, 3))]
    mask = jnp.array([1.0, 1.0, 0.0])  # the third row is padding
    # d over valid rows: 0 1 2 3 4 10 -> lower median 2; below it: 0, 1 -> (4 + 1) / 2
    np.testing.assert_allclose(losses.tpr_loss(a, b, mask, tau=10.0), 2.5)
    np.testing.assert_allclose(losses.tpr_loss(a + a, b + b, mask, tau=0.04), 0.08)


def test_spectral_norm_divides_by_the_largest_singular_value():
    # One power iteration per update of the kept vector (torch's spectral_norm in training);
    # a frozen vector (no mutable collection) leaves it as it is.
    conv = Conv(16, (5,), (1,), (2,), groups=2, norm="spectral_norm")
    x = jnp.ones((1, 9, 8))
    variables = conv.init(jax.random.key(0), x)
    w = np.asarray(nn.unbox(variables["params"])["weight_orig"]).reshape(-1, 16)
    sigma = np.linalg.norm(w, 2)
    spectral = variables["spectral"]
    for _ in range(30):
        _, new = conv.apply({"params": variables["params"], "spectral": spectral}, x, mutable=["spectral"])
        spectral = new["spectral"]
    frozen = conv.apply({"params": variables["params"], "spectral": spectral}, x)
    plain = (
        jax.lax.conv_general_dilated(
            x,
            jnp.asarray(w.reshape(5, 4, 16)) / sigma,
            (1,),
            [(2, 2)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=2,
        )
        + nn.unbox(variables["params"])["bias"]
    )
    np.testing.assert_allclose(np.asarray(frozen), np.asarray(plain), rtol=1e-4, atol=1e-6)


def test_spectral_norm_steps_as_torch():
    # One training forward of torch's spectral_norm from the same weight and vectors.
    torch = pytest.importorskip("torch")
    conv = Conv(6, (3,), (1,), (1,), norm="spectral_norm")
    x = np.random.default_rng(0).standard_normal((2, 11, 4)).astype(np.float32)
    variables = conv.init(jax.random.key(0), x)
    out, new = conv.apply(variables, x, mutable=["spectral"])
    params, vectors = nn.unbox(variables["params"]), variables["spectral"]
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv1d(4, 6, 3, padding=1))
    with torch.no_grad():
        ref.weight_orig.copy_(torch.from_numpy(np.array(params["weight_orig"]).transpose(2, 1, 0)))
        ref.bias.copy_(torch.from_numpy(np.array(params["bias"])))
        ref.weight_u.copy_(torch.from_numpy(np.array(vectors["weight_u"])))
        ref.weight_v.copy_(torch.from_numpy(np.array(vectors["weight_v"]).reshape(3, 4).T.reshape(-1)))
        expected = ref(torch.from_numpy(x).transpose(1, 2)).transpose(1, 2).numpy()
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["spectral"]["weight_u"], ref.weight_u.numpy(), rtol=1e-5, atol=1e-6)


def test_least_squares_losses_summed_as_hifigan():
    real, fake = [jnp.full((2, 3), 0.5), jnp.full((2, 1, 4), 1.0)], [jnp.full((2, 3), -1.0), jnp.zeros((2, 1, 4))]
    d = losses.discriminator_loss(fake, real, "lsgan", "sum")
    np.testing.assert_allclose(d, [(1 + 0.25) + (0 + 0)] * 2)  # (1 - D(x))^2 + D(G(z))^2, summed
    np.testing.assert_allclose(losses.discriminator_loss(fake, real, "lsgan", "mean"), d / 2)
    fmaps_fake = [[jnp.ones((2, 5)), jnp.zeros((2, 5))], [jnp.ones((2, 2))]]
    fmaps_real = [[jnp.zeros((2, 5)), jnp.zeros((2, 5))], [jnp.full((2, 2), 3.0)]]
    adv, feat = losses.generator_losses(fake, fmaps_fake, fmaps_real, "lsgan", "sum")
    np.testing.assert_allclose(adv, [4.0 + 1.0] * 2)
    np.testing.assert_allclose(feat, [1.0 + 0.0 + 2.0] * 2)
    _, feat = losses.generator_losses(fake, fmaps_fake, fmaps_real, "hinge", "mean")
    np.testing.assert_allclose(feat, [(0.5 + 2.0) / 2] * 2)


def test_log_mel_loss_as_speechtokenizers_trainer():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((2, 1600, 1)).astype(np.float32) for _ in range(2))
    resolutions = [(256, 60, 45.0), (128, 30, 1.0)]
    got = np.asarray(losses.log_mel_l1_loss(jnp.asarray(x), jnp.asarray(y), 16000, resolutions, n_mels=40))

    def log_mel(a, n_fft, hop):
        a = torch.from_numpy(a[..., 0])[:, None]
        a = torch.nn.functional.pad(a, ((n_fft - hop) // 2,) * 2, mode="reflect")[:, 0]
        spec = torch.stft(a, n_fft, hop, n_fft, torch.hann_window(n_fft), center=False, return_complex=True)
        fb = torch.from_numpy(losses.mel_filterbank(n_fft // 2 + 1, 0.0, 8000.0, 40, 16000, norm="slaney"))
        return torch.log(torch.clamp(fb.T @ (spec.abs() + 1e-9), min=1e-5))

    ref = sum(w * (log_mel(x, n, h) - log_mel(y, n, h)).abs().mean(dim=(1, 2)) for n, h, w in resolutions)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4)
    # The Slaney norm gives each triangle unit area over Hz (its height is 2 / its base).
    fb = losses.mel_filterbank(2049, 0.0, 8000.0, 10, 16000, norm="slaney")
    np.testing.assert_allclose(fb.sum(0) * 8000 / 2048, 1.0, rtol=2e-2)


def test_codec_config_names_a_wrong_discriminator_or_loss():
    from trainers.config import ConfigError
    from trainers.tasks.codec import CodecConfig

    with pytest.raises(ConfigError, match="codec.discriminators: unknown kind 'mrd'; valid: msstft, mpd, msd, mrsd"):
        CodecConfig(discriminators=["mpd", "mrd"])
    with pytest.raises(ConfigError, match="codec.adversarial_loss: 'wgan'; valid: hinge, lsgan"):
        CodecConfig(adversarial_loss="wgan")
    with pytest.raises(ConfigError, match="codec.adversarial_reduction"):
        CodecConfig(adversarial_reduction="max")


@pytest.mark.parametrize(
    "kernel, strides, dilation", [((3, 9), (1, 2), (1, 1)), ((3, 9), (2, 1), (1, 1)), ((3, 9), (1, 2), (2, 1))]
)
def test_strided_convolution_gradients_equal_autodiffs(kernel, strides, dilation):
    """The CPU's input gradient of a convolution strided unevenly (grouped_conv's
    _upsampled_input_gradient) and its kernel gradient equal autodiff's of lax.conv_general_dilated."""
    from jaxmodels.nn.layers import grouped_conv

    spec = ("NHWC", "HWIO", "NHWC")
    pad = [((k - 1) * d // 2,) * 2 for k, d in zip(kernel, dilation)]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 17, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (*kernel, 3, 4))
    probe = jax.random.normal(jax.random.PRNGKey(2), grouped_conv(x, w, strides, pad, 1, spec, dilation).shape)

    def loss(conv, x, w):
        return jnp.sum(conv(x, w) * probe)

    traced = jax.make_jaxpr(lambda x, w: grouped_conv(x, w, strides, pad, 1, spec, dilation))(x, w)
    assert "custom_vjp_call" in str(traced)  # the CPU's path, which the comparison is about
    ours = jax.grad(loss, (1, 2))(lambda x, w: grouped_conv(x, w, strides, pad, 1, spec, dilation), x, w)
    reference = jax.grad(loss, (1, 2))(
        lambda x, w: jax.lax.conv_general_dilated(x, w, strides, pad, rhs_dilation=dilation, dimension_numbers=spec),
        x,
        w,
    )
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
