"""A high-pass filter before the encoder: what it changes, per voice, in the codec's quality.

    python benchmarks/highpass.py MANIFEST [--model speech-16k] [-b 6] [--cutoff 70] [--remove-mean] [--every 2]
        [--threads 2]

Every --every-th file of the manifest is compressed as `ndvq compress` does by default and decompressed, once
as it is and once after a Butterworth high-pass (--order, --cutoff Hz, applied forwards only, as an encoder
would in a stream), both decodes scored against the original file. Opus filters its input so before coding
speech; recordings with rumble or hum under 100 Hz spend the codec's bits on what PESQ does not hear. Printed:
PESQ-wb and STOI of both and their paired difference (filtered minus plain, 95% interval), over all files,
per voice (the first folder below the one the files share, benchmarks/paired.py --by-folder) and with the
voices weighted equally. The decoder and the file format do not change; the codec does not filter by itself.
"""

import argparse
import math

import numpy as np
from paired import interval, print_by_folder  # benchmarks/paired.py, beside this script
import scipy.signal
import torch

from ndvq import Codec, compress, decompress
from ndvq.audio import read_audio
from ndvq.eval.metrics import score
from ndvq.manifest import read_manifest

METRICS = ("pesq_wb", "stoi")


def coded_scores(codec: Codec, wav: np.ndarray, source: np.ndarray, rate: int, bandwidth: float) -> dict:
    """Scores against `wav` [C, T] of `source` [C, T] through compress and decompress."""
    decoded, _ = decompress(compress(codec, source, rate, bandwidth), codec)
    return score(wav, decoded[:, : wav.shape[1]], rate, metrics=METRICS).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--model", default="speech-16k")
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0)
    parser.add_argument("--cutoff", type=float, default=70.0, help="Hz")
    parser.add_argument("--order", type=int, default=2)
    parser.add_argument("--remove-mean", action="store_true", help="subtract each file's mean before filtering")
    parser.add_argument("--every", type=int, default=2, help="take every N-th file of the manifest")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    files = [str(path) for path, _ in read_manifest(args.manifest)][:: args.every]
    scores: dict[str, dict[str, tuple[float, float]]] = {metric: {} for metric in METRICS}  # file -> (plain, high)
    for file in files:
        wav, rate = read_audio(file)
        sos = scipy.signal.butter(args.order, args.cutoff, "highpass", fs=rate, output="sos")
        source = wav - wav.mean(axis=-1, keepdims=True) if args.remove_mean else wav  # no step at the start
        filtered = scipy.signal.sosfilt(sos, source, axis=-1).astype(np.float32)
        plain = coded_scores(codec, wav, wav, rate, args.bandwidth)
        high = coded_scores(codec, wav, filtered, rate, args.bandwidth)
        for metric in METRICS:
            if metric in plain and metric in high and not math.isnan(plain[metric] + high[metric]):
                scores[metric][file] = plain[metric], high[metric]
    print(
        f"model {args.model}, {args.bandwidth:g} kbps as compress codes by default, {len(files)} files of "
        f"{args.manifest}; high-pass: Butterworth order {args.order} at {args.cutoff:g} Hz"
        + (", each file's mean removed first" if args.remove_mean else "")
    )
    for metric in METRICS:
        plain, high = np.mean(list(scores[metric].values()), axis=0)
        differences = {file: filtered - unfiltered for file, (unfiltered, filtered) in scores[metric].items()}
        mean, half, n = interval(list(differences.values()))
        print(f"{metric}: plain {plain:.3f}, filtered {high:.3f}, filtered minus plain {mean:+.3f} +- {half:.3f} ({n})")
        print_by_folder(differences, "  ")


if __name__ == "__main__":
    main()
