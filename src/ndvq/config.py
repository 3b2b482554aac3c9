"""The codec's configuration: one dataclass, serialised as JSON beside the weights."""

from dataclasses import asdict, dataclass, fields
import math
from typing import Any

from ndvq.errors import NdvqError

QUANTIZERS = ("ndvq", "rvq")
# Fields added after models were shipped, with their defaults: at those, they stay out of the fingerprint.
LATER_FIELDS = {"decoder": "seanet", "decoder_upsample": 1, "decoder_layers": 8}


@dataclass(frozen=True)
class CodecConfig:
    """Everything that defines a codec's architecture. Durations in samples, rates in Hz, bandwidths in kbps."""

    sample_rate: int = 24000
    channels: int = 1
    n_filters: int = 32
    strides: tuple[int, ...] = (2, 4, 5, 8)  # encoder order; hop = product
    dimension: int = 128
    n_residual_layers: int = 1
    lstm_layers: int = 2
    causal: bool = False
    decoder: str = "seanet"  # "seanet" (EnCodec's, mirror of the encoder) or "istft" (frame-rate, modules/istft.py)
    decoder_upsample: int = 1  # the istft decoder's blocks run at this many times the frame rate
    decoder_layers: int = 8  # ConvNeXt blocks of the istft decoder
    quantizer: str = "ndvq"
    codebook_size: int = 1024
    num_codebooks: int = 32
    codebook_dim: int | None = None  # None: the latent dimension, no projection
    ndvq_estimator: str = "ema"  # "ema" (online EM statistics) or "gradient" (the paper's losses)
    ndvq_loss: str = "paper"  # "paper" or "nll", for the "gradient" estimator
    ndvq_residual: str = "sample"  # "sample", "mean" or "mean-last": see quantization/residual.py RESIDUALS
    variance_floor: float = 1e-4  # lower bound of the variances in the "nll" variant
    kmeans_iterations: int = 50
    bandwidths: tuple[float, ...] = (1.0, 1.5, 3.0, 4.5, 6.0, 9.0, 12.0, 16.0, 24.0)

    def __post_init__(self) -> None:
        positive = {"sample_rate": self.sample_rate, "n_filters": self.n_filters, "dimension": self.dimension}
        positive |= {"num_codebooks": self.num_codebooks}
        positive |= {"decoder_upsample": self.decoder_upsample, "decoder_layers": self.decoder_layers}
        if self.codebook_dim is not None:
            positive["codebook_dim"] = self.codebook_dim
        positive |= {f"strides[{i}]": stride for i, stride in enumerate(self.strides)}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_residual_layers", "lstm_layers", "kmeans_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.strides:
            raise ValueError("strides must not be empty")
        numbers = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in self.bandwidths)
        if not (numbers and all(0 < b < math.inf for b in self.bandwidths)):
            raise ValueError(f"bandwidths must be positive numbers of kbps, got {self.bandwidths!r}")
        if not (isinstance(self.variance_floor, (int, float)) and self.variance_floor > 0):
            raise ValueError(f"variance_floor must be positive, got {self.variance_floor!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.decoder == "istft" and self.causal:
            raise ValueError("the istft decoder is non-causal (causal=true needs decoder seanet)")
        upsample = self.decoder_upsample
        if upsample > 1 and (self.decoder != "istft" or self.hop_length % upsample):
            raise ValueError(
                f"decoder_upsample={upsample} needs decoder istft and a hop ({self.hop_length}) it divides"
            )
        layers = self.decoder_layers
        if layers != LATER_FIELDS["decoder_layers"] and self.decoder != "istft":
            raise ValueError(f"decoder_layers={layers} needs decoder istft (SEANet's depth follows the strides)")
        for name, allowed in (
            ("decoder", ("seanet", "istft")),
            ("ndvq_estimator", ("ema", "gradient")),
            ("ndvq_loss", ("paper", "nll")),
            ("ndvq_residual", ("sample", "mean", "mean-last")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"codebook_size must be a power of two, got {self.codebook_size}")
        if self.channels != 1:
            raise ValueError("the codec is mono (channels=1); multichannel audio is coded channel by channel")
        for bandwidth in self.bandwidths:
            stages = stages_for_bandwidth(bandwidth, self.frame_rate, self.bits_per_code)
            if stages > self.num_codebooks:
                raise ValueError(
                    f"{bandwidth} kbps needs {stages} stages, more than num_codebooks={self.num_codebooks}"
                )

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bits_per_code(self) -> int:
        return self.codebook_size.bit_length() - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """to_dict without the fields added since the first release that hold their defaults, so that adding a
        field leaves the fingerprints of existing models (and so their bitstreams) valid."""
        return {k: v for k, v in asdict(self).items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "CodecConfig":
        """Build from parsed JSON, with a one-line error naming `source` for anything invalid."""
        if not isinstance(data, dict):
            raise NdvqError(f"{source}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NdvqError(f"{source}: unknown config keys {unknown}")
        values = dict(data)
        for key in ("strides", "bandwidths"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise NdvqError(f"{source}: invalid config: {error}") from None


def stages_for_bandwidth(bandwidth: float, frame_rate: float, bits_per_code: int) -> int:
    """The spec's rule: n_q = max(1, floor(bandwidth / kbps per stage))."""
    per_stage = frame_rate * bits_per_code / 1000
    return max(1, math.floor(bandwidth / per_stage + 1e-9))
