"""Learning curves of training runs against CPU hours, as a PNG and a Markdown table.

    .venv/bin/python benchmarks/learning_curves.py ~/ndvq-runs/small-ndvq ~/ndvq-runs/small-rvq \
        --label NDVQ --label RVQ --out docs/learning-curves.png

Each run directory holds the `metrics.jsonl` that `ndvq train` writes: one JSON object per line with
"step". Training lines carry "cpu_hours" (cumulative CPU hours of the run); validation lines carry
keys starting with "valid/" ("valid/mel_distance_<kbps>kbps", "valid/pesq_wb_<kbps>kbps",
"valid/stoi_<kbps>kbps", "valid/usage_bits_stageN", ...) but no CPU hours: a validation line takes the
CPU hours of the nearest earlier training line (in file order) that has them.

The PNG has four panels against CPU hours (or, with `--x steps`, training steps: twins are matched in
steps, as this machine's steps per CPU-hour vary between days): valid mel distance, PESQ-wb and STOI
(one line per run for the lowest and the highest bitrate present) and the eval-mode usage of stage 1
in bits. The Markdown table on stdout has, per run, one row per validation step: step, CPU hours, mel distance at every
bitrate, PESQ-wb and STOI at the middle bitrate, stage-1 eval usage in bits.

A run warm-started (`init_from`) from another run's export counts its CPU hours and steps from 0:
`--start-hours` and `--start-steps` (once per run, like --label) add those of the run it started from,
so both share one axis;
`--from-hours` plots only what comes after that many hours (to see forks side by side).

The files are only read, so runs still being written to can be plotted; an incomplete last line is
skipped.
"""

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KBPS_KEY = re.compile(r"^valid/mel_distance_(\d+(?:\.\d+)?)kbps$")
USAGE_KEY = "valid/usage_bits_stage1"


@dataclass
class ValidPoint:
    step: int
    cpu_hours: float | None
    metrics: dict[str, float]


@dataclass
class Run:
    label: str
    path: Path
    points: list[ValidPoint] = field(default_factory=list)

    def kbps(self) -> list[str]:
        """Bitrates with a valid mel distance in any validation line, as written in the keys, ascending."""
        found = {m.group(1) for p in self.points for k in p.metrics if (m := KBPS_KEY.match(k))}
        return sorted(found, key=float)


def read_run(path: Path, label: str, start_hours: float = 0.0, start_steps: int = 0) -> Run:
    metrics_file = path / "metrics.jsonl"
    if not metrics_file.is_file():
        raise SystemExit(f"error: {metrics_file} not found")
    lines = metrics_file.read_text().splitlines()
    run = Run(label=label, path=path)
    cpu_hours: float | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # the run is writing it now
                print(f"note: {metrics_file}: incomplete last line skipped", file=sys.stderr)
                break
            raise SystemExit(f"error: {metrics_file}:{number}: {exc}") from exc
        valid = {k: float(v) for k, v in record.items() if k.startswith("valid/") and isinstance(v, (int, float))}
        if valid:
            run.points.append(ValidPoint(step=start_steps + int(record["step"]), cpu_hours=cpu_hours, metrics=valid))
        elif isinstance(record.get("cpu_hours"), (int, float)):
            cpu_hours = start_hours + float(record["cpu_hours"])
    return run


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def markdown(runs: Sequence[Run]) -> str:
    out: list[str] = []
    for run in runs:
        kbps = run.kbps()
        mid = kbps[len(kbps) // 2] if kbps else None
        header = ["step", "CPU h", *(f"mel {k} kbps" for k in kbps)]
        if mid is not None:
            header += [f"PESQ-wb {mid} kbps", f"STOI {mid} kbps"]
        header.append("stage-1 eval usage (bits)")
        out += [f"### {run.label} (`{run.path}`)", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "|".join("---:" for _ in header) + "|")
        for p in run.points:
            row = [str(p.step), fmt(p.cpu_hours)]
            row += [fmt(p.metrics.get(f"valid/mel_distance_{k}kbps")) for k in kbps]
            if mid is not None:
                row += [fmt(p.metrics.get(f"valid/pesq_wb_{mid}kbps")), fmt(p.metrics.get(f"valid/stoi_{mid}kbps"))]
            row.append(fmt(p.metrics.get(USAGE_KEY), 2))
            out.append("| " + " | ".join(row) + " |")
        if not run.points:
            out.append("| (no validation yet) |" + " |" * (len(header) - 1))
        out.append("")
    return "\n".join(out)


def series(run: Run, key: str, from_hours: float = 0.0, x: str = "hours") -> tuple[list[float], list[float]]:
    """(x, value) of one validation key: x is CPU hours (points without them are left out) or steps."""
    xs: list[float] = []
    ys: list[float] = []
    for p in run.points:
        value = p.metrics.get(key)
        if value is None or math.isnan(value):
            continue
        if x == "steps":
            xs.append(p.step)
        elif p.cpu_hours is not None and p.cpu_hours >= from_hours:
            xs.append(p.cpu_hours)
        else:
            continue
        ys.append(value)
    return xs, ys


def plot(runs: Sequence[Run], out: Path, from_hours: float = 0.0, x: str = "hours") -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    panels = [
        (axes[0, 0], "mel_distance", "valid mel distance (lower is better)"),
        (axes[0, 1], "pesq_wb", "valid PESQ-wb (higher is better)"),
        (axes[1, 0], "stoi", "valid STOI (higher is better)"),
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        kbps = run.kbps()
        ends = sorted({kbps[0], kbps[-1]}, key=float) if kbps else []
        for ax, metric, _ in panels:
            for k in ends:
                xs, ys = series(run, f"valid/{metric}_{k}kbps", from_hours, x)
                style = "-" if k == ends[0] else "--"
                ax.plot(xs, ys, style, marker="o", markersize=3, color=color, label=f"{run.label} {k} kbps")
        xs, ys = series(run, USAGE_KEY, from_hours, x)
        axes[1, 1].plot(xs, ys, "-", marker="o", markersize=3, color=color, label=run.label)
    for ax, _, title in panels:
        ax.set_title(title)
    axes[1, 1].set_title("stage-1 codebook usage, eval mode (bits)")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("CPU hours" if x == "hours" else "training steps")
    fig.suptitle("Learning curves: " + ", ".join(run.label for run in runs))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="training run directories (with metrics.jsonl)")
    parser.add_argument(
        "--label", action="append", default=[], help="name of a run, once per run in the same order (default: dir)"
    )
    parser.add_argument(
        "--start-hours", action="append", type=float, default=[], help="CPU hours before the run, once per run"
    )
    parser.add_argument(
        "--start-steps", action="append", type=int, default=[], help="steps before the run, once per run"
    )
    parser.add_argument("--from-hours", type=float, default=0.0, help="plot only from this many CPU hours on")
    parser.add_argument(
        "--x", choices=("hours", "steps"), default="hours", help="horizontal axis: CPU hours (default) or steps"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/learning-curves.png"), help="PNG to write")
    args = parser.parse_args(argv)
    for name, given in (
        ("--label", args.label),
        ("--start-hours", args.start_hours),
        ("--start-steps", args.start_steps),
    ):
        if given and len(given) != len(args.runs):
            parser.error(f"{len(given)} {name} for {len(args.runs)} runs: give one per run or none")
    labels = args.label or [path.resolve().name for path in args.runs]
    hours = args.start_hours or [0.0] * len(args.runs)
    steps = args.start_steps or [0] * len(args.runs)
    runs = [read_run(*run) for run in zip(args.runs, labels, hours, steps, strict=True)]
    plot(runs, args.out, args.from_hours, args.x)
    print(markdown(runs))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
