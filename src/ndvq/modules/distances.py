"""Differentiable distances between waveforms [B, 1, T] -> scalar: what training minimises (ndvq.train) and
what encoder refinement minimises (ndvq.refine)."""

import math

import torch
from torch import nn
import torch.nn.functional as F

from ndvq.modules.spectral import LogMel, magnitude, mel_filterbank, spectral_distance, stft

MEL_SCALES = tuple(2**i for i in range(5, 12))  # n_fft 32 .. 2048


class MultiScaleMelLoss(nn.Module):
    """Mean over scales (n_fft, by default the 7 of MEL_SCALES: 32 .. 2048) of L1 + MSE between log-mel
    spectrograms, each with hop n_fft / 4.

    `bins`: mel bins per scale, EnCodec's 64 at every scale by default; DAC's (5, 10, ..., 320) grow with the
    window, resolving harmonics at the long windows.
    """

    def __init__(
        self, sample_rate: int, bins: tuple[int, ...] | None = None, scales: tuple[int, ...] = MEL_SCALES
    ) -> None:
        super().__init__()
        bins = (64,) * len(scales) if bins is None else bins
        self.mels = nn.ModuleList(
            LogMel(sample_rate, n_fft, n_mels) for n_fft, n_mels in zip(scales, bins, strict=True)
        )

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.to_log_mels(estimate, self.log_mels(target))

    def log_mels(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """wav [B, 1, T] -> its log-mel spectrogram at each scale, for `to_log_mels`."""
        return [mel(wav) for mel in self.mels]

    def to_log_mels(self, estimate: torch.Tensor, target_mels: list[torch.Tensor]) -> torch.Tensor:
        """The loss against a target given by its `log_mels` (computed once when the target is fixed)."""
        total = 0.0
        for mel, y in zip(self.mels, target_mels, strict=True):
            x = mel(estimate)
            total = total + F.l1_loss(x, y) + F.mse_loss(x, y)
        return total / len(self.mels)

    def distance(self, estimate: torch.Tensor, target: torch.Tensor) -> float:
        """Mel distance for reporting: mean over scales of the L1 between log-mels."""
        return spectral_distance(list(self.mels), estimate, target)


class MultiWindowLoss(nn.Module):
    """Base of the losses computed on STFTs at each n_fft in `scales` (Hann window of n_fft samples)."""

    def __init__(self, scales: tuple[int, ...] = (512, 1024, 2048), eps: float = 1e-5) -> None:
        super().__init__()
        self.scales, self.eps = scales, eps
        for n_fft in scales:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def windows(self) -> list[torch.Tensor]:
        return [getattr(self, f"window_{n_fft}") for n_fft in self.scales]

    def unit(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The spectrum's unit phasors, smooth at zero magnitude (where they go to 0)."""
        return spectrum / torch.sqrt(spectrum.real**2 + spectrum.imag**2 + self.eps**2)


class PhaseDerivativeLoss(MultiWindowLoss):
    """Distance between the STFT phase derivatives of two waveforms, in time (instantaneous frequency) and
    in frequency (group delay), weighted by the target's magnitude; mean over n_fft in `scales` (hop n_fft / 4).

    Derivatives, not the phase itself, so that a constant phase offset costs nothing (after APNet's
    instantaneous-frequency and group-delay losses); each difference d counts 1 - cos(d), which is 0 for a
    perfect match, smooth everywhere, and needs no unwrapping. Waveforms [B, 1, T] -> scalar in [0, 2].
    """

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for window in self.windows():
            spectra = [stft(wav, window) for wav in (estimate, target)]  # [B, bins, frames]
            est, tgt = (self.unit(s) for s in spectra)  # the target's magnitude is the weight
            weight = spectra[1].abs().detach()
            for dim in (-1, -2):  # time: instantaneous frequency; frequency: group delay
                step_est = _next(est, dim) * _this(est, dim).conj()
                step_tgt = _next(tgt, dim) * _this(tgt, dim).conj()
                cosine = (step_est * step_tgt.conj()).real  # cos(derivative difference)
                w = torch.sqrt(_next(weight, dim) * _this(weight, dim))
                total = total + ((1 - cosine) * w).sum() / w.sum().clamp_min(1e-8)
        return total / (2 * len(self.scales))


class LowPhaseLoss(MultiWindowLoss):
    """Distance between the STFT phases of two waveforms up to `cutoff_hz`: 1 - cos(difference) per bin, weighted by
    the target's magnitude over the whole batch (a quiet crop counts little); mean over n_fft in `scales` (hop
    n_fft / 4). Waveforms [B, 1, T] -> scalar in [0, 2], 0 for a perfect match, about 1 for unrelated phases or a
    silent estimate (whose gradient is large: training clips it).

    The phase itself, not its derivatives (PhaseDerivativeLoss): the frame-rate decoder's phase of the first
    harmonics is where its decodes lose most to the original (benchmarks/magnitude_phase.py --phase-bands). Phase
    only, so that an uncertain phase is not paid for with a quieter low band (as a complex L1 would), and low band
    only, because matching the waveform everywhere costs the perceptual losses more than it gives
    (docs/ndvq-that-learns.md, session 4).
    """

    def __init__(
        self, sample_rate: int, cutoff_hz: float = 1000.0, scales: tuple[int, ...] = (512, 1024, 2048)
    ) -> None:
        super().__init__(scales)
        self.bins = [int(cutoff_hz * n_fft / sample_rate) + 1 for n_fft in scales]

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for window, bins in zip(self.windows(), self.bins, strict=True):
            est, tgt = (stft(wav, window)[:, :bins] for wav in (estimate, target))
            weight = tgt.abs().detach()
            est, tgt = self.unit(est), self.unit(tgt)
            cosine = (est * tgt.conj()).real
            total = total + ((1 - cosine) * weight).sum() / weight.sum().clamp_min(1e-8)
        return total / len(self.scales)


class SpectralConvergenceLoss(MultiWindowLoss):
    """Spectral convergence on linear STFT magnitudes, ||S - S_hat||_F / ||S||_F over the whole batch, mean over
    n_fft in `scales` (hop n_fft / 4): waveforms [B, 1, T] -> scalar >= 0, 0 for a perfect match.

    Linear magnitudes weigh each bin by its energy, so the loudest bins of the loudest crops decide it: the
    level and shape of formants and harmonics, which log-domain losses (mel, PESQ's loudness) count no more
    than the quiet bins between them (after Parallel WaveGAN's multi-resolution STFT loss).
    """

    def __init__(self, scales: tuple[int, ...] = (512, 1024, 2048)) -> None:
        super().__init__(scales, eps=1e-7)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for window in self.windows():
            est, tgt = (magnitude(wav, window) for wav in (estimate, target))
            total = total + (est - tgt).norm() / (tgt.norm() + self.eps)
        return total / len(self.scales)


class IntelligibilityLoss(nn.Module):
    """1 - STOI (Taal et al. 2011) as a differentiable loss: waveforms [B, 1, T] -> scalar in [0, 2].

    STOI's steps at the waveforms' own rate instead of resampling to 10 kHz: 25.6 ms Hann frames at half
    overlap, 15 one-third-octave band envelopes from 150 Hz, the target's frames more than 40 dB under its
    loudest dropped (from both), then the correlation of the two envelopes over every 30-frame (384 ms)
    segment, the estimate's scaled to the target's energy and clipped at -15 dB signal-to-distortion.
    Items with fewer than 30 frames left (often 0.5 s crops, 38 frames) use one segment of all of them. Targets
    whose loudest frame is under QUIET_DBFS (a pause, dither) are skipped: STOI is scale-invariant, so its
    gradient grows as 1 / amplitude, and one such crop would hold all of a batch's gradient
    (benchmarks/loss_gradients.py). For training only: report STOI with pystoi (`ndvq eval`).
    """

    SEGMENT, DYNAMIC_RANGE_DB, CLIP, QUIET_DBFS = 30, 40.0, 1 + 10 ** (15 / 20), -40.0

    def __init__(self, sample_rate: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.frame = round(0.0256 * sample_rate)
        self.hop, self.n_fft, self.eps = self.frame // 2, 2 ** math.ceil(math.log2(2 * self.frame)), eps
        self.register_buffer("window", torch.hann_window(self.frame), persistent=False)
        self.register_buffer("bands", third_octave_bands(sample_rate, self.n_fft), persistent=False)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # [B, bins, frames] each
        powers = [frame_power(wav, self.window, self.n_fft, self.hop) for wav in (estimate, target)]
        envelope_est, envelope_tgt = (torch.sqrt(self.bands @ power + self.eps) for power in powers)
        loudness = 10 * torch.log10(powers[1].sum(dim=1) + self.eps)  # [B, frames]
        scores = []
        frames = target.reshape(-1, target.shape[-1]).float().unfold(-1, self.frame, self.hop)
        peaks = 10 * torch.log10(frames.pow(2).mean(dim=-1).amax(dim=-1) + self.eps)  # [B] dBFS
        for est, tgt, level, peak in zip(envelope_est, envelope_tgt, loudness, peaks, strict=True):
            if peak < self.QUIET_DBFS:  # silence or a pause: nothing to be intelligible
                continue
            keep = level > level.max() - self.DYNAMIC_RANGE_DB
            est, tgt = est[:, keep], tgt[:, keep]  # [bands, frames]
            length = min(self.SEGMENT, tgt.shape[-1])
            if length < 2:
                continue
            x, y = tgt.unfold(-1, length, 1), est.unfold(-1, length, 1)  # [bands, segments, length]
            y = y * x.norm(dim=-1, keepdim=True) / (y.norm(dim=-1, keepdim=True) + self.eps)
            y = torch.minimum(y, self.CLIP * x)
            x, y = x - x.mean(dim=-1, keepdim=True), y - y.mean(dim=-1, keepdim=True)
            scores.append(((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1) + self.eps)).mean())
        if not scores:  # nothing long enough to score: no gradient, no loss
            return estimate.sum() * 0.0
        return 1 - torch.stack(scores).mean()


class DisturbanceLoss(nn.Module):
    """PESQ's perceptual disturbance (ITU-T P.862) as a differentiable loss: waveforms [B, 1, T] -> scalar >= 0,
    about 0 for a perfect match; a lower loss means a higher PESQ (after Martin-Donas et al. 2018).

    P.862's model on 32 ms Hann frames at half overlap: band powers on `bands` mel bands, each item divided by
    its own mean band power (PESQ aligns levels; the gradient flows through the divisor, so that it does not
    ask for a quieter or louder decode either; the divisor is never less than that of FLOOR_DBFS white noise,
    so that a quiet crop is not raised to speech level), Zwicker's loudness (power 0.23) over a hearing
    threshold DYNAMIC_RANGE_DB under that level, the loudness difference less a dead zone of a quarter of the
    smaller loudness (masking), and the asymmetry factor that counts added energy (noise, buzz) up to 12 times
    more than missing energy. Per frame, L3 over bands (symmetric) and L1 of the asymmetric disturbance; over
    time, L6 within 20-frame segments at half overlap, then L2 over segments; the two summed with weights 0.1
    and `asymmetric`. Left out: time alignment (decodes are aligned), the IRS and frequency equalisation, silence
    weighting. For training and refinement (ndvq.refine): report PESQ with `pesq` (`ndvq eval`).

    Defaults differ from P.862 where that ranks decodes closer to PESQ-wb on the validation split
    (benchmarks/loss_agreement.py): 96 bands instead of 49 Bark bands (resolving the harmonics of a voice,
    between which a decoder adds noise) and an asymmetric weight of 0.093, three times PESQ's 0.0309.
    """

    GAMMA, DYNAMIC_RANGE_DB, SEGMENT, FLOOR_DBFS = 0.23, 60.0, 20, -40.0

    def __init__(self, sample_rate: int, bands: int = 96, asymmetric: float = 0.0927, eps: float = 1e-30) -> None:
        super().__init__()
        self.frame = round(0.032 * sample_rate)
        self.hop, self.n_fft, self.eps = self.frame // 2, 2 ** math.ceil(math.log2(self.frame)), eps
        self.asymmetric = asymmetric
        self.threshold = 10 ** (-self.DYNAMIC_RANGE_DB / 10)
        self.register_buffer("window", torch.hann_window(self.frame), persistent=False)
        self.register_buffer("filters", mel_filterbank(sample_rate, self.n_fft, bands), persistent=False)
        # mean band power of white noise at FLOOR_DBFS: E|X_k|^2 = variance * window energy in every bin
        variance = 10 ** (self.FLOOR_DBFS / 10)
        self.floor = float(variance * self.window.pow(2).sum() * self.filters.sum(dim=1).mean())

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # [B, bands, frames] each
        powers = [self.filters @ frame_power(wav, self.window, self.n_fft, self.hop) for wav in (estimate, target)]
        power_est, power_tgt = (p / p.mean(dim=(1, 2), keepdim=True).clamp(min=self.floor) for p in powers)
        loudness_est, loudness_tgt = self._loudness(power_est), self._loudness(power_tgt)
        difference = loudness_est - loudness_tgt
        masked = torch.sign(difference) * F.relu(difference.abs() - 0.25 * torch.minimum(loudness_est, loudness_tgt))
        with torch.no_grad():  # a weight: how much more added energy is heard than missing energy
            ratio = ((power_est + self.threshold) / (power_tgt + self.threshold)) ** 1.2
            asymmetry = torch.where(ratio < 3, torch.zeros_like(ratio), ratio.clamp(max=12))
        symmetric = (masked.abs().pow(3).mean(dim=1) + self.eps).pow(1 / 3)  # [B, frames]
        asymmetric = (masked * asymmetry).abs().mean(dim=1)
        return (0.1 * self._over_time(symmetric) + self.asymmetric * self._over_time(asymmetric)).mean()

    def _loudness(self, power: torch.Tensor) -> torch.Tensor:
        """Zwicker's law over the hearing threshold: 0 at silence, about power ** 0.23 well above it."""
        scale = (self.threshold / 0.5) ** self.GAMMA
        return scale * ((0.5 + 0.5 * power / self.threshold) ** self.GAMMA - 1)

    def _over_time(self, disturbance: torch.Tensor) -> torch.Tensor:
        """[B, frames] -> [B]: L6 within each segment (a burst counts), then L2 over segments."""
        length = min(self.SEGMENT, disturbance.shape[-1])
        segments = disturbance.unfold(-1, length, max(length // 2, 1))  # [B, segments, length]
        within = (segments.pow(6).mean(dim=-1) + self.eps).pow(1 / 6)
        return (within.pow(2).mean(dim=-1) + self.eps).sqrt()


def frame_power(wav: torch.Tensor, window: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT|^2 of wav [B, 1, T] in whole frames (no centring padding) of len(window) samples, zero-padded to
    n_fft, every hop samples: [B, n_fft // 2 + 1, frames]."""
    spectrum = torch.stft(
        wav.reshape(-1, wav.shape[-1]).float(),
        n_fft,
        hop,
        win_length=window.shape[0],
        window=window,
        center=False,
        return_complex=True,
    )
    return spectrum.real**2 + spectrum.imag**2


def third_octave_bands(sample_rate: int, n_fft: int, bands: int = 15, lowest: float = 150.0) -> torch.Tensor:
    """STOI's one-third-octave band matrix: row k sums the FFT bins nearest to 150 Hz * 2^((2k-1)/6) up to
    (not including) the one nearest to 150 Hz * 2^((2k+1)/6): [bands, n_fft // 2 + 1] of 0 and 1."""
    frequencies = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    matrix = torch.zeros(bands, frequencies.shape[0])
    for k in range(bands):
        low, high = (int(torch.argmin((frequencies - lowest * 2 ** ((2 * k + s) / 6)).abs())) for s in (-1, 1))
        matrix[k, low:high] = 1.0
    return matrix


def _this(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.narrow(dim, 0, x.shape[dim] - 1)


def _next(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.narrow(dim, 1, x.shape[dim] - 1)
