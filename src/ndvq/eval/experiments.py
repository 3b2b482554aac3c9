"""The paper's other two claims: codebook usage (`ndvq eval --usage`) and code robustness (`--robustness`)."""

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ndvq.audio import atomic_path, mono_at, read_audio
from ndvq.codec import Codec
from ndvq.eval.metrics import METRICS, score
from ndvq.quantization.usage import code_counts, codebook_usage

LATENT_SNRS = (30.0, 20.0, 10.0, 5.0)
INPUT_SNRS = (30.0, 20.0, 10.0)
ROBUSTNESS_METRICS = ("pesq_wb", "stoi", "mel_distance")


def _mono_at(codec: Codec, path: Path) -> torch.Tensor:
    """A file as mono audio at the model's rate: [1, 1, T]."""
    wav, rate = read_audio(path)
    return torch.from_numpy(mono_at(wav, rate, codec.sample_rate))[None, None]


def usage_statistics(counts: torch.Tensor) -> list[dict[str, float]]:
    """counts [stages, K] -> per stage: entropy (bits), perplexity, unused entries, of log2(K) possible."""
    entropies, unused = codebook_usage(counts)
    bits = math.log2(counts.shape[1])
    return [
        {"stage": i + 1, "entropy_bits": h, "max_bits": bits, "perplexity": 2**h, "unused": u}
        for i, (h, u) in enumerate(zip(entropies, unused, strict=True))
    ]


@torch.no_grad()
def usage(models: list[tuple[str, str]], files: list[Path], out_dir: Path, bandwidth: float) -> str:
    """Code every file with each model at `bandwidth`; write usage.json, usage.md, usage.png."""
    results = {}
    for label, model in models:
        codec = Codec.load(model)
        n_q = codec.stages(bandwidth)
        counts = torch.zeros(n_q, codec.codebook_size, dtype=torch.long)
        for path in files:
            codes, _ = codec.encode(_mono_at(codec, path), bandwidth)
            counts += code_counts(codes, codec.codebook_size)
        results[label] = usage_statistics(counts)
    lines = [f"Codebook usage at {bandwidth:g} kbps over {len(files)} files", ""]
    lines += ["| model | stage | entropy (bits) | of | perplexity | unused |", "|---|---|---|---|---|---|"]
    for label, stages in results.items():
        for s in stages:
            lines.append(
                f"| {label} | {s['stage']} | {s['entropy_bits']:.3f} | {s['max_bits']:g} | "
                f"{s['perplexity']:.1f} | {s['unused']} |"
            )
    table = "\n".join(lines)
    _write(out_dir, "usage", {"bandwidth": bandwidth, "files": len(files), "models": results}, table)
    _plot(
        out_dir / "usage.png",
        {label: ([s["stage"] for s in st], [s["entropy_bits"] for s in st]) for label, st in results.items()},
        "stage",
        "usage entropy (bits)",
        f"Codebook usage at {bandwidth:g} kbps",
    )
    return table


def _noise_at_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """`noise` scaled so that signal power / noise power = snr_db."""
    gain = torch.sqrt(signal.pow(2).mean() / (noise.pow(2).mean() * 10 ** (snr_db / 10) + 1e-20))
    return noise * gain


def _babble(others: list[torch.Tensor], length: int) -> torch.Tensor:
    """Babble-like noise: the sum of other utterances, each tiled or cut to `length`: [1, 1, length]."""
    total = torch.zeros(1, 1, length)
    for other in others:
        total += other.repeat(1, 1, math.ceil(length / other.shape[-1]))[..., :length]
    return total


def _decode(codec: Codec, codes: torch.Tensor, scale: torch.Tensor, length: int) -> np.ndarray:
    """codes [1, n_q, F] -> the first `length` decoded samples, [length]."""
    return codec.decode(codes, scale, chunk_seconds=None)[0, 0, :length].numpy()


@torch.no_grad()
def robustness(
    models: list[tuple[str, str]],
    files: list[Path],
    out_dir: Path,
    bandwidth: float,
    latent_snrs: tuple[float, ...] = LATENT_SNRS,
    input_snrs: tuple[float, ...] = INPUT_SNRS,
) -> str:
    """Per model and perturbation: code-change rate per stage, and how much PESQ-wb, STOI and mel distance
    (each against the original audio) degrade from the clean-input decode to the perturbed one
    (positive = worse, for every metric)."""
    results: dict[str, dict[str, Any]] = {}
    for label, model in models:
        codec = Codec.load(model)
        n_q = codec.stages(bandwidth)
        signals = [_mono_at(codec, path) for path in files]
        generator = torch.Generator().manual_seed(0)  # the same noise for every model
        rows: dict[str, list[dict[str, Any]]] = {}
        for index, wav in enumerate(signals):
            length, reference = wav.shape[-1], wav[0, 0].numpy()
            z, scale = codec.latent(wav)
            clean_codes = codec.quantizer.encode(z, n_q)
            clean = score(
                reference,
                _decode(codec, clean_codes, scale, length),
                codec.sample_rate,
                ROBUSTNESS_METRICS,
                aligned=True,
            )
            others = [s for i, s in enumerate(signals) if i != index][:4] or [
                torch.randn(1, 1, length, generator=generator)
            ]
            perturbations = {f"latent {snr:g} dB": ("latent", snr, None) for snr in latent_snrs}
            for snr in input_snrs:
                perturbations[f"white {snr:g} dB"] = ("input", snr, torch.randn(1, 1, length, generator=generator))
                perturbations[f"babble {snr:g} dB"] = ("input", snr, _babble(others, length))
            for name, (where, snr, noise) in perturbations.items():
                if where == "latent":
                    noisy_z = z + _noise_at_snr(z, torch.randn(z.shape, generator=generator), snr)
                    codes, noisy_scale = codec.quantizer.encode(noisy_z, n_q), scale
                else:
                    noisy_z, noisy_scale = codec.latent(wav + _noise_at_snr(wav, noise, snr))
                    codes = codec.quantizer.encode(noisy_z, n_q)
                decoded = _decode(codec, codes, noisy_scale, length)
                perturbed = score(reference, decoded, codec.sample_rate, ROBUSTNESS_METRICS, aligned=True)
                row = {"change_rate": (codes != clean_codes).float().mean(dim=(0, 2)).tolist()}
                for metric in ROBUSTNESS_METRICS:
                    if metric in clean.values and metric in perturbed.values:
                        change = clean.values[metric] - perturbed.values[metric]
                        row[f"{metric}_drop"] = change if METRICS[metric][0] else -change
                rows.setdefault(name, []).append(row)
        results[label] = {name: _mean_rows(items) for name, items in rows.items()}
    table = _robustness_table(results, bandwidth, len(files))
    _write(out_dir, "robustness", {"bandwidth": bandwidth, "files": len(files), "models": results}, table)
    curves = {}
    for label, perturbations in results.items():
        for kind in ("latent", "white", "babble"):
            points = [
                (float(n.split()[1]), v["change_rate_mean"]) for n, v in perturbations.items() if n.startswith(kind)
            ]
            curves[f"{label}, {kind}"] = ([p[0] for p in points], [p[1] for p in points])
    _plot(out_dir / "robustness.png", curves, "SNR (dB)", "code-change rate", "Code changes under noise", invert=True)
    return table


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    change = np.mean([r["change_rate"] for r in rows], axis=0)
    summary: dict[str, Any] = {"change_rate_per_stage": change.tolist(), "change_rate_mean": float(change.mean())}
    for metric in ROBUSTNESS_METRICS:
        values = [r[f"{metric}_drop"] for r in rows if f"{metric}_drop" in r]
        summary[f"{metric}_drop"] = float(np.mean(values)) if values else None
        summary[f"{metric}_failed"] = len(rows) - len(values)
    return summary


def _robustness_table(results: dict[str, dict[str, Any]], bandwidth: float, files: int) -> str:
    lines = [
        f"Robustness at {bandwidth:g} kbps over {files} files: code-change rate (mean over stages, first stage) "
        "and each metric's degradation from the clean-input decode (positive = worse)",
        "",
        "| model | perturbation | changed codes | stage 1 | PESQ-wb loss | STOI loss | mel distance gain |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(value: float | None) -> str:
        return "failed" if value is None else f"{value:.3f}"

    for label, perturbations in results.items():
        for name, v in perturbations.items():
            lines.append(
                f"| {label} | {name} | {v['change_rate_mean']:.3f} | {v['change_rate_per_stage'][0]:.3f} | "
                f"{cell(v['pesq_wb_drop'])} | {cell(v['stoi_drop'])} | {cell(v['mel_distance_drop'])} |"
            )
    return "\n".join(lines)


def _write(out_dir: Path, name: str, document: dict[str, Any], table: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}.json") as path:
        path.write_text(json.dumps(document, indent=2))
    with atomic_path(out_dir / f"{name}.md") as path:
        path.write_text(table + "\n")


def _plot(path: Path, curves: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str, invert=False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for label, (x, y) in curves.items():
        axes.plot(x, y, marker="o", label=label)
    if invert:
        axes.invert_xaxis()
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
