"""Can the frame-rate decoder's phase be mended without training? Two tries, each scored per file against the plain
decode of the same codes or the same refinement.

    python benchmarks/decoder_phase.py MANIFEST [--model speech-16k] [--files 16] [-b 6] [--iterations 2 8 32]
        [--weights 1 4] [--steps 100]

Griffin-Lim at decode time: the codes of a 3-step refinement (`ndvq compress`'s default) are decoded to the
decoder's log-magnitude and phase (ISTFTDecoder.spectrum); each iteration overlap-adds the spectrum, analyses the
result with the decoder's window and hop, and keeps its phase with the decoder's magnitude (fast Griffin-Lim,
momentum 0.99). With the magnitude right, a consistent phase should sound at least as good.

Refinement towards the waveform: `--steps` steps of refinement (ndvq.refine's step rule) against its objective
plus W x a complex-STFT distance (L1 of the complex spectra at windows 256, 512 and 1024, each over the input's
mean magnitude), against the objective alone at as many steps. If the decoder can make a better phase from some
latent, this finds it.

Files are decoded in one window (under 10 s, as `ndvq decompress` does them). Scored as `ndvq eval` scores
(ndvq.eval.metrics); a metric's mean is over the files it scores in every row.
"""

import argparse
from pathlib import Path

import numpy as np
from paired import interval  # benchmarks/paired.py, beside this script
import soundfile as sf
import torch

from ndvq import Codec
from ndvq.eval.metrics import score
from ndvq.manifest import read_manifest
from ndvq.modules import spectral
from ndvq.modules.istft import LOG_MAGNITUDE_MAX, ISTFTDecoder, overlap_add, polar
from ndvq.refine import RefinementObjective, descend, learning_rate
from ndvq.tokens import spread

METRICS = ("pesq_wb", "stoi")
COMPLEX_WINDOWS = [torch.hann_window(n_fft) for n_fft in (256, 512, 1024)]  # hop n_fft / 4


def griffin_lim(
    decoder: ISTFTDecoder, log_magnitude: torch.Tensor, phase: torch.Tensor, iterations: int
) -> torch.Tensor:
    """The decoder's spectrum [B, bins, F] -> wav [B, 1, F * hop] after `iterations` of fast Griffin-Lim."""
    synthesis = decoder.synthesis
    n_fft, hop, window = synthesis.n_fft, synthesis.hop_length, synthesis.window
    start = (n_fft - hop) // 2  # overlap_add's trim: frame f is centred on samples [f * hop, (f + 1) * hop)
    magnitude = torch.exp(log_magnitude.clamp(max=LOG_MAGNITUDE_MAX))
    spectrum = previous = torch.complex(*polar(log_magnitude, phase))
    for _ in range(iterations):
        wav = overlap_add(torch.fft.irfft(spectrum, n=n_fft, dim=1, norm="forward"), window, hop)
        frames = torch.nn.functional.pad(wav, (start, n_fft - hop - start)).unfold(-1, n_fft, hop)
        analysed = torch.fft.rfft(frames[:, : spectrum.shape[-1]] * window, dim=-1, norm="forward").transpose(1, 2)
        projected = magnitude * torch.exp(1j * analysed.angle())
        spectrum, previous = projected + 0.99 * (projected - previous), projected
    return overlap_add(torch.fft.irfft(previous, n=n_fft, dim=1, norm="forward"), window, hop)[:, None]


def complex_distance(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance of the complex STFTs at COMPLEX_WINDOWS, each over the target's mean magnitude:
    waveforms [1, 1, T] -> scalar."""
    total = estimate.new_zeros(())
    for window in COMPLEX_WINDOWS:
        ours, theirs = spectral.stft(estimate, window), spectral.stft(target, window)
        total = total + (ours - theirs).abs().mean() / theirs.abs().mean().clamp_min(1e-8)
    return total / len(COMPLEX_WINDOWS)


def refined_decode(codec: Codec, x: torch.Tensor, n_q: int, steps: int, weight: float) -> torch.Tensor:
    """x [1, 1, T] -> the decode [T] of its codes after `steps` steps against the objective + weight x
    complex_distance."""
    with torch.no_grad():
        latent, scale = codec.latent(x)
    target = x / scale
    objective = RefinementObjective(codec.sample_rate).towards(target)
    latent.requires_grad_(True)
    for step in range(steps):
        estimate = codec.decode_straight_through(latent, n_q)[..., : x.shape[-1]]
        loss = objective(estimate) + (weight * complex_distance(estimate, target) if weight else 0.0)
        (gradient,) = torch.autograd.grad(loss, [latent])
        descend(latent, gradient, learning_rate(step, steps))
    with torch.no_grad():
        codes = codec.quantizer.encode(latent.detach(), n_q)
        return (codec.decoder(codec.quantizer.decode(codes)) * scale)[0, 0, : x.shape[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest (path<TAB>seconds) of 16 kHz files")
    parser.add_argument("--model", default="speech-16k", help="shipped model name or model directory")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--iterations", type=int, nargs="+", default=[2, 8, 32], help="Griffin-Lim iterations")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 4.0], help="complex-STFT loss weights")
    parser.add_argument("--steps", type=int, default=100, help="refinement steps of the second try")
    args = parser.parse_args()
    torch.set_num_threads(1)
    codec = Codec.load(args.model).eval()
    if not isinstance(codec.decoder, ISTFTDecoder):
        raise SystemExit(f"{args.model}: not a frame-rate (istft) decoder")
    n_q = codec.stages(args.bandwidth)
    rows = ["3 steps", *(f"3 steps + Griffin-Lim {k}" for k in args.iterations)]
    rows += [f"{args.steps} steps", *(f"{args.steps} steps + {w:g} x complex STFT" for w in args.weights)]
    scores: dict[str, dict[str, list[float]]] = {metric: {row: [] for row in rows} for metric in METRICS}
    files = spread([path for path, seconds in read_manifest(args.manifest) if 1.0 <= seconds < 10.0], args.files)
    for path in files:
        wav, rate = sf.read(path, dtype="float32")
        if rate != codec.sample_rate or wav.ndim != 1:
            raise SystemExit(f"{path}: expected mono {codec.sample_rate} Hz")
        x = torch.from_numpy(wav)[None, None]
        codes, scale = codec.encode(x, args.bandwidth, refine_steps=3)
        with torch.no_grad():
            spectrum = codec.decoder.spectrum(codec.quantizer.decode(codes))
            signals = {"3 steps": codec.decoder.synthesis(*spectrum) * scale}
            for k in args.iterations:
                signals[f"3 steps + Griffin-Lim {k}"] = griffin_lim(codec.decoder, *spectrum, k) * scale
        signals = {name: signal[0, 0, : len(wav)] for name, signal in signals.items()}
        signals[f"{args.steps} steps"] = refined_decode(codec, x, n_q, args.steps, 0.0)
        for w in args.weights:
            signals[f"{args.steps} steps + {w:g} x complex STFT"] = refined_decode(codec, x, n_q, args.steps, w)
        results = {name: score(wav, signal.numpy(), rate, METRICS, aligned=True) for name, signal in signals.items()}
        for metric in METRICS:
            if all(metric in result.values for result in results.values()):  # the same files in every row
                for name, result in results.items():
                    scores[metric][name].append(result.values[metric])
        print(path.name, " ".join(f"{results[row].values.get('pesq_wb', np.nan):.3f}" for row in rows), flush=True)
    print(f"{args.model} at {args.bandwidth:g} kbps, {len(files)} files of {args.manifest}")
    print(f"{'decode':34s} {'pesq_wb':>8s} {'paired':>16s} {'stoi':>6s}")
    for row in rows:
        base = "3 steps" if row.startswith("3 steps") else f"{args.steps} steps"
        values, reference = (np.array(scores["pesq_wb"][name]) for name in (row, base))
        mean, half, _ = interval((values - reference).tolist())
        stoi = np.mean(scores["stoi"][row]) if scores["stoi"][row] else np.nan
        print(f"{row:34s} {values.mean():8.3f} {mean:+7.3f} ± {half:5.3f} {stoi:6.3f}")


if __name__ == "__main__":
    main()
