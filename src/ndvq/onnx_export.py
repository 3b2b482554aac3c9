"""ONNX export: encoder graphs (audio -> codes, one per bandwidth) and one decoder graph (codes -> audio).

Every graph has dynamic batch and length axes and opset OPSET; weight norm is folded into plain convolutions.

- encoder-<kbps>kbps.onnx: audio [B, 1, T] float32 at the model's sample rate, already divided by the RMS
  scale (`ndvq.codec.signal_scale`) and zero-padded at the end to T a multiple of hop_length (as
  `Codec.encode` does) -> codes [B, n_q, T / hop] int64, n_q fixed by the bandwidth. The quantizer's
  assignment (NDVQ: most likely Gaussian; RVQ: nearest vector) is in the graph.
- decoder.onnx: codes [B, n_q, F] int64, any n_q from 1 to num_codebooks -> audio [B, 1, F * hop] float32,
  to be multiplied by the scale.

Non-causal models reflect-pad their convolutions, which needs at least MIN_FRAMES frames (T >= 4 hops);
causal models take any number of frames. onnx.json beside the graphs describes them.
"""

import importlib
import json
import math
import os
from pathlib import Path
import tempfile
from types import ModuleType
from typing import Any
import warnings

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ndvq.codec import Codec
from ndvq.errors import NdvqError
from ndvq.modules.conv import Conv1d
from ndvq.modules.istft import InverseSTFT, polar
from ndvq.quantization.ndvq import NormalCodebook, expanded_log_likelihood

OPSET = 17
MIN_FRAMES = 4  # non-causal graphs: the last encoder / first decoder convolution reflect-pads 3 frames
MANIFEST = "onnx.json"


def require(name: str) -> ModuleType:
    """Import an optional package of the 'onnx' extra, or raise an NdvqError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise NdvqError(f"ONNX needs the 'onnx' extra ({name} is missing): pip install 'ndvq[onnx]'") from None


class _Stage(nn.Module):
    """One stage's inference-time assignment x [N, d] -> codes [N], the torch path's arithmetic in float32
    with its constant factors computed once (by the same torch expressions); `vectors` [K, d]: decode."""

    def __init__(self, codebook: nn.Module) -> None:
        super().__init__()
        self.gaussian = isinstance(codebook, NormalCodebook)
        with torch.no_grad():
            self.register_buffer("vectors", codebook.decode(torch.arange(codebook.size)).float())
            if self.gaussian:  # NormalCodebook.log_likelihood, then argmax
                weights, offset = codebook.likelihood_terms()
                self.register_buffer("weights", weights.contiguous())
                self.register_buffer("offset", offset.contiguous())
            else:  # kmeans.nearest, then argmin
                centroids = codebook.embedding.float()
                self.register_buffer("c", centroids.pow(2).sum(1))
                self.register_buffer("b", centroids.t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gaussian:
            return expanded_log_likelihood(x, self.weights, self.offset).argmax(dim=1)
        return (self.c - 2 * x @ self.b).argmin(dim=1)


class _Encoder(nn.Module):
    """Normalised, padded audio [B, 1, T] -> codes [B, n_q, T / hop] (ResidualQuantizer.encode, unrolled)."""

    def __init__(self, codec: Codec, n_q: int) -> None:
        super().__init__()
        quantizer = codec.quantizer
        self.encoder, self.dim = codec.encoder, quantizer.dim
        self.stages = nn.ModuleList(_Stage(quantizer.codebooks[i]) for i in range(n_q))
        self.project_in, self.project_out = quantizer.project_in[:n_q], quantizer.project_out[:n_q]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        z = self.encoder(audio)
        residual = z.transpose(1, 2).reshape(-1, self.dim)
        codes = []
        for stage, project_in, project_out in zip(self.stages, self.project_in, self.project_out, strict=True):
            index = stage(project_in(residual))
            residual = residual - project_out(stage.vectors[index])
            codes.append(index)
        return torch.stack(codes, 1).reshape(z.shape[0], -1, len(codes)).transpose(1, 2)


class _Decoder(nn.Module):
    """codes [B, n_q, F] (any n_q) -> audio [B, 1, F * hop] without the scale (ResidualQuantizer.decode)."""

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        quantizer, size = codec.quantizer, codec.codebook_size
        with torch.no_grad():
            tables = [
                quantizer.project_out[i](codebook.decode(torch.arange(size))).float()
                for i, codebook in enumerate(quantizer.codebooks)
            ]
        self.register_buffer("table", torch.cat(tables))  # [num_codebooks * K, dim]: stage i at rows i K ...
        self.size, self.decoder = size, codec.decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(codes.shape[1], device=codes.device) * self.size
        vectors = self.table[codes + offsets[:, None]]  # [B, n_q, F, dim]
        return self.decoder(vectors.sum(1).transpose(1, 2))


class _PaddedConv(nn.Module):
    """ndvq's Conv1d for inputs whose length is a multiple of its stride, which its padding then does not
    depend on: the same padding and convolution, as fixed operations."""

    def __init__(self, conv: Conv1d) -> None:
        super().__init__()
        right = 0 if conv.causal else conv.padding // 2
        self.conv, self.pads = conv.conv, (conv.padding - right, right)
        self.mode = "constant" if conv.causal else "reflect"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pads, mode=self.mode))


class _InverseSTFTConvolution(nn.Module):
    """InverseSTFT in operations ONNX has: each frame's windowed inverse real DFT, overlap-added, is a transposed
    convolution (stride hop) of the real and imaginary parts with a fixed kernel of cosines and sines."""

    def __init__(self, synthesis: InverseSTFT) -> None:
        super().__init__()
        n_fft, self.hop = synthesis.n_fft, synthesis.hop_length
        bins = n_fft // 2 + 1
        angle = 2 * math.pi * torch.outer(torch.arange(bins), torch.arange(n_fft)).double() / n_fft
        count = torch.full((bins, 1), 2.0, dtype=torch.float64)  # bins 1 .. n_fft/2 - 1 stand for two (+-f)
        count[0] = count[-1] = 1.0
        window = synthesis.window.double()
        kernel = torch.cat([count * torch.cos(angle), -count * torch.sin(angle)]) * window
        self.register_buffer("kernel", kernel.float()[:, None])  # [2 bins, 1, n_fft]
        self.register_buffer("envelope_kernel", window.square().float()[None, None])  # [1, 1, n_fft]
        self.trim = ((n_fft - self.hop) // 2, n_fft - self.hop - (n_fft - self.hop) // 2)

    def forward(self, log_magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        parts = torch.cat(polar(log_magnitude, phase), dim=1)
        wav = F.conv_transpose1d(parts, self.kernel, stride=self.hop)
        envelope = F.conv_transpose1d(torch.ones_like(parts[:1, :1]), self.envelope_kernel, stride=self.hop)
        left, right = self.trim
        return wav[..., left:-right] * torch.reciprocal(envelope[..., left:-right].clamp(min=1e-8))


def _fixed_padding(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Conv1d):
            setattr(module, name, _PaddedConv(child))
        elif isinstance(child, InverseSTFT):
            setattr(module, name, _InverseSTFTConvolution(child))
        else:
            _fixed_padding(child)


def exportable(codec: Codec) -> Codec:
    """A copy of the codec in eval mode with weight norm folded into plain weights (computed once) and
    fixed convolution padding (see _PaddedConv).

    A new instance, not a deepcopy: a copied parametrized module shares its class with the original, and
    removing the parametrization from the copy would remove it from the original too.
    """
    with torch.random.fork_rng(devices=[]):
        model = Codec(codec.config).eval()
    source = {**dict(codec.named_parameters()), **dict(codec.named_buffers())}
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensor.copy_(source[name])  # every buffer, the derived (not saved) NDVQ codebooks included
    for module in [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    _fixed_padding(model)
    return model


def _export(module: nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str], axes: tuple) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: the shapes it fixes are the same for every valid input
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes={names[0]: axes[0], names[1]: axes[1]},
        )


def export_onnx(codec: Codec, out_dir: str | Path, bandwidths: list[float] | None = None) -> list[Path]:
    """Write encoder-<kbps>kbps.onnx per bandwidth (default: all the model's), decoder.onnx and onnx.json
    into out_dir; return their paths."""
    onnx = require("onnx")
    bandwidths = list(codec.bandwidths if bandwidths is None else bandwidths)
    stages = [codec.stages(bandwidth) for bandwidth in bandwidths]
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NdvqError(f"{out_dir}: cannot create ({error.strerror or error})") from None
    # Built in a hidden folder inside out_dir and moved in only when all are written and checked: a failure
    # or an interruption leaves no partial graph behind.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as building:
        files = _write_graphs(onnx, codec, Path(building), bandwidths, stages)
        for name in files:
            os.replace(Path(building) / name, out_dir / name)
    return [out_dir / name for name in files]


def _write_graphs(onnx: Any, codec: Codec, folder: Path, bandwidths: list[float], stages: list[int]) -> list[str]:
    """Export and check the graphs into folder, then write the manifest; return the file names, manifest last."""
    model, hop = exportable(codec), codec.hop_length
    frames = 2 * MIN_FRAMES + 3
    audio = torch.zeros(2, 1, frames * hop).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    encoders, paths = [], []
    for bandwidth, n_q in zip(bandwidths, stages, strict=True):
        path = folder / f"encoder-{bandwidth:g}kbps.onnx"
        axes = ({0: "batch", 2: "samples"}, {0: "batch", 2: "frames"})
        _export(_Encoder(model, n_q).eval(), audio, path, ("audio", "codes"), axes)
        encoders.append({"file": path.name, "bandwidth": bandwidth, "n_q": n_q})
        paths.append(path)
    codes = torch.randint(codec.codebook_size, (2, codec.num_codebooks, frames))
    path = folder / "decoder.onnx"
    axes = ({0: "batch", 1: "n_q", 2: "frames"}, {0: "batch", 2: "samples"})
    _export(_Decoder(model).eval(), codes, path, ("codes", "audio"), axes)
    paths.append(path)
    for path in paths:
        onnx.checker.check_model(str(path))
    manifest = {
        "format": "ndvq-onnx",
        "model_id": codec.identity().hex(),
        "sample_rate": codec.sample_rate,
        "hop_length": hop,
        "causal": codec.config.causal,
        "opset": OPSET,
        "min_frames": 1 if codec.config.causal else MIN_FRAMES,
        "input": "audio [B, 1, T] float32 divided by the RMS scale, zero-padded to T a multiple of hop_length",
        "encoders": encoders,
        "decoder": {"file": path.name, "n_q": [1, codec.num_codebooks], "output": "audio [B, 1, F * hop] / scale"},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return [*(path.name for path in paths), MANIFEST]
