"""SEANet encoder and decoder (EnCodec's convolutional autoencoder).

Encoder: wav [B, channels, T] -> latent [B, dimension, ceil(T / hop)], hop = prod(strides).
Decoder: latent [B, dimension, F] -> wav [B, channels, F * hop].
"""

from collections.abc import Sequence
import math

import torch
from torch import nn

from ndvq.modules.conv import Conv1d, ConvTranspose1d
from ndvq.modules.lstm import LSTM


class ResidualUnit(nn.Module):
    """x + block(x): ELU, conv k (dim -> dim/2), ELU, conv 1 (dim/2 -> dim); 1x1 conv on the skip."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, causal: bool) -> None:
        super().__init__()
        hidden = dim // 2
        self.block = nn.Sequential(
            nn.ELU(),
            Conv1d(dim, hidden, kernel_size, dilation=dilation, causal=causal),
            nn.ELU(),
            Conv1d(hidden, dim, 1, causal=causal),
        )
        self.shortcut = Conv1d(dim, dim, 1, causal=causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


def _residual_units(dim: int, count: int, causal: bool) -> list[nn.Module]:
    return [ResidualUnit(dim, 3, 2**j, causal) for j in range(count)]


class SEANetEncoder(nn.Sequential):
    """Conv k7, then per stride: residual units, ELU, strided conv (kernel 2*stride) doubling channels;
    LSTM with skip; ELU; conv k7 down to `dimension`."""

    def __init__(
        self,
        channels: int,
        dimension: int,
        n_filters: int,
        strides: Sequence[int],
        n_residual_layers: int = 1,
        lstm_layers: int = 2,
        causal: bool = False,
    ) -> None:
        layers: list[nn.Module] = [Conv1d(channels, n_filters, 7, causal=causal)]
        dim = n_filters
        for stride in strides:
            layers += _residual_units(dim, n_residual_layers, causal)
            layers += [nn.ELU(), Conv1d(dim, dim * 2, 2 * stride, stride=stride, causal=causal)]
            dim *= 2
        if lstm_layers:
            layers.append(LSTM(dim, lstm_layers))
        layers += [nn.ELU(), Conv1d(dim, dimension, 7, causal=causal)]
        super().__init__(*layers)
        self.hop_length = math.prod(strides)


class SEANetDecoder(nn.Sequential):
    """Mirror of the encoder with transposed convolutions and no final activation."""

    def __init__(
        self,
        channels: int,
        dimension: int,
        n_filters: int,
        strides: Sequence[int],
        n_residual_layers: int = 1,
        lstm_layers: int = 2,
        causal: bool = False,
    ) -> None:
        dim = n_filters * 2 ** len(strides)
        layers: list[nn.Module] = [Conv1d(dimension, dim, 7, causal=causal)]
        if lstm_layers:
            layers.append(LSTM(dim, lstm_layers))
        for stride in reversed(strides):
            layers += [nn.ELU(), ConvTranspose1d(dim, dim // 2, 2 * stride, stride, causal=causal)]
            dim //= 2
            layers += _residual_units(dim, n_residual_layers, causal)
        layers += [nn.ELU(), Conv1d(dim, channels, 7, causal=causal)]
        super().__init__(*layers)
        self.hop_length = math.prod(strides)


def receptive_field(encoder: SEANetEncoder) -> int:
    """Receptive field of the encoder's convolutions in input samples (the LSTM's memory is unbounded)."""
    field, step = 1, 1
    for module in encoder.modules():
        if isinstance(module, Conv1d):
            field += (module.span - 1) * step
            step *= module.stride
    return field
