"""`ndvq report`: one self-contained HTML page from an `ndvq eval` results directory.

The page holds the summary table, the codebook-usage and robustness tables and plots when present, and per
bitrate a few examples (the original and every codec's decoded audio, each with a player and a log spectrogram).
Images and audio are embedded as data URIs, so the page needs nothing but itself.
"""

import base64
import csv
from html import escape
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ndvq.audio import atomic_path, mono_at, read_audio
from ndvq.errors import NdvqError
from ndvq.eval.compare import file_key
from ndvq.eval.metrics import METRICS

RATE = 16000  # embedded audio: mono 16 kHz FLAC
MAX_SECONDS = 10.0
N_FFT, HOP = 512, 128
FLOOR_DB, CEILING_DB = -100.0, -10.0  # one colour scale for every spectrogram

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: middle; }
th { background: #f0f0f0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
table.examples td, table.examples th { border: none; border-bottom: 1px solid #eee; }
img.spectrogram { display: block; height: 96px; }
img.plot { max-width: 100%; }
.notes { font-size: 0.85em; color: #555; }
"""


def write_report(results_dir: Path, out: Path | None = None, examples_per_bitrate: int = 3) -> Path:
    """Write RESULTS_DIR/report.html (or `out`) atomically; returns the path written."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        what = "not a directory" if results_dir.exists() else "no such directory"
        raise NdvqError(f"{results_dir}: {what} (give the --out directory of ndvq eval)")
    document = _read_json(results_dir / "summary.json", required=True)
    if not isinstance(document, dict) or not isinstance(document.get("summary"), list):
        raise NdvqError(f"{results_dir / 'summary.json'}: not an `ndvq eval` summary (no 'summary' list)")
    title = escape(f"NDVQ evaluation: {results_dir.resolve().name}")
    parts = [f"<h1>{title}</h1>", _summary_section(document)]
    usage = _read_json(results_dir / "usage.json")
    if usage:
        parts.append(_usage_section(usage, results_dir / "usage.png"))
    robustness = _read_json(results_dir / "robustness.json")
    if robustness:
        parts.append(_robustness_section(robustness, results_dir / "robustness.png"))
    parts.append(_examples_section(results_dir, document["summary"], examples_per_bitrate))
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n"
        "<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )
    out = Path(out) if out else results_dir / "report.html"
    try:
        with atomic_path(out) as temporary:
            temporary.write_text(page, encoding="utf-8")
    except OSError as error:
        raise NdvqError(f"{out}: cannot write ({error.strerror or error})") from None
    return out


def _read_json(path: Path, required: bool = False) -> dict[str, Any] | None:
    """A results file as JSON; None if it is absent and optional."""
    if not path.is_file():
        if required:
            raise NdvqError(f"{path.parent}: no {path.name} here; write one with `ndvq eval ... --out {path.parent}`")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NdvqError(f"{path}: cannot read ({error})") from None


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 0) -> str:
    """An HTML table of escaped text; columns from `numeric_from` on (if > 0) are right-aligned."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = []
    for row in rows:
        cells = (
            f'<td class="number">{escape(cell)}</td>' if 0 < numeric_from <= i else f"<td>{escape(cell)}</td>"
            for i, cell in enumerate(row)
        )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _metric_cell(entry: dict[str, Any], name: str) -> str:
    """'mean ± ci (k failed)' for one metric of a summary entry."""
    mean, ci, failed = entry.get(name), entry.get(f"{name}_ci95"), entry.get(f"{name}_failed", 0)
    if mean is None:
        return "failed"
    return f"{mean:.3f}" + (f" ± {ci:.3f}" if ci is not None else "") + (f" ({failed} failed)" if failed else "")


def _summary_section(document: dict[str, Any]) -> str:
    """The comparison table with the metric descriptions and the ViSQOL mapper."""
    metrics = document.get("metrics", {})
    arrows = {name: " ↑" if METRICS[name][0] else " ↓" for name in metrics if name in METRICS}
    header = ["codec", "bitrate", "kbps in file", "n", *(name + arrows.get(name, "") for name in metrics)]
    rows = [
        [
            str(e["codec"]),
            str(e["bitrate"]),
            f"{e['measured_kbps']:.2f}",
            str(e["items"]),
            *(_metric_cell(e, name) for name in metrics),
        ]
        for e in document["summary"]
    ]
    notes = [f"<li><b>{escape(name)}</b>: {escape(text)}</li>" for name, text in metrics.items()]
    notes.append(f"<li>ViSQOL mapper: {escape(str(document.get('visqol_mapper', 'unknown')))}</li>")
    notes.append(
        "<li>mean ± 95% confidence interval of the mean (1.96 standard errors); "
        "kbps in file: bytes written per second of audio</li>"
    )
    return "<h2>Summary</h2>\n" + _table(header, rows, 2) + '\n<ul class="notes">' + "".join(notes) + "</ul>"


def _usage_section(usage: dict[str, Any], plot: Path) -> str:
    """Codebook entropy, perplexity and unused entries per model and stage."""
    header = ["model", "stage", "entropy (bits)", "of", "perplexity", "unused"]
    rows = [
        [label, str(s["stage"]), f"{s['entropy_bits']:.3f}", f"{s['max_bits']:g}", f"{s['perplexity']:.1f}"]
        + [str(s["unused"])]
        for label, stages in usage["models"].items()
        for s in stages
    ]
    title = f"Codebook usage at {usage['bandwidth']:g} kbps over {usage['files']} files"
    return f"<h2>{escape(title)}</h2>\n" + _table(header, rows, 1) + _plot_image(plot, title)


def _robustness_section(robustness: dict[str, Any], plot: Path) -> str:
    """Code-change rates and metric losses per model and perturbation."""

    def cell(value: float | None) -> str:
        return "failed" if value is None else f"{value:.3f}"

    header = ["model", "perturbation", "changed codes", "stage 1", "PESQ-wb loss", "STOI loss", "mel distance gain"]
    rows = [
        [label, name, cell(v["change_rate_mean"]), cell(v["change_rate_per_stage"][0])]
        + [cell(v.get(f"{metric}_drop")) for metric in ("pesq_wb", "stoi", "mel_distance")]
        for label, perturbations in robustness["models"].items()
        for name, v in perturbations.items()
    ]
    title = f"Robustness at {robustness['bandwidth']:g} kbps over {robustness['files']} files"
    note = (
        '<p class="notes">Code-change rate (mean over stages, first stage) and each metric\'s degradation from the '
        "clean-input decode (positive = worse).</p>"
    )
    return f"<h2>{escape(title)}</h2>\n{note}\n" + _table(header, rows, 2) + _plot_image(plot, title)


def _plot_image(path: Path, title: str) -> str:
    """A PNG from the results directory as an inline image, or nothing if it is absent."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'\n<p><img class="plot" alt="{escape(title)}" src="data:image/png;base64,{data}"></p>'


def _reference_files(results_dir: Path) -> list[str]:
    """The reference files named in per_utterance.csv, in order, each once."""
    path = results_dir / "per_utterance.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(dict.fromkeys(row["file"] for row in csv.DictReader(handle)))


def _examples_section(results_dir: Path, summary: list[dict[str, Any]], per_bitrate: int) -> str:
    """Per nominal bitrate: the first few example files, original and decoded by every codec at that bitrate."""
    files = _reference_files(results_dir)
    keys = {file_key(Path(file)): file for file in files}
    bitrates: dict[float, list[dict[str, Any]]] = {}
    for entry in summary:
        bitrates.setdefault(float(entry["nominal_kbps"]), []).append(entry)
    originals: dict[str, str] = {}
    sections = []
    for kbps, entries in sorted(bitrates.items()):
        decoded: dict[str, dict[str, Path]] = {}  # "codec bitrate" -> reference file -> decoded example
        for e in entries:
            folder = results_dir / "examples" / e["codec"] / e["bitrate"]
            decoded[f"{e['codec']} {e['bitrate']}"] = {keys[p.stem]: p for p in folder.glob("*.flac") if p.stem in keys}
        shown = [file for file in files if any(file in examples for examples in decoded.values())][:per_bitrate]
        if not shown:
            continue
        sections.append(f"<h3>{kbps:g} kbps</h3>")
        for file in shown:
            if file not in originals:
                originals[file] = _player_row("original", Path(file))
            players = [originals[file]]
            players += [_player_row(label, examples[file]) for label, examples in decoded.items() if file in examples]
            sections.append(f'<h4>{escape(file)}</h4>\n<table class="examples">' + "\n".join(players) + "</table>")
    note = (
        f'<p class="notes">Mono, {RATE // 1000} kHz, at most {MAX_SECONDS:g} s. Spectrograms: log magnitude, '
        f"0 to {RATE // 2000} kHz, {FLOOR_DB:g} to {CEILING_DB:g} dB on one scale for all.</p>"
    )
    return "<h2>Examples</h2>\n" + ("\n".join([note, *sections]) if sections else "<p>No decoded examples.</p>")


def _player_row(label: str, path: Path) -> str:
    """A table row: label, an audio player and a spectrogram of the file (or why it cannot be shown)."""
    try:
        wav, rate = read_audio(path)
    except NdvqError as error:
        return f'<tr><th>{escape(label)}</th><td colspan="2">{escape(str(error))}</td></tr>'
    mono = mono_at(wav, rate, RATE)[: int(MAX_SECONDS * RATE)]
    mono = np.clip(mono, -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, mono, RATE, format="FLAC", subtype="PCM_16")
    audio = base64.b64encode(buffer.getvalue()).decode()
    image = base64.b64encode(_spectrogram_png(mono)).decode()
    return (
        f"<tr><th>{escape(label)}</th>"
        f'<td><audio controls preload="metadata" src="data:audio/flac;base64,{audio}"></audio></td>'
        f'<td><img class="spectrogram" alt="spectrogram: {escape(label)}" src="data:image/png;base64,{image}"></td>'
        "</tr>"
    )


def _spectrogram_png(mono: np.ndarray) -> bytes:
    """A small log-magnitude spectrogram (time left to right, 0 Hz at the bottom) as PNG bytes."""
    try:
        from matplotlib.figure import Figure  # renders with Agg, without pyplot's global state
        from PIL import Image  # a matplotlib dependency
    except ImportError:
        raise NdvqError("the report's spectrograms need matplotlib: pip install 'ndvq[eval]'") from None

    padded = np.pad(mono, (0, max(0, N_FFT - len(mono))))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = np.hanning(N_FFT)
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)) * 2 / window.sum()
    decibels = 20 * np.log10(magnitude.T + 1e-10)
    figure = Figure(figsize=(3.2, 0.96), dpi=100)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(decibels, origin="lower", aspect="auto", cmap="magma", vmin=FLOOR_DB, vmax=CEILING_DB)
    axes.set_axis_off()
    rendered, buffer = io.BytesIO(), io.BytesIO()
    figure.savefig(rendered, format="png")
    Image.open(rendered).convert("RGB").quantize(64).save(buffer, format="PNG", optimize=True)  # a third the size
    return buffer.getvalue()
