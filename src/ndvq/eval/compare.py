"""`ndvq eval`: code reference audio with several codecs at several bitrates and score every pair.

Each (codec, bitrate, file) result is cached as JSON under RESULTS/cache, so an interrupted evaluation
resumes where it stopped; a cached result is redone if the model's weights (its fingerprint) changed or a
metric asked for is missing. Outputs: summary.md, summary.csv, summary.json, per_utterance.csv.
"""

import csv
from dataclasses import dataclass
import hashlib
import json
import math
import multiprocessing
import os
from pathlib import Path
import platform
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ndvq.audio import AUDIO_SUFFIXES, atomic_path, audio_files, read_audio, write_audio
from ndvq.errors import NdvqError
from ndvq.eval.metrics import METRICS, METRICS_VERSION, VISQOL_MAPPER, Scores, score
from ndvq.eval.systems import Codec2System, Coded, NdvqSystem, OpusSystem
from ndvq.manifest import read_manifest


@dataclass(frozen=True)
class SystemSpec:
    """What a worker needs to build a codec: kind ("ndvq", "opus", "codec2"), label, model, bitrates, and for
    NDVQ whether its files are entropy-coded and how many refinement steps its encoder takes."""

    kind: str
    label: str
    bitrates: tuple[str, ...]
    model: str = ""
    entropy: bool = False
    refine: int = 0

    def build(self) -> Any:
        if self.kind == "ndvq":
            return NdvqSystem(self.label, self.model, self.entropy, self.refine)
        return {"opus": OpusSystem, "codec2": Codec2System}[self.kind]()


def reference_files(source: Path, limit: int | None = None) -> list[Path]:
    """One audio file, the audio files below a folder (sorted), or those a manifest lists; the first `limit`."""
    if source.is_dir():
        files = audio_files(source)
    elif source.is_file() and source.suffix.lower() in AUDIO_SUFFIXES:
        files = [source]
    elif source.is_file():
        files = [path for path, _ in read_manifest(source)]
    else:
        raise NdvqError(f"{source}: no such audio file, folder or manifest (.tsv)")
    if not files:
        raise NdvqError(f"{source}: no audio files")
    return files[:limit]


_SYSTEMS: dict[str, Any] = {}


def _worker_init(specs: list[SystemSpec]) -> None:
    torch.set_num_threads(1)
    for spec in specs:
        _SYSTEMS[spec.label] = spec.build()


def file_key(path: Path) -> str:
    """A reference file's name in an eval directory: its stem and a hash of its absolute path."""
    return f"{path.stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"


def example_path(out_dir: Path, label: str, bitrate: str, reference: Path) -> Path:
    """Where an eval directory keeps a reference's decoded example (what `ndvq report` plays)."""
    return out_dir / "examples" / label / bitrate / f"{file_key(reference)}.flac"


def result_row(system: Any, bitrate: str, path: str, seconds: float, coded: Coded, scores: Scores) -> dict[str, Any]:
    """One file's row of the results: the system, its nominal and measured bitrate, and the scores."""
    return {
        "codec": system.label,
        "system": system.identity,
        "bitrate": bitrate,
        "nominal_kbps": system.kbps(bitrate),
        "file": path,
        "seconds": seconds,
        "bytes": coded.bytes,
        "measured_kbps": coded.bytes * 8 / seconds / 1000,
        **scores.values,
        "errors": scores.errors,
        "metrics_version": METRICS_VERSION,
    }


def _evaluate(job: tuple[str, str, str, str, tuple[str, ...], str | None]) -> dict[str, Any]:
    label, bitrate, path, cache, metrics, example = job
    system = _SYSTEMS[label]
    wav, rate = read_audio(path)
    coded = system.code(wav, rate, bitrate)
    scores = score(wav, coded.audio, rate, metrics, aligned=system.aligned)
    row = result_row(system, bitrate, path, wav.shape[1] / rate, coded, scores)
    if example:
        write_audio(example, coded.audio, rate)
    with atomic_path(cache) as temporary:
        temporary.write_text(json.dumps(row))
    return row


def evaluate(
    specs: list[SystemSpec],
    files: list[Path],
    out_dir: Path,
    metrics: tuple[str, ...] = tuple(METRICS),
    workers: int = 1,
    examples: int = 3,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score every (codec, bitrate, file); returns the per-utterance rows (cached ones included). `progress`:
    a progress bar on stderr."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise NdvqError(f"unknown metrics {unknown} (metrics: {', '.join(METRICS)})")
    identities = {}
    for spec in specs:  # fail early, in one line, on a missing tool or a bad model or bitrate
        system = spec.build()
        identities[spec.label] = system.identity
        for bitrate in spec.bitrates:
            if spec.kind == "ndvq":
                system.codec.stages(float(bitrate))
            else:
                system.kbps(bitrate)
    rows, jobs = [], []
    for spec in specs:
        for bitrate in spec.bitrates:
            for index, path in enumerate(files):
                cache = out_dir / "cache" / spec.label / bitrate / f"{file_key(path)}.json"
                if cache.is_file():
                    row = json.loads(cache.read_text())
                    # Reused only if made by the same weights and metric definitions, with every metric asked
                    # for (failed ones included).
                    if (
                        row.get("system", "") == identities[spec.label]
                        and row.get("metrics_version") == METRICS_VERSION
                        and all(m in row or m in row["errors"] for m in metrics)
                    ):
                        rows.append({**row, "codec": spec.label})  # the folder may be a copy of another label's
                        continue
                example = None
                if index < examples:
                    example = str(example_path(out_dir, spec.label, bitrate, path))
                jobs.append((spec.label, bitrate, str(path), str(cache), metrics, example))
    bar = tqdm(total=len(jobs), unit="item", desc="eval", disable=not (jobs and progress))
    if workers <= 1:
        _worker_init(specs)
        for job in jobs:
            rows.append(_evaluate(job))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_worker_init, initargs=(specs,)) as pool:
            for row in pool.imap_unordered(_evaluate, jobs):
                rows.append(row)
                bar.update()
            pool.close()  # let the workers exit on their own: terminating them can leak a semaphore
            pool.join()
    bar.close()
    return sorted(rows, key=lambda r: (r["codec"], r["nominal_kbps"], r["file"]))


def summarise(rows: list[dict[str, Any]], metrics: tuple[str, ...] = tuple(METRICS)) -> list[dict[str, Any]]:
    """Per (codec, bitrate): item count, measured bitrate, and per metric mean, 95% CI and failure count.

    The interval is mean +/- 1.96 standard errors (normal approximation).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["codec"], row["bitrate"]), []).append(row)
    summary = []
    for (codec, bitrate), items in groups.items():
        entry = {
            "codec": codec,
            "bitrate": bitrate,
            "nominal_kbps": items[0]["nominal_kbps"],
            "items": len(items),
            "measured_kbps": sum(r["bytes"] for r in items) * 8 / sum(r["seconds"] for r in items) / 1000,
        }
        for name in metrics:
            values = np.array([r[name] for r in items if name in r], dtype=np.float64)
            entry[f"{name}_failed"] = len(items) - len(values)
            entry[name] = float(values.mean()) if len(values) else None
            entry[f"{name}_ci95"] = (
                float(1.96 * values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
            )
        summary.append(entry)
    return sorted(summary, key=lambda e: (e["codec"], e["nominal_kbps"]))


def markdown_table(summary: list[dict[str, Any]], metrics: tuple[str, ...] = tuple(METRICS)) -> str:
    arrows = {name: "↑" if METRICS[name][0] else "↓" for name in metrics}
    header = ["codec", "kbps", "kbps in file", "n", *(f"{name} {arrows[name]}" for name in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        cells = [entry["codec"], entry["bitrate"], f"{entry['measured_kbps']:.2f}", str(entry["items"])]
        for name in metrics:
            mean, ci, failed = entry[name], entry[f"{name}_ci95"], entry[f"{name}_failed"]
            cell = "failed" if mean is None else f"{mean:.3f}" + (f" ± {ci:.3f}" if ci is not None else "")
            cells.append(cell + (f" ({failed} failed)" if failed and mean is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out_dir: Path, rows: list[dict[str, Any]], metrics: tuple[str, ...] = tuple(METRICS)) -> str:
    """Write summary.md/.csv/.json and per_utterance.csv; return the Markdown table."""
    summary = summarise(rows, metrics)
    table = markdown_table(summary, metrics)
    notes = [f"- {name}: {METRICS[name][1]}" for name in metrics]
    notes.append("- ± is a 95% confidence interval of the mean (1.96 standard errors); kbps in file: bytes written")
    notes.append(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    with atomic_path(out_dir / "summary.md") as path:
        path.write_text(table + "\n\n" + "\n".join(notes) + "\n")
    document = {
        "metrics": {name: METRICS[name][1] for name in metrics},
        "visqol_mapper": VISQOL_MAPPER,
        "summary": summary,
    }
    with atomic_path(out_dir / "summary.json") as path:
        path.write_text(json.dumps(document, indent=2))
    _write_csv(out_dir / "summary.csv", summary)
    _write_csv(out_dir / "per_utterance.csv", [{**r, "errors": json.dumps(r["errors"])} for r in rows])
    return table


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
