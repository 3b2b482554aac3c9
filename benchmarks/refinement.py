"""Encoder refinement (`ndvq compress --refine STEPS`): quality and encoding time against the number of steps.

    python benchmarks/refinement.py MANIFEST [--model speech-16k] [--files 12] [-b 1.5 6] [--steps 0 25 50 100 200]
        [--threads 1] [--plot docs/refinement-steps.png] [--entropy]

For files taken at equal steps through a manifest (those of 1 s or more), each bitrate and each step count: the
file coded through `ndvq.compress` (bit-packed, so that only the codes differ) and decoded, scored against the
input as `ndvq eval` scores NDVQ (PESQ-wb, STOI, mel distance), and the encoding time as a real-time factor
(seconds of compute per second of audio). Prints the means; --plot draws PESQ-wb and STOI against the steps.
With --entropy the files are entropy-coded instead (the model's tables and rate-aware assignment, as `ndvq
compress` does by default), and the kbps in the file tell what refinement costs in bits.
"""

import argparse
from pathlib import Path
import time

import numpy as np
import torch

import ndvq
from ndvq import Codec
from ndvq.audio import read_audio
from ndvq.eval.metrics import score
from ndvq.manifest import read_manifest
from ndvq.tokens import spread

METRICS = ("pesq_wb", "stoi", "mel_distance")
COLUMNS = (*METRICS, "encode_rtf", "kbps")


Key = tuple[float, int]  # kbps nominal, steps


def plot(means: dict[Key, dict[str, float]], bitrates: list[float], steps: list[int], entropy: bool, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, metric in zip(axes, ("pesq_wb", "stoi"), strict=True):
        for bitrate in bitrates:
            label = f"{bitrate:g} kbps" + (", entropy-coded" if entropy else "")
            axis.plot(steps, [means[bitrate, s][metric] for s in steps], marker="o", label=label)
        axis.set_xlabel("refinement steps")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest (path<TAB>seconds)")
    parser.add_argument("--model", default="speech-16k", help="shipped model name or model directory")
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("-b", "--bandwidth", type=float, nargs="+", default=[1.5, 6.0], help="kbps")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 25, 50, 100, 200])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", type=Path, help="PNG to draw")
    parser.add_argument("--entropy", action="store_true", help="entropy-code the files instead of bit-packing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    files = spread([path for path, seconds in read_manifest(args.manifest) if seconds >= 1.0], args.files)
    rows: dict[Key, list[dict[str, float]]] = {}
    for path in files:
        wav, rate = read_audio(path)
        duration = wav.shape[1] / rate
        for bitrate in args.bandwidth:
            for steps in args.steps:
                start = time.perf_counter()
                data = ndvq.compress(codec, wav, rate, bitrate, entropy=args.entropy, refine_steps=steps)
                seconds = time.perf_counter() - start
                decoded, _ = ndvq.decompress(data, codec)
                values = score(wav, decoded, rate, METRICS, aligned=True).values
                values.update(encode_rtf=seconds / duration, kbps=len(data) * 8 / duration / 1000)
                rows.setdefault((bitrate, steps), []).append(values)
    print(f"{args.model}, {len(files)} files of {args.manifest}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'kbps':>5} {'coding':>11} {'steps':>5} " + " ".join(f"{m:>12}" for m in COLUMNS))
    means = {}
    coding = "entropy" if args.entropy else "bit-packed"
    for bitrate, steps in ((b, s) for b in args.bandwidth for s in args.steps):
        values = rows[bitrate, steps]
        means[bitrate, steps] = {m: float(np.nanmean([v.get(m, np.nan) for v in values])) for m in COLUMNS}
        columns = " ".join(f"{means[bitrate, steps][m]:12.3f}" for m in COLUMNS)
        print(f"{bitrate:5g} {coding:>11} {steps:5d} {columns}")
    if args.plot:
        plot(means, args.bandwidth, args.steps, args.entropy, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
