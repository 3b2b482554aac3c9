"""Refinement's step rule: the library's normalised gradient descent against Adam, at equal steps.

    python benchmarks/refinement_rules.py MANIFEST [--model speech-16k] [--files 41] [-b 6] [--steps 4 25 100]
        [--threads 1]

For files taken at equal steps through a manifest (those of 1 s or more), each step count and each rule: the
file coded through `ndvq.compress` (bit-packed) with that many steps of refinement and decoded, scored as `ndvq
eval` scores NDVQ. Both rules take the library's learning rate at each step (ndvq.refine.learning_rate): `ndvq`
moves the latent by it in RMS along the gradient (ndvq.refine.descend); `adam` is torch.optim.Adam at that
learning rate, what ndvq used until session 33. Prints PESQ-wb and STOI per rule and step count, with their
paired gains over the one-pass encoder and of `ndvq` over `adam`, each with its 95% interval (1.96 standard
errors of the paired differences).
"""

import argparse
import math
from pathlib import Path

import numpy as np
from paired import interval  # benchmarks/paired.py, beside this script
import torch

import ndvq
from ndvq import Codec, refine
from ndvq.audio import read_audio
from ndvq.eval.metrics import score
from ndvq.manifest import read_manifest
from ndvq.tokens import spread

METRICS = ("pesq_wb", "stoi")


class AdamSteps:
    """A stand-in for ndvq.refine.descend: torch.optim.Adam on the latent, fresh for each refinement."""

    def __init__(self) -> None:
        self.latent: torch.Tensor | None = None
        self.optimiser: torch.optim.Adam | None = None

    def __call__(self, latent: torch.Tensor, gradient: torch.Tensor, lr: float) -> None:
        if latent is not self.latent:  # a new refinement (refine_latent makes a new tensor each time)
            self.latent, self.optimiser = latent, torch.optim.Adam([latent], lr=lr)
        self.optimiser.param_groups[0]["lr"] = lr
        latent.grad = gradient
        self.optimiser.step()
        latent.grad = None


def paired(b: list[float], a: list[float]) -> str:
    """b - a file by file, over the files both scored: mean ± 95% half-width (benchmarks/paired.py)."""
    difference = np.asarray(b) - np.asarray(a)
    mean, half, _ = interval(difference[np.isfinite(difference)].tolist())
    return f"{mean:+.3f} ± {half:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest (path<TAB>seconds)")
    parser.add_argument("--model", default="speech-16k", help="shipped model name or model directory")
    parser.add_argument("--files", type=int, default=41)
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 25, 100])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    files = spread([path for path, seconds in read_manifest(args.manifest) if seconds >= 1.0], args.files)
    rules = {"ndvq": refine.descend, "adam": AdamSteps()}
    scores: dict[tuple[str, int], dict[str, list[float]]] = {}
    try:
        for path in files:
            wav, rate = read_audio(path)
            for rule, step in rules.items():
                refine.descend = step
                for steps in [0, *args.steps]:
                    if steps == 0 and rule != "ndvq":
                        continue
                    data = ndvq.compress(codec, wav, rate, args.bandwidth, entropy=False, refine_steps=steps)
                    decoded, _ = ndvq.decompress(data, codec)
                    values = score(wav, decoded, rate, METRICS, aligned=True).values
                    for metric in METRICS:
                        scores.setdefault((rule, steps), {}).setdefault(metric, []).append(values.get(metric, math.nan))
    finally:
        refine.descend = rules["ndvq"]
    print(f"{args.model}, {len(files)} files of {args.manifest}, {args.bandwidth:g} kbps bit-packed")
    one_pass = scores["ndvq", 0]
    print(f"one-pass: PESQ-wb {np.nanmean(one_pass['pesq_wb']):.3f}, STOI {np.nanmean(one_pass['stoi']):.3f}")
    print("| steps | rule | PESQ-wb | over one-pass | STOI | over one-pass |")
    print("|---|---|---|---|---|---|")
    for steps in args.steps:
        for rule in rules:
            ours = scores[rule, steps]
            cells = [f"{np.nanmean(ours[m]):.3f} | {paired(ours[m], one_pass[m])}" for m in METRICS]
            print(f"| {steps} | {rule} | " + " | ".join(cells) + " |")
    for steps in args.steps:
        gains = ", ".join(f"{m} {paired(scores['ndvq', steps][m], scores['adam', steps][m])}" for m in METRICS)
        print(f"ndvq - adam at {steps} steps: {gains}")


if __name__ == "__main__":
    main()
