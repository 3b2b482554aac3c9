"""Multi-scale STFT discriminator (EnCodec's MS-STFT-D)."""

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class STFTDiscriminator(nn.Module):
    """One scale: real and imaginary parts of the normalised STFT [B, 2, frames, bins] through a Conv2d stack.

    Kernels (3, 9); three layers strided 2 in frequency with time dilations 1, 2, 4; then (3, 3), and a
    (3, 3) output to one channel of logits. LeakyReLU(0.2) between layers, weight norm throughout.
    """

    def __init__(self, n_fft: int, filters: int = 32) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

        def conv(c_in: int, c_out: int, kernel: tuple[int, int], stride=(1, 1), dilation=(1, 1)) -> nn.Module:
            padding = ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)
            return weight_norm(nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation))

        self.layers = nn.ModuleList(
            [conv(2, filters, (3, 9))]
            + [conv(filters, filters, (3, 9), stride=(1, 2), dilation=(d, 1)) for d in (1, 2, 4)]
            + [conv(filters, filters, (3, 3))]
        )
        self.output = conv(filters, 1, (3, 3))
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """wav [B, 1, T] -> logits [B, 1, frames, bins'] and every hidden layer's activations."""
        spec = torch.stft(
            wav.reshape(-1, wav.shape[-1]).float(),
            self.n_fft,
            hop_length=self.n_fft // 4,
            window=self.window,
            normalized=True,
            return_complex=True,
        )
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
        features = []
        for layer in self.layers:
            x = self.activation(layer(x))
            features.append(x)
        return self.output(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """One STFTDiscriminator per n_fft (window = n_fft, hop = n_fft / 4)."""

    def __init__(self, scales: tuple[int, ...] = (2048, 1024, 512, 256, 128), filters: int = 32) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(n_fft, filters) for n_fft in scales)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """wav [B, 1, T] -> (logits per scale, features per scale)."""
        outputs = [d(wav) for d in self.discriminators]
        return [logits for logits, _ in outputs], [features for _, features in outputs]
