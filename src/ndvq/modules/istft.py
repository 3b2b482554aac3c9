"""A frame-rate decoder (after Vocos): ConvNeXt blocks at the codec's frame rate, then an inverse STFT.

latent [B, dimension, F] -> wav [B, 1, F * hop]. Every layer runs at the frame rate (50 Hz for the 16 kHz
presets) instead of the sample rate, so the network can be several times wider than SEANet's for the same
compute. It predicts each frame's log-magnitude and phase of an n_fft = 4 * hop spectrum; the frames are
overlap-added with a Hann window and trimmed so that frame f is centred on samples [f * hop, (f + 1) * hop).
"""

import torch
from torch import nn
import torch.nn.functional as F

LOG_MAGNITUDE_MAX = 10.0  # exp(10) ~ 2e4: far above any frame of RMS-normalised audio, a guard against overflow


class ConvNeXtBlock(nn.Module):
    """x + gamma * pointwise(gelu(pointwise(norm(depthwise conv k7 (x))))), x [B, dim, F]."""

    def __init__(self, dim: int, hidden: int, layer_scale: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, hidden)
        self.project = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.depthwise(x).transpose(1, 2))
        y = self.project(F.gelu(self.expand(y))) * self.gamma
        return x + y.transpose(1, 2)


def overlap_add(frames: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
    """Windowed overlap-add of frames [B, n_fft, F], normalised by the window's squared envelope and trimmed
    by (n_fft - hop) / 2 on each side: [B, F * hop]."""
    n_fft, count = frames.shape[1], frames.shape[2]
    length = (count - 1) * hop + n_fft
    fold = dict(output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
    wav = F.fold(frames * window[:, None], **fold)[:, 0, 0]
    envelope = F.fold(window.square()[None, :, None].expand(1, n_fft, count), **fold)[0, 0, 0]
    start = (n_fft - hop) // 2
    keep = slice(start, start + count * hop)
    return wav[:, keep] / envelope[keep].clamp(min=1e-8)


def polar(log_magnitude: torch.Tensor, phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real and imaginary parts of exp(log_magnitude) (clamped, see LOG_MAGNITUDE_MAX) at `phase`."""
    magnitude = torch.exp(log_magnitude.clamp(max=LOG_MAGNITUDE_MAX))
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


class InverseSTFT(nn.Module):
    """log-magnitude and phase [B, n_fft / 2 + 1, F] -> wav [B, 1, F * hop]: inverse real FFT (unscaled) of
    each frame, then `overlap_add` with a Hann window."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, log_magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        spectrum = torch.complex(*polar(log_magnitude, phase))
        frames = torch.fft.irfft(spectrum, n=self.n_fft, dim=1, norm="forward")
        return overlap_add(frames, self.window, self.hop_length)[:, None]


class ISTFTDecoder(nn.Module):
    """latent [B, dimension, F] -> wav [B, channels, F * hop]: conv k7 up to `dim`, `upsample` sub-frames per
    frame (a transposed conv, stride `upsample`), `layers` ConvNeXt blocks, a linear head to log-magnitude and
    phase of n_fft / 2 + 1 bins, InverseSTFT with hop / upsample and n_fft = 4 * hop / upsample."""

    def __init__(
        self, channels: int, dimension: int, dim: int, layers: int, hop_length: int, upsample: int = 1
    ) -> None:
        super().__init__()
        if channels != 1:
            raise ValueError("the inverse-STFT decoder is mono")
        if hop_length % upsample:
            raise ValueError(f"upsample {upsample} does not divide the hop {hop_length}")
        self.hop_length, n_fft = hop_length, 4 * hop_length // upsample
        self.embed = nn.Conv1d(dimension, dim, 7, padding=3)
        self.upsample = nn.ConvTranspose1d(dim, dim, upsample, stride=upsample) if upsample > 1 else nn.Identity()
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim, 3 * dim, 1.0 / layers) for _ in range(layers)))
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_fft + 2)
        self.synthesis = InverseSTFT(n_fft, hop_length // upsample)

    @torch.no_grad()
    def pass_through(self, first: int) -> None:
        """Zero the output projection of blocks[first:] so that they return their input unchanged: a decoder
        deepened from a trained one starts as the same function. (A zero layer scale would too, but then nothing
        inside the block gets a gradient until the scale moves.)"""
        for block in self.blocks[first:]:
            block.project.weight.zero_()
            block.project.bias.zero_()

    def spectrum(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latent [B, dimension, F] -> the log-magnitude and phase that `synthesis` overlap-adds, [B, n_fft / 2 + 1,
        F * upsample] each."""
        x = self.norm(self.upsample(self.embed(latent)).transpose(1, 2)).transpose(1, 2)
        x = self.final_norm(self.blocks(x).transpose(1, 2))
        log_magnitude, phase = self.head(x).transpose(1, 2).chunk(2, dim=1)
        return log_magnitude, phase

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.synthesis(*self.spectrum(latent))
