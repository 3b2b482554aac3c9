"""Which part of a decode limits PESQ-wb and STOI: its STFT magnitude or its phase?

    python benchmarks/magnitude_phase.py MANIFEST [--model speech-16k] [--files 20] [-b 6] [--phase-bands HZ ...]

For files taken at equal steps through a manifest (those of 1 s or more), the decoded signal, the
decoder's output on the encoder's latent before quantization (what any number of stages could reach at
best), and three hybrids, each rebuilt from an STFT (512-sample Hann window, hop 128):
  decoded magnitude + original phase   what the decoded magnitude alone costs;
  original magnitude + decoded phase   what the decoded phase alone costs;
  original magnitude + Griffin-Lim     the cost of any phase consistent with the exact magnitude
                                       (60 iterations from random phase): the floor of the phase cost.
With `--phase-bands HZ ...`, two more hybrids per frequency, the decoded magnitude with the original phase
under HZ (the decoded phase above it) and over HZ: where in the spectrum the decoded phase costs.
A hybrid far above the decode names the part that holds it back. Scored as `ndvq eval` scores (ndvq.eval.metrics):
a metric's mean is over the files it scores in every row (PESQ finds no speech in some short files; STOI needs
about 0.4 s of it).
"""

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ndvq import Codec
from ndvq.eval.metrics import score
from ndvq.manifest import read_manifest
from ndvq.modules import spectral
from ndvq.tokens import spread

METRICS = ("pesq_wb", "stoi")
WINDOW = torch.hann_window(512)  # hop 128, as every STFT of ndvq.modules.spectral


def stft(wav: torch.Tensor) -> torch.Tensor:
    return spectral.stft(wav, WINDOW)[0]  # [T] -> [bins, frames]


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    return torch.istft(spec, len(WINDOW), len(WINDOW) // 4, window=WINDOW, length=length)


def griffin_lim(magnitude: torch.Tensor, length: int, iterations: int = 60) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    phase = 2 * torch.pi * torch.rand(magnitude.shape, generator=generator)
    spec = magnitude * torch.exp(1j * phase)
    for _ in range(iterations):
        spec = magnitude * torch.exp(1j * stft(istft(spec, length)).angle())
    return istft(spec, length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest (path<TAB>seconds) of 16 kHz files")
    parser.add_argument("--model", default="speech-16k", help="shipped model name or model directory")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--phase-bands", type=float, nargs="+", default=[], metavar="HZ")
    args = parser.parse_args()
    torch.set_num_threads(1)
    codec = Codec.load(args.model).eval()
    scores: dict[str, dict[str, list[float]]] = {metric: {} for metric in METRICS}
    names: list[str] = []
    files = spread([path for path, seconds in read_manifest(args.manifest) if seconds >= 1.0], args.files)
    for path in files:
        wav, rate = sf.read(path, dtype="float32")
        if rate != codec.sample_rate or wav.ndim != 1:
            raise SystemExit(f"{path}: expected mono {codec.sample_rate} Hz")
        x = torch.from_numpy(wav)
        codes, scale = codec.encode(x[None, None], args.bandwidth)
        y = codec.decode(codes, scale)[0, 0, : len(x)]
        with torch.no_grad():
            latent, scale = codec.latent(x[None, None])
            unquantized = (codec.decoder(latent) * scale)[0, 0, : len(x)]
        original, decoded = stft(x), stft(y)
        variants = {
            "decoded": y,
            "decoded from the unquantized latent": unquantized,
            "decoded magnitude + original phase": istft(decoded.abs() * torch.exp(1j * original.angle()), len(x)),
            "original magnitude + decoded phase": istft(original.abs() * torch.exp(1j * decoded.angle()), len(x)),
            "original magnitude + Griffin-Lim": griffin_lim(original.abs(), len(x)),
        }
        bin_hz = torch.fft.rfftfreq(len(WINDOW), 1 / rate)[:, None]  # [bins, 1]
        for hz in args.phase_bands:
            for side, under in (("under", bin_hz < hz), ("over", bin_hz >= hz)):
                phase = torch.where(under, original.angle(), decoded.angle())
                variants[f"original phase {side} {hz:g} Hz"] = istft(decoded.abs() * torch.exp(1j * phase), len(x))
        names = list(variants)
        results = {name: score(wav, signal.numpy(), rate, METRICS, aligned=True) for name, signal in variants.items()}
        for metric in METRICS:
            if all(metric in result.values for result in results.values()):  # the same files in every row
                for name, result in results.items():
                    scores[metric].setdefault(name, []).append(result.values[metric])
    counts = ", ".join(f"{metric} on {len(next(iter(scores[metric].values()), []))}" for metric in METRICS)
    print(f"{args.model} at {args.bandwidth:g} kbps, {len(files)} files of {args.manifest} (scored: {counts})")
    print(f"{'signal':38s} {'pesq_wb':>8s} {'stoi':>6s}")
    for name in names:
        means = [np.mean(scores[metric].get(name, [np.nan])) for metric in METRICS]
        print(f"{name:38s} {means[0]:8.3f} {means[1]:6.3f}")


if __name__ == "__main__":
    main()
