"""LSTM over [B, C, T] with a skip connection."""

import torch
from torch import nn

from ndvq.modules.streaming import Streamable


class LSTM(Streamable):
    """y = LSTM(x) + x, channels kept. Shapes: [B, C, T] -> [B, C, T]."""

    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)
        if self._streaming:
            y, self._state = self.lstm(x, self._state)
        else:
            y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)
