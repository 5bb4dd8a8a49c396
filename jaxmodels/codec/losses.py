"""The codec's training losses and metrics, as AudioCraft's (audiocraft/losses/{specloss,sisnr,balancer}.py,
audiocraft/adversarial/losses.py). Waveforms are channels-last (B, T, C).

Every loss is returned per example, shape (B,): upstream's batch means are their means,
and a trainer can leave padding rows out.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec.discriminator import stft


def per_example(a):
    """Mean over all axes but the first."""
    return jnp.mean(a.reshape(a.shape[0], -1), axis=1)


def _hz_to_mel(f, scale: str):
    f = np.asarray(f, np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney's (librosa's default): linear to 1 kHz (15 mels), logarithmic above, 27 mels per factor 6.4
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4))


def _mel_to_hz(m, scale: str):
    m = np.asarray(m, np.float64)
    if scale == "htk":
        return 700.0 * (10 ** (m / 2595.0) - 1.0)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def mel_filterbank(
    n_freqs: int,
    f_min: float,
    f_max: float,
    n_mels: int,
    sample_rate: int,
    norm: str | None = None,
    mel_scale: str = "htk",
) -> np.ndarray:
    """Triangular mel filters (n_freqs, n_mels): torchaudio's melscale_fbanks (HTK scale, the
    default), librosa.filters.mel with mel_scale="slaney" and norm="slaney" (librosa's defaults,
    Matcha-TTS's and CosyVoice's features); ``norm="slaney"`` divides each triangle by its width
    in Hz (equal area)."""
    freqs = np.linspace(0, sample_rate / 2, n_freqs)
    f_pts = _mel_to_hz(np.linspace(_hz_to_mel(f_min, mel_scale), _hz_to_mel(f_max, mel_scale), n_mels + 2), mel_scale)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    if norm == "slaney":
        fb = fb * (2.0 / (f_pts[2:] - f_pts[:-2]))
    return fb.astype(np.float32)


def mel_spectrogram(
    x,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    win_length: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max=None,
    log: bool = True,
    normalized: bool = False,
    floor_level: float = 1e-5,
):
    """AudioCraft's MelSpectrogramWrapper: (B, T, C) -> (B, C, frames, n_mels), ceil(T / hop) frames.

    Reflect padding of (n_fft - hop) / 2 on both sides, zeros so the last window is full,
    power spectrogram through a mel filterbank, log10(floor + mel) when ``log``.
    """
    x = jnp.moveaxis(x, -1, 1).astype(jnp.float32)
    p = (n_fft - hop_length) // 2
    x = jnp.pad(x, ((0, 0), (0, 0), (p, p)), mode="reflect")
    length = x.shape[-1]
    frames = math.ceil((length - n_fft) / hop_length + 1)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, (frames - 1) * hop_length + n_fft - length)))
    power = jnp.abs(stft(x, n_fft, hop_length, win_length, normalized)) ** 2
    mel = power @ mel_filterbank(n_fft // 2 + 1, f_min, f_max or sample_rate / 2, n_mels, sample_rate)
    return jnp.log10(floor_level + mel) if log else mel


def mel_l1_loss(
    x,
    y,
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 64,
    f_min: float = 64.0,
    f_max=None,
    floor_level: float = 1e-5,
):
    """MelSpectrogramL1Loss: mean |log-mel(x) - log-mel(y)| (AudioCraft's `mel` loss and metric)."""
    spec = lambda a: mel_spectrogram(
        a,
        sample_rate,
        n_fft,
        hop_length,
        win_length,
        n_mels,
        f_min,
        f_max,  # noqa: E731
        log=True,
        floor_level=floor_level,
    )
    return per_example(jnp.abs(spec(x) - spec(y)))


def multi_scale_mel_loss(
    x,
    y,
    sample_rate: int,
    range_start: int = 6,
    range_end: int = 11,
    n_mels: int = 64,
    f_min: float = 64.0,
    f_max=None,
    normalized: bool = True,
    alphas: bool = False,
    floor_level: float = 1e-5,
):
    """MultiScaleMelSpectrogramLoss (`msspec`): at n_fft = 2^6 .. 2^10 (hop n_fft / 4), L1 of the
    mel spectrograms plus alpha x MSE of the log ones; with ``normalized``, divided by sum(alpha + 1)."""
    loss, total = 0.0, 0.0
    for i in range(range_start, range_end):
        n_fft = 2**i
        alpha = math.sqrt(n_fft - 1) if alphas else 1.0
        kw = dict(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=n_fft // 4,
            win_length=n_fft,
            n_mels=n_mels,  # noqa: C408
            f_min=f_min,
            f_max=f_max,
            normalized=normalized,
            floor_level=floor_level,
        )
        lin_x, lin_y = mel_spectrogram(x, log=False, **kw), mel_spectrogram(y, log=False, **kw)
        log_x, log_y = jnp.log10(floor_level + lin_x), jnp.log10(floor_level + lin_y)
        loss = loss + per_example(jnp.abs(lin_x - lin_y)) + alpha * per_example(jnp.square(log_x - log_y))
        total += alpha + 1
    return loss / total if normalized else loss


def log_mel_l1_loss(
    x,
    y,
    sample_rate: int,
    resolutions=((1024, 240, 45.0), (512, 120, 1.0), (256, 60, 1.0), (128, 30, 1.0)),
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max=None,
):
    """HiFi-GAN's mel loss at several resolutions, as SpeechTokenizer's trainer weights them
    (speechtokenizer/trainer/loss.py mel_loss): for each (n_fft, hop, weight), weight x mean
    |log-mel(x) - log-mel(y)|, where log-mel is log(max(mel, 1e-5)) of the STFT magnitude
    (+1e-9; reflect padding of (n_fft - hop) / 2, window n_fft) through an HTK-scale,
    Slaney-normalised filterbank. (B, T, 1) pairs -> per example (B,)."""

    def log_mel(a, n_fft, hop, fb):
        a = jnp.moveaxis(a, -1, 1).astype(jnp.float32)
        p = (n_fft - hop) // 2
        magnitude = jnp.abs(stft(jnp.pad(a, ((0, 0), (0, 0), (p, p)), mode="reflect"), n_fft, hop, n_fft, False))
        return jnp.log(jnp.maximum((magnitude + 1e-9) @ fb, 1e-5))

    total = 0.0
    for n_fft, hop, weight in resolutions:
        fb = mel_filterbank(n_fft // 2 + 1, f_min, f_max or sample_rate / 2, n_mels, sample_rate, norm="slaney")
        total = total + weight * per_example(jnp.abs(log_mel(x, n_fft, hop, fb) - log_mel(y, n_fft, hop, fb)))
    return total


def si_snr(estimate, reference, mask=None, epsilon: float = float(np.finfo(np.float32).eps)):
    """Scale-invariant SNR in dB per example (higher is better; AudioCraft's SISNR loss is its negative).

    (B, T, C) inputs over the whole signal (upstream's segment=None), channels averaged;
    ``mask`` (B, T) leaves padding out.
    """
    est, ref = estimate.astype(jnp.float32), reference.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones(ref.shape[:2], jnp.float32)
    m = mask[..., None]
    count = jnp.sum(m, axis=1, keepdims=True)
    est = (est - jnp.sum(est * m, 1, keepdims=True) / count) * m
    ref = (ref - jnp.sum(ref * m, 1, keepdims=True) / count) * m
    eps = epsilon * count[:, 0]
    dot = jnp.sum(est * ref, axis=1)
    proj = dot[:, None] * ref / (eps + jnp.sum(ref * ref, axis=1))[:, None]
    noise = est - proj
    value = 10 * (jnp.log10(eps + jnp.sum(proj * proj, axis=1)) - jnp.log10(eps + jnp.sum(noise * noise, axis=1)))
    return jnp.mean(value, axis=-1)


def hinge_real_loss(logits):
    return -per_example(jnp.minimum(logits - 1, 0.0))


def hinge_fake_loss(logits):
    return -per_example(jnp.minimum(-logits - 1, 0.0))


def hinge_generator_loss(logits):
    return -per_example(logits)


def lsgan_real_loss(logits):
    return per_example(jnp.square(1.0 - logits))


def lsgan_fake_loss(logits):
    return per_example(jnp.square(logits))


# Per-example losses of each form: (real, fake) for the discriminator, then the generator's.
ADVERSARIAL = {
    "hinge": (hinge_real_loss, hinge_fake_loss, hinge_generator_loss),  # AudioCraft
    "lsgan": (lsgan_real_loss, lsgan_fake_loss, lsgan_real_loss),  # HiFi-GAN's least squares
}
# How sub-discriminators (and feature-map layers) combine: AudioCraft averages, HiFi-GAN sums.
REDUCTIONS = ("mean", "sum")


def _reduce(terms, reduction):
    return sum(terms) / (len(terms) if reduction == "mean" else 1)


def discriminator_loss(logits_fake, logits_real, kind: str = "hinge", reduction: str = "mean"):
    """The discriminator's loss over its sub-discriminators' logits (AudioCraft's
    AdversarialLoss.train_adv; HiFi-GAN's discriminator_loss with lsgan and sum)."""
    real_loss, fake_loss, _ = ADVERSARIAL[kind]
    return _reduce([fake_loss(f) + real_loss(r) for f, r in zip(logits_fake, logits_real)], reduction)


def generator_losses(logits_fake, fmaps_fake, fmaps_real, kind: str = "hinge", reduction: str = "mean"):
    """(adversarial loss, L1 feature matching) of the generator over the sub-discriminators;
    feature matching combines each one's layers the same way (AudioCraft's AdversarialLoss.forward
    averages both; HiFi-GAN's generator_loss and feature_loss, before its x2, sum both)."""
    adv = _reduce([ADVERSARIAL[kind][2](f) for f in logits_fake], reduction)
    feat = _reduce(
        [
            _reduce([per_example(jnp.abs(a - b)) for a, b in zip(fake, real)], reduction)
            for fake, real in zip(fmaps_fake, fmaps_real)
        ],
        reduction,
    )
    return adv, feat


def tpr_loss(logits_a, logits_b, mask, tau: float = 0.04):
    """The truncated pointwise relativistic loss CosyVoice trains HiFT with (cosyvoice/utils/
    losses.py tpr_loss; Li et al. 2023, HiFTNet), summed over sub-discriminators: with
    d = a - b and m its (lower) median over the batch's valid rows, the mean of (d - m)^2 where
    d < m, capped at tau. The discriminator takes (real, fake), the generator (fake, real)."""
    total = 0.0
    for a, b in zip(logits_a, logits_b):
        d = (a - b).reshape(a.shape[0], -1).astype(jnp.float32)
        valid = jnp.broadcast_to(mask[:, None] > 0, d.shape).reshape(-1)
        d = d.reshape(-1)
        count = jnp.sum(valid)
        median = jnp.sort(jnp.where(valid, d, jnp.inf))[jnp.maximum(count - 1, 0) // 2]  # torch.median's lower one
        below = valid & (d < median)
        relative = jnp.sum(jnp.where(below, jnp.square(d - median), 0.0)) / jnp.maximum(jnp.sum(below), 1)
        total = total + jnp.minimum(relative, tau)
    return total


def balancer_init(names):
    """EMA state of each loss's gradient norm (the averager's running sum and weight)."""
    return {name: {"total": jnp.zeros(()), "weight": jnp.zeros(())} for name in names}


def balance(
    grads,
    losses,
    weights,
    state,
    mask=None,
    total_norm: float = 1.0,
    ema_decay: float = 0.999,
    per_batch_item: bool = True,
    balance_grads: bool = True,
    epsilon: float = 1e-12,
):
    """AudioCraft's Balancer.backward without the backward: each loss's gradient with respect
    to the model output is rescaled so that it makes up weight / sum(weights) of a total of
    ``total_norm``, measured by an EMA of its norm (per batch item, averaged over the rows
    ``mask`` keeps).

    Returns (the combined output gradient, the effective loss, new state, each loss's share of
    the gradient norm). With ``balance_grads`` off, the gradients are simply weighted.
    """
    new_state, avg_norms = {}, {}
    for name, g in grads.items():
        g = g.astype(jnp.float32)
        if per_batch_item:
            norms = jnp.sqrt(jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1))
            m = jnp.ones_like(norms) if mask is None else mask
            norm = jnp.sum(norms * m) / jnp.maximum(jnp.sum(m), 1.0)
        else:
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
        s = state[name]
        new_state[name] = {"total": s["total"] * ema_decay + norm, "weight": s["weight"] * ema_decay + 1.0}
        avg_norms[name] = new_state[name]["total"] / new_state[name]["weight"]
    total = sum(avg_norms.values())
    total_weight = sum(weights[k] for k in grads)
    out, effective = 0.0, 0.0
    for name, g in grads.items():
        scale = (
            weights[name] / total_weight * total_norm / (epsilon + avg_norms[name]) if balance_grads else weights[name]
        )
        out = out + scale * g
        effective = effective + scale * jax.lax.stop_gradient(losses[name])
    shares = {name: avg / total for name, avg in avg_norms.items()}
    return out, effective, new_state, shares


def d_axis_distillation_loss(feature, target, valid):
    """SpeechTokenizer's "D-axis" semantic distillation loss (speechtokenizer/trainer/loss.py,
    d_axis_distill_loss): for each feature dimension, -log sigmoid of the cosine similarity of
    the student's and the teacher's series over the valid frames, averaged over dimensions.
    feature, target (B, T, D), valid (B, T) -> per example (B,)."""
    m = valid[..., None].astype(jnp.float32)
    f, g = feature.astype(jnp.float32) * m, target.astype(jnp.float32) * m
    norms = jnp.sqrt(jnp.sum(f * f, axis=1) * jnp.sum(g * g, axis=1))
    cosine = jnp.sum(f * g, axis=1) / jnp.maximum(norms, 1e-8)  # torch's cosine_similarity, eps 1e-8
    return -jnp.mean(jax.nn.log_sigmoid(cosine), axis=-1)
