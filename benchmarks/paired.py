"""Paired differences between two systems of one `ndvq eval` run, file by file, with 95% intervals.

    python benchmarks/paired.py EVAL_DIR B A [--metrics pesq_wb stoi mel_distance]
    python benchmarks/paired.py EVAL_DIR ndvq@1.5 codec2@3200     # one bitrate of each, e.g. against a target

For every bitrate both systems were scored at (or, for LABEL@BITRATE, those two): the mean of B's score
minus A's on the same files, and the half-width of its 95% interval (normal approximation, 1.96
standard errors of the paired differences). An interval that excludes zero is a difference these files
can tell apart.
"""

import argparse
from collections import defaultdict
import csv
import math
from pathlib import Path


def paired(rows: list[dict[str, str]], b: str, a: str, metric: str) -> dict[str, tuple[float, float, int]]:
    """bitrate -> (mean of b - a, 95% half-width, files) over the files both scored at that bitrate; with
    labels LABEL@BITRATE, one entry ("B_BITRATE/A_BITRATE") over the files both scored at those bitrates."""
    (b, b_rate), (a, a_rate) = (_label(x) for x in (b, a))
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row[metric] in ("", "nan"):
            continue
        for which, label, rate in (("b", b, b_rate), ("a", a, a_rate)):
            if row["codec"] == label and rate in (None, row["bitrate"]):
                bitrate = f"{b_rate}/{a_rate}" if b_rate or a_rate else row["bitrate"]
                scores[bitrate, row["file"]][which] = float(row[metric])
    differences: dict[str, list[float]] = defaultdict(list)
    for (bitrate, _), pair in scores.items():
        if len(pair) == 2:
            differences[bitrate].append(pair["b"] - pair["a"])
    return {bitrate: interval(values) for bitrate, values in differences.items()}


def interval(differences: list[float]) -> tuple[float, float, int]:
    """Paired differences -> (their mean, the half-width of its 95% interval, their count): 1.96 standard errors
    (normal approximation; nan for a single difference). Also used by other benchmarks that pair files."""
    n = len(differences)
    mean = sum(differences) / n
    spread = math.sqrt(sum((v - mean) ** 2 for v in differences) / (n - 1)) if n > 1 else math.nan
    return mean, 1.96 * spread / math.sqrt(n), n


def _order(bitrate: str) -> float:
    try:
        return float(bitrate.split("/")[0])
    except ValueError:  # a Codec2 mode such as 700C
        return math.inf


def _label(text: str) -> tuple[str, str | None]:
    label, _, bitrate = text.partition("@")
    return label, bitrate or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", type=Path, help="an `ndvq eval --out` folder (per_utterance.csv)")
    parser.add_argument("b", help="label of the system to measure")
    parser.add_argument("a", help="label of the system it is compared with")
    parser.add_argument("--metrics", nargs="+", default=["pesq_wb", "stoi", "mel_distance"])
    args = parser.parse_args()
    with open(args.eval_dir / "per_utterance.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if ("@" in args.a) != ("@" in args.b):
        parser.error("give a bitrate to both systems (LABEL@BITRATE) or to neither")
    labels = {row["codec"] for row in rows}
    for label in (_label(args.a)[0], _label(args.b)[0]):
        if label not in labels:
            parser.error(f"{args.eval_dir}: no system labelled {label!r} (labels: {', '.join(sorted(labels))})")
    print(f"{args.b} minus {args.a}, paired by file (mean +- 95% half-width, files)")
    for metric in args.metrics:
        results = paired(rows, args.b, args.a, metric)
        unit = "" if "@" in args.a else " kbps"  # a pair's two bitrates may be Codec2 modes
        for bitrate, (mean, half, n) in sorted(results.items(), key=lambda i: _order(i[0])):
            print(f"{metric:>14} at {bitrate:>5}{unit}: {mean:+.3f} +- {half:.3f} ({n} files)")


if __name__ == "__main__":
    main()
