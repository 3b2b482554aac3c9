"""Does a pitch post-filter on the decoded audio lift PESQ-wb? (It did not: docs/ndvq-that-learns.md, session 21.)

    python benchmarks/pitch_postfilter.py MANIFEST [--model speech-16k] [-b 6] [--gain 0.3 0.5]

PESQ-wb holds against the shipped decoder the energy it adds between a voice's harmonics (session 15).
Speech codecs attenuate it at the decoder with a long-term (pitch) post-filter, as AMR-WB and Opus do:
per 5 ms subframe, the lag T in 2 to 20 ms (50 to 500 Hz) of highest normalised correlation r over the
last 20 ms; where r >= 0.5 the subframe becomes (x[n] + g x[n - T]) / (1 + g) with g = gain x r, a comb
whose notches fall between the harmonics (causal), or with --symmetric (x[n] + g/2 (x[n - T] + x[n + T]))
/ (1 + g) (zero-phase, 20 ms of look-ahead). Every file of the manifest is coded once at -b kbps and each
filtered decode is scored against the input; prints the means and the paired difference from the raw
decode (mean +- 95% half-width).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from ndvq import Codec
from ndvq.audio import mono_at, read_audio
from ndvq.eval.metrics import score
from ndvq.manifest import read_manifest

SUBFRAME, WINDOW, MIN_LAG, MAX_LAG = 80, 320, 32, 320  # samples at 16 kHz
VOICING = 0.5  # normalised correlation under which a subframe is left alone


def pitch_postfilter(x: np.ndarray, gain: float, symmetric: bool = False) -> np.ndarray:
    """x [T] float64 at 16 kHz -> the filtered signal [T]."""
    margin = MAX_LAG + WINDOW
    padded = np.concatenate([np.zeros(margin), x, np.zeros(margin)])
    y = x.copy()
    for start in range(0, len(x), SUBFRAME):
        end = min(start + SUBFRAME, len(x))
        analysis = margin + end - WINDOW + (SUBFRAME // 2 if symmetric else 0)
        segment = padded[analysis : analysis + WINDOW]
        # row i: the window MIN_LAG + i samples earlier
        lagged = np.lib.stride_tricks.sliding_window_view(
            padded[analysis - MAX_LAG : analysis - MIN_LAG + WINDOW], WINDOW
        )
        lagged = lagged[::-1]
        correlation = lagged @ segment
        energy = np.einsum("ij,ij->i", lagged, lagged) * (segment @ segment) + 1e-18
        r = np.where(correlation > 0, correlation / np.sqrt(energy), 0.0)
        best = int(np.argmax(r))
        if r[best] < VOICING:
            continue
        g, lag = gain * min(float(r[best]), 1.0), MIN_LAG + best
        index = np.arange(start, end) + margin
        echo = 0.5 * (padded[index - lag] + padded[index + lag]) if symmetric else padded[index - lag]
        y[start:end] = (x[start:end] + g * echo) / (1 + g)
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest (path<TAB>seconds)")
    parser.add_argument("--model", default="speech-16k", help="shipped model name or model directory")
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--gain", type=float, nargs="+", default=[0.3, 0.5, 0.8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    codec = Codec.load(args.model)
    variants = {"raw": None} | {
        f"{kind} g={g:g}": (g, kind == "symmetric") for kind in ("causal", "symmetric") for g in args.gain
    }
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for path, _ in read_manifest(args.manifest):
        wav, rate = read_audio(path)
        reference = mono_at(wav, rate, codec.sample_rate)
        with torch.no_grad():
            codes, scale = codec.encode(torch.from_numpy(reference)[None, None], args.bandwidth)
            decoded = codec.decode(codes, scale, chunk_seconds=None)[0, 0, : len(reference)].numpy()
        for name, variant in variants.items():
            estimate = decoded if variant is None else pitch_postfilter(decoded.astype(np.float64), *variant)
            scores[name].append(score(reference, estimate, codec.sample_rate, ("pesq_wb", "stoi"), aligned=True).values)
    print(f"{args.model} at {args.bandwidth:g} kbps, {len(scores['raw'])} files of {args.manifest}")
    print(f"{'decode':>16} {'PESQ-wb':>8} {'STOI':>6}  PESQ-wb minus raw      STOI minus raw")
    for name, rows in scores.items():
        line = f"{name:>16}"
        differences = []
        for metric in ("pesq_wb", "stoi"):
            pairs = [
                (row[metric], raw[metric])
                for row, raw in zip(rows, scores["raw"], strict=True)
                if metric in row and metric in raw
            ]
            values = np.array(pairs)
            line += f" {values[:, 0].mean():{8 if metric == 'pesq_wb' else 6}.3f}"
            delta = values[:, 0] - values[:, 1]
            differences.append(f"{delta.mean():+.3f} +- {1.96 * delta.std(ddof=1) / np.sqrt(len(delta)):.3f}")
        print(f"{line}  {differences[0]:>16}   {differences[1]:>16}")


if __name__ == "__main__":
    main()
