"""Training logs: metrics.jsonl always, TensorBoard when installed, codebook usage statistics."""

import json
import logging
from pathlib import Path

import torch

from ndvq.modules.spectral import LogMagnitude
from ndvq.quantization import ResidualQuantizer
from ndvq.quantization.usage import code_counts, codebook_usage

log = logging.getLogger("ndvq")
COLLAPSE_BITS = 1.0  # a stage whose codes carry less information than this in training has collapsed...
COLLAPSE_FLUSHES = 3  # ...when it stays there for this many log periods


@torch.no_grad()
def spread_statistics(quantizer: ResidualQuantizer, latent: torch.Tensor, codes: torch.Tensor) -> dict[str, float]:
    """Per stage, the frames' RMS distance per dimension to their code's mean ("spread") and, for Gaussian
    codes, the RMS of the assigned codes' sigma ("sigma"); latent [B, D, T], codes [B, n_q, T] from eval mode.

    A sigma far from the spread means the variances have lost track of the clusters."""
    results = {}
    residual = latent.transpose(1, 2).reshape(-1, latent.shape[1])
    flat = codes.transpose(1, 2).reshape(-1, codes.shape[1])
    for i in range(codes.shape[1]):
        book = quantizer.codebooks[i]
        x = quantizer.project_in[i](residual)
        mean = book.decode(flat[:, i])
        results[f"valid/spread_stage{i + 1}"] = (x - mean).pow(2).mean().sqrt().item()
        if hasattr(book, "log_variance"):
            results[f"valid/sigma_stage{i + 1}"] = book.log_variance[flat[:, i]].exp().mean().sqrt().item()
        residual = residual - quantizer.project_out[i](mean)
    return results


class MetricLogger:
    """Averages metrics between flushes; writes `metrics.jsonl` and TensorBoard events in the run directory."""

    def __init__(self, run_dir: Path, codebooks: tuple[int, int], enabled: bool = True) -> None:
        self.enabled = enabled
        self.sums: dict[str, float] = {}
        self.count, self.last_step = 0, 0
        self.code_counts = torch.zeros(codebooks, dtype=torch.long)  # [stages, K]
        self.low_usage = [0] * codebooks[0]  # consecutive flushes under COLLAPSE_BITS, per stage
        self.writer = None
        if not enabled:
            return
        self.jsonl = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            log.warning("tensorboard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)")

    def add(self, step: int, metrics: dict[str, float], codes: torch.Tensor) -> None:
        """Accumulate one step's metrics and its codes [B, n_q, T]."""
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count, self.last_step = self.count + 1, step
        self.code_counts[: codes.shape[1]] += code_counts(codes, self.code_counts.shape[1])

    def flush(self, step: int) -> dict[str, float]:
        """Write the averages since the last flush, and codebook usage over the same steps; return them."""
        if not self.enabled or not self.count:
            return {}
        averages = {name: total / self.count for name, total in self.sums.items()}
        entropies, unused = codebook_usage(self.code_counts)
        for stage, (entropy, dead) in enumerate(zip(entropies, unused, strict=True)):
            averages[f"usage/entropy_bits_stage{stage + 1}"] = entropy
            averages[f"usage/unused_stage{stage + 1}"] = dead
            self.low_usage[stage] = self.low_usage[stage] + 1 if entropy < COLLAPSE_BITS else 0
            if self.low_usage[stage] == COLLAPSE_FLUSHES:
                log.warning(
                    "stage %d has collapsed: under %g bit of code usage for %d log periods (step %d)",
                    stage + 1,
                    COLLAPSE_BITS,
                    COLLAPSE_FLUSHES,
                    step,
                )
        self.scalars(step, averages)
        self.sums, self.count = {}, 0
        self.code_counts.zero_()
        return averages

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def examples(self, step: int, reference: torch.Tensor, decoded: torch.Tensor, rate: int, kbps: float) -> None:
        """Audio and log-spectrogram images of reference/decoded pairs [N, 1, T] (TensorBoard only)."""
        if self.writer is None:
            return
        for i, (ref, dec) in enumerate(zip(reference.cpu(), decoded.cpu(), strict=True)):
            self.writer.add_audio(f"example{i}/reference", ref.clamp(-1, 1), step, sample_rate=rate)
            self.writer.add_audio(f"example{i}/decoded_{kbps:g}kbps", dec.clamp(-1, 1), step, sample_rate=rate)
            self.writer.add_image(f"example{i}/spectrogram_{kbps:g}kbps", _spectrogram_image(ref, dec), step)

    def close(self) -> None:
        if self.enabled:
            self.flush(self.last_step)
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


def _spectrogram_image(*signals: torch.Tensor) -> torch.Tensor:
    """Log-magnitude spectrograms of [1, T] signals stacked top to bottom, low frequencies down: [1, H, W] in [0, 1]."""
    rows = []
    for signal in signals:
        rows.append(LogMagnitude(512)(signal)[0].flip(0))
    image = torch.cat(rows, dim=0)
    image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    return image[None]
