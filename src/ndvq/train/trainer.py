"""The training loop: one process per device, PyTorch DDP across processes (torchrun), exact resume."""

from collections import Counter
from collections.abc import Iterator
from contextlib import closing, nullcontext
from dataclasses import replace
import json
import logging
import math
import os
from pathlib import Path
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ndvq.codec import Codec
from ndvq.config import CodecConfig
from ndvq.errors import NdvqError
from ndvq.eval.metrics import score
from ndvq.modules.distances import (
    DisturbanceLoss,
    IntelligibilityLoss,
    LowPhaseLoss,
    MultiScaleMelLoss,
    PhaseDerivativeLoss,
    SpectralConvergenceLoss,
)
from ndvq.quantization import ResidualQuantizer
from ndvq.quantization.usage import code_counts, codebook_usage
from ndvq.train.checkpoint import checkpoint_of_step, latest_checkpoint, load_checkpoint, save_checkpoint
from ndvq.train.config import OPTIONAL_LOSSES, OptimConfig, TrainConfig, save_config
from ndvq.train.data import AudioDataset
from ndvq.train.discriminator import MultiScaleSTFTDiscriminator
from ndvq.train.logs import MetricLogger, spread_statistics
from ndvq.train.losses import Balancer, discriminator_loss, feature_matching_loss, generator_adversarial_loss

log = logging.getLogger("ndvq")
CHECKPOINT_VERSION = 1
INIT_FRAMES_PER_CODE = 10  # latent frames gathered for the k-means initialisation, per code
RESUMABLE_CHANGES = {
    "steps",
    "cooldown_steps",
    "cpu_hours",
    "log_every",
    "valid_every",
    "checkpoint_every",
    "keep_checkpoints",
}


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """Adam with decoupled weight decay (AdamW, as fairseq's Adam in the authors' recipe), none on codebooks.
    Parameters that need no gradient (fixed by `finetune`) are left out."""
    codebooks = {id(p) for m in model.modules() if isinstance(m, ResidualQuantizer) for p in m.codebooks.parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if id(p) not in codebooks]},
        {"params": [p for p in trained if id(p) in codebooks], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The generator's learning rate at `step` (from 0): linear warm-up, constant, then the linear
    cool-down of the last `cooldown_steps` to zero (a run can be cooled down from any checkpoint by
    resuming with new `steps` and `cooldown_steps`)."""
    warmup = min(1.0, (step + 1) / max(1, config.optim.warmup_steps))
    cooldown = min(1.0, (config.steps - step) / config.cooldown_steps) if config.cooldown_steps else 1.0
    return config.optim.lr * warmup * max(0.0, cooldown)


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def with_defaults(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with the keys it lacks, at any depth, taken from `defaults`."""
    merged = dict(defaults)
    for key, value in saved.items():
        nested = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        merged[key] = with_defaults(defaults[key], value) if nested else value
    return merged


class Trainer:
    """Trains a Codec and its discriminator from a TrainConfig, writing checkpoints and logs to `run_dir`."""

    def __init__(self, config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False) -> None:
        self.config = config.validate()
        self.run_dir = Path(run_dir)
        self.rank, self.world = _rank()
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
        if config.precision == "bf16" and not cuda:
            raise NdvqError("precision: bf16 autocast needs a GPU; use fp32 on the CPU")

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        codec_config = config.codec_config()
        self.codec = Codec(codec_config)
        if config.init_from and not resume:
            self._warm_start(config.init_from)
        if config.finetune:
            for part in ("encoder", "quantizer", "decoder"):
                getattr(self.codec, part).requires_grad_(part in config.finetune)
        self.codec.to(self.device)
        self._train_mode()
        self.discriminator = MultiScaleSTFTDiscriminator(config.discriminator.scales, config.discriminator.filters)
        self.discriminator.to(self.device).train()
        self.model = self.codec
        if self.world > 1:  # unused parameters: codebooks beyond this step's n_q
            self.model = DistributedDataParallel(self.codec, find_unused_parameters=True)
        self.optimizer = build_optimizer(self.codec, config.optim)
        self.discriminator_optimizer = build_optimizer(self.discriminator, config.optim)
        self.mel_loss = MultiScaleMelLoss(codec_config.sample_rate, config.loss.mel_bins).to(self.device)
        self.mel_metric = MultiScaleMelLoss(codec_config.sample_rate).to(self.device)  # validation, fixed
        rate = codec_config.sample_rate
        optional = {
            "phase": PhaseDerivativeLoss(),
            "low_phase": LowPhaseLoss(rate),
            "convergence": SpectralConvergenceLoss(),
            "stoi": IntelligibilityLoss(rate),
            "pesq": DisturbanceLoss(rate),
        }
        self.optional_losses = {name: optional[name].to(self.device) for name in OPTIONAL_LOSSES}
        weights = dict(zip(("waveform", "mel", "adversarial", "feature"), config.loss.balancer_weights, strict=True))
        self.balancer = Balancer(weights) if config.loss.balancer else None

        data = config.data
        self.dataset = AudioDataset(
            data.train,
            codec_config.sample_rate,
            data.segment_seconds,
            data.min_seconds,
            data.max_seconds,
            config.seed,
            data.speed,
            data.equaliser,
            data.dc_offset,
        )
        self.valid_batch = self._validation_batch() if data.valid and self.rank == 0 else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.cpu_seconds_before = 0.0  # CPU time of earlier sessions of this run (this process's is added)

        self._prepare_run_dir(resume)
        torch.manual_seed(config.seed * 1000 + self.rank)  # per-rank noise for sampling from here on
        if resume:
            self._restore()
        codebooks = (codec_config.num_codebooks, codec_config.codebook_size)
        self.logger = MetricLogger(self.run_dir, codebooks, enabled=self.rank == 0)

    # --- set-up ------------------------------------------------------------------------------------
    def _prepare_run_dir(self, resume: bool) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise NdvqError(f"{self.run_dir}: is a file, not a run directory")
        exists = latest_checkpoint(self.run_dir) is not None
        if exists and not resume:
            raise NdvqError(
                f"{self.run_dir}: already holds a run; pass --resume to continue it or choose another directory"
            )
        if resume and not exists:
            raise NdvqError(f"{self.run_dir}: no checkpoint to resume from")
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")

    def _warm_start(self, model_dir: str) -> None:
        """Start from an exported model's weights (codebooks included, so no k-means initialisation). A model
        whose istft decoder has fewer blocks than this run's is deepened: the extra blocks start as identities."""
        source, target = Codec.load(model_dir), self.codec.config
        added = target.decoder_layers - source.config.decoder_layers
        deepened = added > 0 and replace(source.config, decoder_layers=target.decoder_layers) == target
        if source.config != target and not deepened:
            raise NdvqError(f"init_from {model_dir}: its architecture differs from this run's codec")
        self.codec.load_state_dict(source.state_dict(), strict=not deepened)
        if deepened:
            self.codec.decoder.pass_through(first=source.config.decoder_layers)
            log.info("deepened the decoder by %d blocks (starting as identities)", added)
        log.info("starting from the weights of %s", model_dir)

    def _train_mode(self) -> None:
        """Training mode; when fine-tuning, the quantizer stays in inference mode (means, fixed codebooks)."""
        self.codec.train()
        if self.config.finetune:
            self.codec.quantizer.eval()

    def _validation_batch(self) -> torch.Tensor:
        data = self.config.data
        rate = self.codec.sample_rate
        dataset = AudioDataset(data.valid, rate, data.segment_seconds, data.min_seconds, data.max_seconds, seed=12345)
        items = [dataset[i % len(dataset)] for i in range(min(data.valid_items, max(len(dataset), 1)))]
        return torch.stack(items).to(self.device)

    # --- data ----------------------------------------------------------------------------------------
    def _epoch_indices(self, epoch: int) -> list[int] | list[tuple[int, int]]:
        """This rank's sample order for an epoch, seeded by (seed, epoch): a permutation tiled to fill a batch, or
        with data.balance, as many draws with replacement by AudioDataset.folder_weights (a file's (k + 1)-th draw
        in the epoch is item (file, k), a crop of its own)."""
        size = len(self.dataset)
        batch = self.config.data.batch_size
        total = max(size, batch * self.world)
        total += -total % self.world
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        if self.config.data.balance:
            weights = self.dataset.folder_weights(self.config.data.balance)
            files = torch.multinomial(weights, total, replacement=True, generator=generator).tolist()
            drawn: Counter[int] = Counter()
            order = []
            for file in files:
                order.append((file, drawn[file]))
                drawn[file] += 1
        else:
            order = torch.randperm(size, generator=generator).repeat(math.ceil(total / size))[:total].tolist()
        return order[self.rank :: self.world]

    def _batches(self) -> Iterator[torch.Tensor]:
        """Batches from where the run stands (epoch, batch_in_epoch), on and on."""
        batch_size = self.config.data.batch_size
        while True:
            indices = self._epoch_indices(self.epoch)
            batches = [indices[i : i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]
            self.dataset.set_epoch(self.epoch)
            loader = DataLoader(
                self.dataset,
                batch_sampler=batches[self.batch_in_epoch :],
                num_workers=self.config.data.num_workers,
                generator=torch.Generator(),  # leaves the global RNG alone, so that resuming is exact
                pin_memory=self.device.type == "cuda",
            )
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch.to(self.device, non_blocking=True)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _bandwidth(self, step: int) -> float:
        """This step's bandwidth: a draw seeded by (seed, step), hence the same on every rank and on resume."""
        choices = self.config.bandwidths or self.codec.bandwidths
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return choices[int(torch.randint(len(choices), (1,), generator=generator))]

    # --- one step ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self, wav: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """One generator update (and a discriminator update when scheduled) on wav [B, 1, T].

        Returns the step's metrics and its codes [B, n_q, frames].
        """
        config, weights = self.config, self.config.loss
        bandwidth = self._bandwidth(self.step)
        adversarial = self.step >= config.discriminator.start_step
        self.discriminator.requires_grad_(False)
        with self._autocast():
            output = self.model(wav, self.codec.stages(bandwidth))
        decoded = output.wav.float()
        losses = {"waveform": F.l1_loss(decoded, wav), "mel": self.mel_loss(decoded, wav)}
        for name, loss in self.optional_losses.items():
            if getattr(weights, name):
                losses[name] = loss(decoded, wav)
        if adversarial:
            fake_logits, fake_features = self.discriminator(decoded)
            with torch.no_grad():
                _, real_features = self.discriminator(wav)
            losses["adversarial"] = generator_adversarial_loss(fake_logits)
            losses["feature"] = feature_matching_loss(real_features, fake_features)
        quantizer_loss = sum(output.losses.values())
        if self.balancer is not None:
            combined = self.balancer.gradient(losses, decoded)
            total = (decoded * combined).sum() + weights.quantizer * quantizer_loss
        else:
            total = sum(getattr(weights, name) * value for name, value in losses.items())
            total = total + weights.quantizer * quantizer_loss
        self._stop_if_not_finite(total, losses)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.codec.parameters(), config.optim.grad_clip)
        self._set_learning_rate()
        self.optimizer.step()

        metrics = {name: value.item() for name, value in losses.items()}
        metrics.update({f"quantizer/{name}": value.item() for name, value in output.losses.items()})
        metrics.update(total=total.item(), bandwidth=bandwidth, grad_norm=grad_norm.item())
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if adversarial and (self.step - config.discriminator.start_step) % config.discriminator.every == 0:
            metrics.update(self._discriminator_step(wav, decoded.detach()))
        return metrics, output.codes

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        self.discriminator.requires_grad_(True)
        real_logits, _ = self.discriminator(real)
        fake_logits, _ = self.discriminator(fake)
        loss = discriminator_loss(real_logits, fake_logits)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:  # the discriminator is not DDP-wrapped (it runs three times a step): average by hand
            for parameter in self.discriminator.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= self.world
        grad_norm = torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.config.optim.grad_clip)
        for group in self.discriminator_optimizer.param_groups:
            group["lr"] = self.optimizer.param_groups[0]["lr"]
        self.discriminator_optimizer.step()
        return {"discriminator": loss.item(), "discriminator_grad_norm": grad_norm.item()}

    def _set_learning_rate(self) -> None:
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _stop_if_not_finite(self, total: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(total.detach()).float()
        if self.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            bad = [name for name, value in losses.items() if not torch.isfinite(value)] or ["quantizer"]
            last = latest_checkpoint(self.run_dir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise NdvqError(f"non-finite loss ({', '.join(bad)}) at step {self.step}; stopped, {kept}")

    # --- the loop ------------------------------------------------------------------------------------
    def fit(self) -> Codec:
        """Train until `config.steps` (or `config.cpu_hours`); returns the (unwrapped) codec."""
        config = self.config
        batches = self._batches()
        if not self.codec.quantizer.initialised:
            self.initialise_codebooks(batches)
        # A progress bar on a terminal, or where nothing handles the log; in a log file (nohup, a cluster job)
        # a line per log period instead.
        interactive = sys.stderr.isatty() or not log.hasHandlers()
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            disable=self.rank != 0 or not interactive,
            unit="step",
            dynamic_ncols=True,
        )
        period = (self.step, time.perf_counter())  # the log period's first step and its start
        with logging_redirect_tqdm() if interactive else nullcontext(), bar, closing(self.logger):
            while self.step < config.steps:
                metrics, codes = self.train_step(next(batches))
                self.step += 1
                bar.update(1)
                bar.set_postfix(
                    bw=f"{metrics['bandwidth']:g}", mel=f"{metrics['mel']:.3f}", total=f"{metrics['total']:.3f}"
                )
                metrics["cpu_hours"] = self.cpu_seconds() / 3600
                self.logger.add(self.step, metrics, codes)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    averages = self.logger.flush(self.step)
                    if averages and not interactive:
                        self._log_progress(averages, period)
                    period = (self.step, time.perf_counter())
                out_of_budget = self.step % config.log_every == 0 and self._cpu_budget_spent()
                last = self.step == config.steps or out_of_budget  # the run's end: validated and saved
                if self.valid_batch is not None and (self.step % config.valid_every == 0 or last):
                    self.validate()
                if self.step % config.checkpoint_every == 0 or last:
                    self.save()
                if out_of_budget:
                    log.info("stopping at step %d: %.2f CPU hours spent", self.step, self.cpu_seconds() / 3600)
                    break
        return self.codec

    def _log_progress(self, averages: dict[str, float], period: tuple[int, float]) -> None:
        """One line for a log file: the log period's mean losses, its speed, the CPU time so far."""
        rate = (self.step - period[0]) / (time.perf_counter() - period[1])
        hours = self.cpu_seconds() / 3600
        log.info(
            "step %d/%d: mel %.3f, total %.3f, %.2f steps/s, %.2f CPU hours",
            *(self.step, self.config.steps, averages["mel"], averages["total"], rate, hours),
        )

    def _cpu_budget_spent(self) -> bool:
        """Whether rank 0 has used config.cpu_hours (all ranks agree)."""
        if not self.config.cpu_hours:
            return False
        spent = torch.tensor(float(self.cpu_seconds() >= self.config.cpu_hours * 3600), device=self.device)
        if self.world > 1:
            dist.broadcast(spent, 0)
        return bool(spent.item())

    @torch.no_grad()
    def initialise_codebooks(self, batches: Iterator[torch.Tensor]) -> None:
        """k-means-initialise every stage on the encoder's latents of enough batches for
        INIT_FRAMES_PER_CODE frames per code (k-means on rank 0, broadcast)."""
        wanted = INIT_FRAMES_PER_CODE * self.codec.codebook_size
        latents, frames = [], 0
        while frames < wanted:
            latent, _ = self.codec.latent(next(batches))
            latents.append(latent.transpose(1, 2).reshape(-1, latent.shape[1]))
            frames += latents[-1].shape[0]
        log.info("initialising %d codebooks by k-means on %d frames", self.codec.num_codebooks, frames)
        self.codec.quantizer.initialise(torch.cat(latents))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """On the fixed validation crops, at the lowest, a middle and the highest bandwidth: mel distance,
        PESQ-wb and STOI (means over crops), per-stage usage in eval mode; and the latent's RMS and, for NDVQ,
        the codes' mean sigma against the frames' spread around their code (per stage, at the top bandwidth)."""
        self.codec.eval()
        bandwidths = self.codec.bandwidths
        rate = self.codec.sample_rate
        results = {}
        for bandwidth in sorted({bandwidths[0], bandwidths[len(bandwidths) // 2], bandwidths[-1]}):
            output = self.codec(self.valid_batch, self.codec.stages(bandwidth))
            decoded = output.wav
            results[f"valid/mel_distance_{bandwidth:g}kbps"] = self.mel_metric.distance(decoded, self.valid_batch)
            items = [
                score(r[0].cpu().numpy(), d[0].cpu().numpy(), rate, ("pesq_wb", "stoi"), aligned=True).values
                for r, d in zip(self.valid_batch, decoded, strict=True)
            ]
            for metric in ("pesq_wb", "stoi"):
                values = [item[metric] for item in items if metric in item]
                if values:
                    results[f"valid/{metric}_{bandwidth:g}kbps"] = sum(values) / len(values)
            if bandwidth == bandwidths[len(bandwidths) // 2]:
                self.logger.examples(self.step, self.valid_batch[:2], decoded[:2], rate, bandwidth)
        entropies, _ = codebook_usage(code_counts(output.codes, self.codec.codebook_size))
        results.update({f"valid/usage_bits_stage{i + 1}": bits for i, bits in enumerate(entropies)})
        latent, _ = self.codec.latent(self.valid_batch)
        results["valid/latent_rms"] = latent.pow(2).mean().sqrt().item()
        results.update(spread_statistics(self.codec.quantizer, latent, output.codes))
        self._train_mode()
        self.logger.scalars(self.step, results)
        middle = f"{bandwidths[len(bandwidths) // 2]:g}kbps"
        summary = ", ".join(
            f"{name} {results[f'valid/{name}_{middle}']:.3f}"
            for name in ("mel_distance", "pesq_wb", "stoi")
            if f"valid/{name}_{middle}" in results
        )
        log.info("step %d: validation at %s: %s", self.step, middle.replace("kbps", " kbps"), summary)
        return results

    def cpu_seconds(self) -> float:
        """CPU time spent on this run so far by this process (main thread and its intra-op threads)."""
        return self.cpu_seconds_before + time.process_time()

    # --- checkpoints -----------------------------------------------------------------------------------
    def _rng_states(self) -> list[dict[str, torch.Tensor]]:
        """Every rank's random generator states (CPU, and CUDA where used), gathered to all ranks."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world == 1:
            return [state]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, state)
        return gathered

    def save(self) -> None:
        rng = self._rng_states()
        if self.rank != 0:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.world,
            "config": self.config.to_dict(),
            "codec_config": self.codec.config.to_dict(),
            "generator": self.codec.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
            "balancer": self.balancer.state_dict() if self.balancer else None,
            "rng": rng,
            "cpu_seconds": self.cpu_seconds(),
        }
        save_checkpoint(self.run_dir, self.step, state, self.config.keep_checkpoints)

    def _restore(self) -> None:
        path = latest_checkpoint(self.run_dir)
        state = load_checkpoint(path)
        if state.get("version") != CHECKPOINT_VERSION:
            raise NdvqError(f"{path}: unsupported checkpoint version {state.get('version')}")
        # A field added to TrainConfig (or a section of it) after the checkpoint was written counts as its default.
        saved, current = with_defaults(TrainConfig().to_dict(), state["config"]), self.config.to_dict()
        changed = sorted(k for k in set(saved) | set(current) if json.dumps(saved.get(k)) != json.dumps(current.get(k)))
        changed = [k for k in changed if k not in RESUMABLE_CHANGES and k not in ("model", "codec")]
        if changed:
            raise NdvqError(f"{path}: the config differs from the run's in {', '.join(changed)}; resume with the same")
        if state["world_size"] != self.world:
            raise NdvqError(f"{path}: saved with {state['world_size']} processes, resumed with {self.world}")
        # The codec the config builds now must be the run's: compared as built, not as written (model and codec
        # overrides), so that a run whose preset changed since it started resumes with that change undone.
        # NDVQ's own fields do not change an RVQ codec.
        model = CodecConfig.from_dict(state["codec_config"], str(path)).to_dict()
        moved = sorted(
            k
            for k, v in self.codec.config.to_dict().items()
            if json.dumps(v) != json.dumps(model.get(k)) and not (model["quantizer"] == "rvq" and k.startswith("ndvq_"))
        )
        if moved:
            pinned = ", ".join(f"{k}: {json.dumps(model[k])}" for k in moved)
            raise NdvqError(
                f"{path}: the run's codec differs in {', '.join(moved)} (its preset changed?); "
                f"resume with codec={{{pinned}}}"
            )
        self.codec.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        if self.balancer is not None:
            self.balancer.load_state_dict(state["balancer"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.cpu_seconds_before = state.get("cpu_seconds", 0.0) - time.process_time()
        rng = state["rng"][self.rank]
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        log.info("resumed %s at step %d", path, self.step)


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, step: int | None = None) -> Codec:
    """Write a checkpoint's codec (the latest, or that of `step`) as a model directory that `Codec.load` and
    `--model` accept."""
    path = latest_checkpoint(Path(run_dir)) if step is None else checkpoint_of_step(Path(run_dir), step)
    if path is None:
        raise NdvqError(f"{run_dir}: no checkpoint found")
    state = load_checkpoint(path)
    codec = Codec(CodecConfig.from_dict(state["codec_config"], str(path)))
    codec.load_state_dict(state["generator"])
    codec.eval().save(out_dir)
    return codec


def run(config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False) -> None:
    """Train, as one process of a torchrun launch when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        Trainer(config, run_dir, resume).fit()
    finally:
        if distributed:
            dist.destroy_process_group()
