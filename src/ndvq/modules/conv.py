"""Padded convolutions: causal (left padding only) or non-causal (reflect padding), with weight norm.

Shapes: x [B, C, T] -> [B, C', T'] where T' = ceil(T / stride) for Conv1d and T * stride for
ConvTranspose1d, whatever the kernel size.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from ndvq.modules.streaming import Streamable


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """F.pad(x, (left, right), mode="reflect") for left, right < x.shape[-1], built from flipped slices:
    the same values and gradients, and faster on CPU than PyTorch's reflection_pad1d (see a profile)."""
    parts = [x[..., 1 : left + 1].flip(-1), x, x[..., x.shape[-1] - right - 1 : -1].flip(-1)]
    return torch.cat(parts, dim=-1)


def pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """F.pad that also reflect-pads inputs shorter than the padding (zero-extending them first)."""
    if mode != "reflect":
        return F.pad(x, (left, right))
    length = x.shape[-1]
    extra = max(0, max(left, right) - length + 1)
    if extra:
        x = F.pad(x, (0, extra))
    padded = reflect_pad(x, left, right)
    return padded[..., : padded.shape[-1] - extra]


class Conv1d(Streamable):
    """Conv1d that pads so that each output frame covers `stride` new input samples."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation))
        self.causal = causal
        self.stride = stride
        self.span = (kernel_size - 1) * dilation + 1  # effective kernel size
        self.padding = self.span - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._streaming:
            return self._forward_streaming(x)
        length = x.shape[-1]
        frames = math.ceil((length - self.span + self.padding) / self.stride) + 1
        extra = (frames - 1) * self.stride + self.span - self.padding - length
        if self.causal:
            return self.conv(pad1d(x, self.padding, extra, "constant"))
        right = self.padding // 2
        return self.conv(pad1d(x, self.padding - right, right + extra, "reflect"))

    def _forward_streaming(self, x: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            raise RuntimeError("only a causal model can stream")
        if x.shape[-1] % self.stride:
            raise RuntimeError(f"streaming chunks must be multiples of the stride {self.stride}")
        if self._state is None:
            self._state = x.new_zeros(*x.shape[:-1], self.padding)
        x = torch.cat([self._state, x], dim=-1)
        self._state = x[..., x.shape[-1] - self.padding :]
        return self.conv(x)


class ConvTranspose1d(Streamable):
    """ConvTranspose1d trimmed to exactly `stride` output samples per input frame."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, causal: bool = False
    ) -> None:
        super().__init__()
        self.convtr = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride))
        self.causal = causal
        self.padding = kernel_size - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr(x)
        length = y.shape[-1]
        if self._streaming:
            if not self.causal:
                raise RuntimeError("only a causal model can stream")
            # The last `padding` samples overlap the next chunk's first ones: carry them over,
            # without the bias, which the next chunk's output already contains.
            if self._state is not None:
                y = torch.cat([y[..., : self.padding] + self._state, y[..., self.padding :]], dim=-1)
            self._state = y[..., length - self.padding :] - self.convtr.bias[:, None]
            return y[..., : length - self.padding]
        right = self.padding if self.causal else self.padding // 2
        return y[..., self.padding - right : length - right]
