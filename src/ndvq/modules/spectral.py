"""Spectral representations on torch.stft: log-mel and log-magnitude spectrograms."""

import torch
from torch import nn


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, 0 Hz to Nyquist, unnormalised: [n_mels, n_fft // 2 + 1]."""

    def to_mel(hz: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    def to_hz(mel: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = to_hz(torch.linspace(0.0, float(to_mel(torch.tensor(sample_rate / 2.0))), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def stft(wav: torch.Tensor, window: torch.Tensor, hop: int | None = None) -> torch.Tensor:
    """Complex STFT of wav [B, 1, T] (or [B, T]), window = n_fft = len(window), hop in samples (n_fft / 4 if
    None): [B, bins, frames]."""
    n_fft = window.shape[0]
    hop = hop or n_fft // 4
    return torch.stft(wav.reshape(-1, wav.shape[-1]).float(), n_fft, hop, window=window, return_complex=True)


def magnitude(wav: torch.Tensor, window: torch.Tensor, hop: int | None = None) -> torch.Tensor:
    """|STFT| of wav [B, 1, T] (or [B, T]), window = n_fft = len(window), hop as `stft`: [B, bins, frames]."""
    return stft(wav, window, hop).abs()


def power(wav: torch.Tensor, window: torch.Tensor, hop: int | None = None) -> torch.Tensor:
    """|STFT|^2 of wav [B, 1, T] (or [B, T]) as `magnitude` squared, without the square root (whose gradient
    divides by the magnitude): [B, bins, frames]."""
    spectrum = stft(wav, window, hop)
    return spectrum.real.square() + spectrum.imag.square()


class LogMel(nn.Module):
    """log10(clamp(mel power, 1e-5)) of wav [B, 1, T]: [B, n_mels, frames]. Window = n_fft, hop in samples
    (n_fft / 4 if None)."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int = 64, hop: int | None = None) -> None:
        super().__init__()
        self.hop = hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log10(torch.clamp(self.filters @ power(wav, self.window, self.hop), min=1e-5))


class LogMagnitude(nn.Module):
    """log10(clamp(|STFT|, 1e-5)) of wav [B, 1, T]: [B, bins, frames]. Window = n_fft, hop = n_fft / 4."""

    def __init__(self, n_fft: int) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log10(torch.clamp(magnitude(wav, self.window), min=1e-5))


def spectral_distance(transforms: list[nn.Module], estimate: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over `transforms` (e.g. LogMel at several scales) of the mean absolute difference: a distance."""
    with torch.no_grad():
        return sum((t(estimate) - t(target)).abs().mean().item() for t in transforms) / len(transforms)
