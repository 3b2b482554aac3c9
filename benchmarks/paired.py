"""Paired differences between two systems of one `ndvq eval` run, file by file, with 95% intervals.

    python benchmarks/paired.py EVAL_DIR B A [--metrics pesq_wb stoi mel_distance]
    python benchmarks/paired.py EVAL_DIR ndvq@1.5 codec2@3200     # one bitrate of each, e.g. against a target

For every bitrate both systems were scored at (or, for LABEL@BITRATE, those two): the mean of B's score
minus A's on the same files, and the half-width of its 95% interval (normal approximation, 1.96
standard errors of the paired differences). An interval that excludes zero is a difference these files
can tell apart.

    python benchmarks/paired.py EVAL_DIR B A --by-folder   # also per voice of the demo corpus

--by-folder also gives the difference within each first folder below the one all files share (in the demo
corpus, audio/VOICE/...: per voice) and the mean of those folders' means, each folder weighted equally, with
its interval (1.96 x the square root of the sum over folders of variance / files, over the number of folders):
a test split where one voice has most of the files is then also read voice by voice.
"""

import argparse
from collections import defaultdict
import csv
import math
import os
from pathlib import Path


def differences(rows: list[dict[str, str]], b: str, a: str, metric: str) -> dict[str, dict[str, float]]:
    """bitrate -> file -> b's score minus a's, over the files both scored at that bitrate; with labels
    LABEL@BITRATE, one entry ("B_BITRATE/A_BITRATE") over the files both scored at those bitrates."""
    (b, b_rate), (a, a_rate) = (_label(x) for x in (b, a))
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row[metric] in ("", "nan"):
            continue
        for which, label, rate in (("b", b, b_rate), ("a", a, a_rate)):
            if row["codec"] == label and rate in (None, row["bitrate"]):
                bitrate = f"{b_rate}/{a_rate}" if b_rate or a_rate else row["bitrate"]
                scores[bitrate, row["file"]][which] = float(row[metric])
    result: dict[str, dict[str, float]] = defaultdict(dict)
    for (bitrate, file), pair in scores.items():
        if len(pair) == 2:
            result[bitrate][file] = pair["b"] - pair["a"]
    return result


def by_folder(by_file: dict[str, float]) -> tuple[Path, dict[str, list[float]]]:
    """file -> difference, grouped by each file's first folder below the folder all files share: (that folder,
    group name -> differences). Files directly in the shared folder form the group "."."""
    paths = [Path(file) for file in by_file]
    root = Path(os.path.commonpath([path.parent for path in paths]))
    groups: dict[str, list[float]] = defaultdict(list)
    for path, value in zip(paths, by_file.values(), strict=True):
        parts = path.relative_to(root).parts
        groups[parts[0] if len(parts) > 1 else "."].append(value)
    return root, dict(groups)


def equally_weighted(groups: dict[str, list[float]]) -> tuple[float, float, int]:
    """(mean of the groups' means, the half-width of its 95% interval, the number of groups): each group's
    variance of its mean added up, nan where a group has a single value."""
    means, variances = [], []
    for values in groups.values():
        mean, half, n = interval(values)
        means.append(mean)
        variances.append((half / 1.96) ** 2)
    return sum(means) / len(means), 1.96 * math.sqrt(sum(variances)) / len(means), len(means)


def print_by_folder(by_file: dict[str, float], indent: str) -> None:
    """Print the differences file -> value per folder (`by_folder`) and the folders weighted equally."""
    root, groups = by_folder(by_file)
    print(f"{indent}by folder below {root}:")
    for name, values in sorted(groups.items()):
        mean, half, n = interval(values)
        print(f"{indent}  {name:<24} {mean:+.3f} +- {half:.3f} ({n} files)")
    mean, half, n = equally_weighted(groups)
    print(f"{indent}  {'folders weighted equally':<24} {mean:+.3f} +- {half:.3f} ({n} folders)")


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
    parser.add_argument("--by-folder", action="store_true", help="also per first folder below the shared one")
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
        unit = "" if "@" in args.a else " kbps"  # a pair's two bitrates may be Codec2 modes
        for bitrate, by_file in sorted(differences(rows, args.b, args.a, metric).items(), key=lambda i: _order(i[0])):
            mean, half, n = interval(list(by_file.values()))
            print(f"{metric:>14} at {bitrate:>5}{unit}: {mean:+.3f} +- {half:.3f} ({n} files)")
            if args.by_folder:
                print_by_folder(by_file, " " * 16)


if __name__ == "__main__":
    main()
