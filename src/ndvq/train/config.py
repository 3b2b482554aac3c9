"""Training configuration: nested dataclasses, read from YAML with `key=value` overrides."""

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
import os
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ndvq import pretrained
from ndvq.config import QUANTIZERS, CodecConfig
from ndvq.errors import NdvqError
from ndvq.modules.distances import MEL_SCALES
from ndvq.presets import PRESETS
from ndvq.train.data import check_augmentation

FINETUNE_PARTS = ("encoder", "decoder")
# LossConfig weights whose loss is computed only when the weight is not 0, and not with the balancer
OPTIONAL_LOSSES = ("phase", "low_phase", "convergence", "stoi", "pesq")


@dataclass
class DataConfig:
    train: str = ""  # a folder of audio files or a manifest (.tsv)
    valid: str = ""  # same; empty: no validation
    segment_seconds: float = 1.0  # random crop length
    speed: float = 0.0  # speed perturbation: each training crop plays at a speed drawn in [1 - speed, 1 + speed]
    equaliser: float = 0.0  # random EQ: gains drawn in [-equaliser, equaliser] dB per octave, 31 Hz to 8 kHz
    dc_offset: float = 0.0  # each crop gets a constant drawn in [-dc_offset, dc_offset] times its RMS
    balance: float = 0.0  # draw files with weight (files in their folder) ** -balance: 0 uniform, 1 folders alike
    min_seconds: float = 0.5
    max_seconds: float = 20.0
    batch_size: int = 8  # per rank
    num_workers: int = 2
    valid_items: int = 16  # validation crops, fixed across the run


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.8, 0.9)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 3000  # linear warm-up, then constant (until the cool-down of `cooldown_steps`)
    grad_clip: float = 20.0


@dataclass
class LossConfig:
    waveform: float = 0.5  # L1 on the waveform
    mel: float = 0.5  # multi-scale log-mel, L1 + MSE
    mel_bins: tuple[int, ...] = (64,) * len(MEL_SCALES)  # per scale, n_fft 32 .. 2048 (EnCodec); DAC: [5, 10, ..., 320]
    phase: float = 0.0  # STFT phase derivatives (modules.distances.PhaseDerivativeLoss); 0: not computed
    low_phase: float = 0.0  # STFT phase up to 1 kHz (modules.distances.LowPhaseLoss); 0: not computed
    convergence: float = 0.0  # linear STFT magnitudes (modules.distances.SpectralConvergenceLoss); 0: not computed
    stoi: float = 0.0  # 1 - STOI, differentiable (modules.distances.IntelligibilityLoss); 0: not computed
    pesq: float = 0.0  # PESQ's disturbance, differentiable (modules.distances.DisturbanceLoss); 0: not computed
    quantizer: float = 0.5
    adversarial: float = 1.0
    feature: float = 5.0  # relative feature matching
    balancer: bool = False  # EnCodec's gradient balancer instead of plain weights
    balancer_weights: tuple[float, float, float, float] = (0.1, 1.0, 3.0, 3.0)  # waveform, mel, adv, feature


@dataclass
class DiscriminatorConfig:
    filters: int = 32
    scales: tuple[int, ...] = (2048, 1024, 512, 256, 128)  # n_fft = window; hop = n_fft / 4
    start_step: int = 50_000  # no discriminator (nor adversarial losses) before this step
    every: int = 3  # then one discriminator update every `every` steps


@dataclass
class TrainConfig:
    model: str = "speech-16k-large"  # preset (architecture) the codec starts from
    quantizer: str = "ndvq"  # "ndvq" or "rvq": the one switch of an A/B run
    codec: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's CodecConfig fields
    init_from: str = ""  # a model directory (`ndvq export`) or shipped model of the same architecture to start from
    # Parts trained alone ("encoder", "decoder"; empty: the whole codec). The rest stays fixed, and the quantizer
    # works as at inference: means, not samples, and no codebook updates. Needs init_from.
    finetune: tuple[str, ...] = ()
    steps: int = 500_000
    cooldown_steps: int = 0  # the learning rate falls linearly to zero over the last this many of `steps`
    cpu_hours: float = 0.0  # stop (validate and checkpoint) once this process has used this much CPU; 0: no limit
    seed: int = 0
    bandwidths: tuple[float, ...] = ()  # drawn per step; empty: the codec's bandwidths
    precision: str = "fp32"  # or "bf16" (autocast, GPU only)
    log_every: int = 50
    valid_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def codec_config(self) -> CodecConfig:
        if self.model not in PRESETS:
            shipped = pretrained.registry().get(self.model)
            hint = (
                f"; {self.model!r} is a shipped trained model: model={shipped.get('architecture')} "
                f"init_from={self.model} starts from it"
                if shipped
                else ""
            )
            raise NdvqError(f"model: unknown preset {self.model!r} (presets: {', '.join(PRESETS)}){hint}")
        values = {**PRESETS[self.model].to_dict(), **self.codec, "quantizer": self.quantizer}
        return CodecConfig.from_dict(values, "codec")

    def validate(self) -> "TrainConfig":
        if self.quantizer not in QUANTIZERS:
            raise NdvqError(f"quantizer: must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        if self.precision not in ("fp32", "bf16"):
            raise NdvqError(f"precision: must be fp32 or bf16, got {self.precision!r}")
        if not self.data.train:
            raise NdvqError("data.train: no training data given (a folder of audio files or a manifest)")
        if len(self.loss.mel_bins) != len(MEL_SCALES) or min(self.loss.mel_bins) < 1:
            raise NdvqError(
                f"loss.mel_bins: expected {len(MEL_SCALES)} positive bin counts (n_fft {MEL_SCALES[0]} .. "
                f"{MEL_SCALES[-1]}), got {list(self.loss.mel_bins)}"
            )
        for name in OPTIONAL_LOSSES:
            if getattr(self.loss, name) and self.loss.balancer:
                raise NdvqError(f"loss.{name}: not combined with loss.balancer (its weights are for the other losses)")
        check_augmentation(self.data.speed, self.data.equaliser, self.data.dc_offset)
        if not 0.0 <= self.data.balance <= 1.0:
            raise NdvqError(f"data.balance (sampling by folder): must be in [0, 1], got {self.data.balance:g}")
        unknown_parts = [part for part in self.finetune if part not in FINETUNE_PARTS]
        if unknown_parts or len(set(self.finetune)) != len(self.finetune):
            parts = ", ".join(FINETUNE_PARTS)
            raise NdvqError(f"finetune: expected distinct parts among {parts}, got {list(self.finetune)}")
        if self.finetune and not self.init_from:
            raise NdvqError("finetune: needs a trained model to start from (init_from)")
        if self.cpu_hours < 0:
            raise NdvqError("cpu_hours: must be 0 (no limit) or positive")
        for name in ("steps", "log_every", "valid_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise NdvqError(f"{name}: must be at least 1")
        for name, value, valid, rule in (
            ("optim.lr", self.optim.lr, self.optim.lr > 0, "positive"),
            ("optim.eps", self.optim.eps, self.optim.eps > 0, "positive"),
            ("optim.betas", list(self.optim.betas), all(0 <= b < 1 for b in self.optim.betas), "in [0, 1)"),
            ("optim.weight_decay", self.optim.weight_decay, self.optim.weight_decay >= 0, "at least 0"),
            ("optim.warmup_steps", self.optim.warmup_steps, self.optim.warmup_steps >= 0, "at least 0"),
            ("optim.grad_clip", self.optim.grad_clip, self.optim.grad_clip > 0, "positive"),
            ("data.segment_seconds", self.data.segment_seconds, self.data.segment_seconds > 0, "positive"),
            ("data.batch_size", self.data.batch_size, self.data.batch_size >= 1, "at least 1"),
            ("data.num_workers", self.data.num_workers, self.data.num_workers >= 0, "at least 0"),
            ("data.valid_items", self.data.valid_items, self.data.valid_items >= 1, "at least 1"),
            ("discriminator.filters", self.discriminator.filters, self.discriminator.filters >= 1, "at least 1"),
            ("discriminator.every", self.discriminator.every, self.discriminator.every >= 1, "at least 1"),
            (
                "discriminator.scales",
                list(self.discriminator.scales),
                min(self.discriminator.scales, default=0) >= 4,
                "non-empty, each at least 4",
            ),
        ):
            if not valid:
                raise NdvqError(f"{name}: must be {rule}, got {value}")
        if not 0 <= self.cooldown_steps <= self.steps:
            raise NdvqError(f"cooldown_steps: must be between 0 and steps ({self.steps}), got {self.cooldown_steps}")
        codec = self.codec_config()
        unknown = [b for b in self.bandwidths if b not in codec.bandwidths]
        if unknown:
            raise NdvqError(f"bandwidths: {unknown} are not bitrates of the model ({list(codec.bandwidths)})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check and convert a parsed YAML value to the field's declared type."""
    if is_dataclass(kind):
        if not isinstance(value, dict):
            raise NdvqError(f"{key}: expected a mapping")
        return _build(kind, value, f"{key}.")
    origin = getattr(kind, "__origin__", None)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise NdvqError(f"{key}: expected a list")
        if kind.__args__[-1] is not Ellipsis and len(value) != len(kind.__args__):
            raise NdvqError(f"{key}: expected a list of {len(kind.__args__)} values, got {len(value)}")
        return tuple(_coerce(v, kind.__args__[0], key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise NdvqError(f"{key}: expected a mapping")
        return dict(value)
    if kind is float and not isinstance(value, bool):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            pass
    elif kind in (int, str, bool) and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    elif kind not in (int, float, str, bool):
        return value
    raise NdvqError(f"{key}: expected {kind.__name__}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise NdvqError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")
    return replace(cls(), **{k: _coerce(v, hints[k], prefix + k) for k, v in values.items()})


def _merge(base: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = base
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise NdvqError(f"override {key}: {part} is not a section")
    node[leaf] = value


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file (or start from the defaults) and apply `key=value` overrides (values parsed as YAML)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise NdvqError(f"{path}: cannot read config ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise NdvqError(f"{path}: the config must be a mapping")
        try:  # the file's own keys and types first, so that their errors name the file
            _build(TrainConfig, values)
        except NdvqError as error:
            raise NdvqError(f"{path}: {error}") from None
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise NdvqError(f"override {override!r}: expected key=value")
        try:
            _merge(values, key.strip(), yaml.safe_load(text))
        except yaml.YAMLError:
            raise NdvqError(f"override {override!r}: cannot parse the value") from None
    return _build(TrainConfig, values)


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
