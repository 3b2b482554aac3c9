"""The codec: SEANet encoder, residual quantizer (NDVQ or the RVQ baseline), SEANet or inverse-STFT decoder."""

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, nullcontext
import hashlib
import json
import logging
import math
import os
from pathlib import Path
import re
from typing import NamedTuple

import numpy as np
from safetensors import SafetensorError
import safetensors.torch
import torch
from torch import nn
import torch.nn.functional as F

from ndvq import pretrained
from ndvq.audio import atomic_path
from ndvq.chunking import map_windows, pad_stream, reblock
from ndvq.config import CodecConfig, stages_for_bandwidth
from ndvq.entropy import EntropyModel, check_rate_weight
from ndvq.errors import NdvqError
from ndvq.modules.istft import ISTFTDecoder
from ndvq.modules.seanet import SEANetDecoder, SEANetEncoder, receptive_field
from ndvq.modules.streaming import streaming
from ndvq.presets import PRESETS
from ndvq.quantization import ResidualNDVQ, ResidualVQ
from ndvq.quantization.residual import StageBias
from ndvq.refine import check_refine_steps, refine_latent

CONFIG_FILE, WEIGHTS_FILE, ENTROPY_FILE = "config.json", "model.safetensors", "entropy.safetensors"
MODEL_FORMAT = "ndvq-model"
MODEL_FORMAT_VERSION = 2  # 2: config.json holds the SHA-256 of model.safetensors; 1 (without it) still loads
DEFAULT_CHUNK_SECONDS = 10.0
SCALE_PIECE = 1 << 16  # samples that signal_scale sums at a time
# Storage "float16" (config.json): the floating tensors under these prefixes are stored as float16 and cast to
# float32 on load; the quantizer's tensors (statistics of the codes) always stay float32.
HALF_PREFIXES = ("encoder.", "decoder.")
STORAGES = ("float32", "float16")
log = logging.getLogger("ndvq")


class CodecOutput(NamedTuple):
    wav: torch.Tensor  # [B, 1, T]
    codes: torch.Tensor  # [B, n_q, frames]
    losses: dict[str, torch.Tensor]  # quantizer losses, means over stages


def rms_scale(wav: torch.Tensor) -> torch.Tensor:
    """Per-item RMS of wav [B, C, T], plus 1e-8: [B, 1, 1]."""
    return wav.pow(2).mean(dim=(1, 2), keepdim=True).sqrt() + 1e-8


def signal_scale(blocks: Iterable[torch.Tensor]) -> torch.Tensor:
    """RMS over time plus 1e-8 of one signal given as consecutive blocks [B, 1, n]: [B, 1, 1] float32.

    The squares are summed in float64 over fixed pieces of the signal, so the result does not depend on
    how the signal is cut into blocks: a file read block by block gets the scale of the whole array.
    """
    energy, count, device = 0.0, 0, None
    for piece in reblock(blocks, SCALE_PIECE):
        energy = energy + np.square(piece.detach().cpu().numpy(), dtype=np.float64).sum(axis=(1, 2), keepdims=True)
        count, device = count + piece.shape[-1], piece.device
    return torch.from_numpy(np.sqrt(energy / count) + 1e-8).to(device, torch.float32)


class Codec(nn.Module):
    """wav [B, 1, T] at `sample_rate` <-> codes [B, n_q, ceil(T / hop_length)] with n_q set by the bandwidth."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        seanet = dict(
            channels=config.channels,
            dimension=config.dimension,
            n_filters=config.n_filters,
            strides=config.strides,
            n_residual_layers=config.n_residual_layers,
            lstm_layers=config.lstm_layers,
            causal=config.causal,
        )
        self.encoder = SEANetEncoder(**seanet)
        if config.decoder == "istft":
            width = config.n_filters * 2 ** len(config.strides)
            layers, upsample = config.decoder_layers, config.decoder_upsample
            self.decoder = ISTFTDecoder(config.channels, config.dimension, width, layers, config.hop_length, upsample)
        else:
            self.decoder = SEANetDecoder(**seanet)
        quantizer = dict(
            dim=config.dimension,
            num_codebooks=config.num_codebooks,
            codebook_size=config.codebook_size,
            codebook_dim=config.codebook_dim,
            kmeans_iterations=config.kmeans_iterations,
        )
        if config.quantizer == "ndvq":
            self.quantizer = ResidualNDVQ(
                **quantizer,
                estimator=config.ndvq_estimator,
                loss=config.ndvq_loss,
                residual=config.ndvq_residual,
                variance_floor=config.variance_floor,
            )
        else:
            self.quantizer = ResidualVQ(**quantizer)
        # Non-causal models are run on long inputs in overlapping windows: the context covers the
        # convolutions' receptive field plus one second for the LSTM to settle.
        hop = config.hop_length
        self.context_frames = math.ceil((receptive_field(self.encoder) + config.sample_rate) / hop)
        self.entropy: EntropyModel | None = None  # integer tables for entropy-coded bitstreams (`ndvq fit-entropy`)

    def set_entropy(self, entropy: EntropyModel | None) -> None:
        """Attach (or remove) the entropy tables; they become part of the model's identity."""
        if entropy is not None and (entropy.stages, entropy.codebook_size) != (self.num_codebooks, self.codebook_size):
            raise NdvqError(
                f"entropy tables for {entropy.stages} x {entropy.codebook_size} codes, "
                f"the model has {self.num_codebooks} x {self.codebook_size}"
            )
        self.entropy = entropy

    # --- what a user needs to know -------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def bandwidths(self) -> tuple[float, ...]:
        return self.config.bandwidths

    def stages(self, bandwidth: float) -> int:
        """Number of quantizer stages used at `bandwidth` kbps, one of `bandwidths`."""
        if not any(math.isclose(bandwidth, b) for b in self.bandwidths):
            supported = ", ".join(f"{b:g}" for b in self.bandwidths)
            raise NdvqError(f"unsupported bitrate {bandwidth:g} kbps (this model supports {supported})")
        return stages_for_bandwidth(bandwidth, self.frame_rate, self.config.bits_per_code)

    def bitrate(self, n_q: int) -> float:
        """Nominal bitrate in kbps of n_q stages: frame rate x stages x bits per code."""
        return self.frame_rate * n_q * self.config.bits_per_code / 1000

    # --- training --------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, n_q: int | None = None) -> CodecOutput:
        """Reconstruct wav [B, 1, T] through n_q stages; RMS-normalised per item."""
        length = wav.shape[-1]
        z, scale = self.latent(wav)
        quantized, codes, losses = self.quantizer(z, n_q)
        return CodecOutput(self.decoder(quantized)[..., :length] * scale, codes, losses)

    def latent(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, 1, T] -> the encoder's latent [B, dimension, ceil(T / hop)] of the RMS-normalised input,
        and that RMS scale [B, 1, 1]."""
        scale = rms_scale(wav)
        return self.encoder(self._pad(wav / scale)), scale

    def decode_straight_through(self, latent: torch.Tensor, n_q: int, bias: StageBias | None = None) -> torch.Tensor:
        """Latent [B, dimension, F] -> the normalised decode [B, 1, F x hop] of its codes through n_q stages, with
        gradients straight through the quantizer to the latent (what refinement optimises; ndvq.refine)."""
        with torch.no_grad():
            quantized = self.quantizer.decode(self.quantizer.encode(latent, n_q, bias))
        return self.decoder(latent + (quantized - latent).detach())

    # --- inference -------------------------------------------------------------------------------
    def encode(
        self,
        wav: torch.Tensor,
        bandwidth: float,
        chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
        rate_weight: float = 0.0,
        refine_steps: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, 1, T] -> codes [B, n_q, ceil(T / hop)] (int64) and the RMS scale [B, 1, 1].

        Inputs longer than `chunk_seconds` are encoded chunk by chunk (None: all at once). A `rate_weight` above
        0 makes the assignment rate-aware, `refine_steps` above 0 refines the latent (see encode_blocks).
        """
        scale = signal_scale([wav])
        blocks = self.encode_blocks([wav], bandwidth, scale, chunk_seconds, rate_weight, refine_steps)
        return torch.cat(list(blocks), dim=-1), scale

    def encode_blocks(
        self,
        blocks: Iterable[torch.Tensor],
        bandwidth: float,
        scale: torch.Tensor,
        chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
        rate_weight: float = 0.0,
        refine_steps: int = 0,
    ) -> Iterator[torch.Tensor]:
        """Consecutive blocks [B, 1, n] of one signal -> consecutive codes [B, n_q, frames], in memory that does
        not grow with the signal's length. The signal is divided by `scale` [B, 1, 1] (see signal_scale).

        With `rate_weight` > 0 each stage picks the code maximising log-likelihood + rate_weight x log prior
        (the entropy tables' probabilities, EntropyModel.log_prior) instead of the likelihood alone: codes the
        entropy coder makes cheap are preferred, trading a little fidelity for fewer bits. The decoder is the same.

        With `refine_steps` > 0 the encoder's latent is refined by analysis by synthesis before it is coded (see
        ndvq.refine): better decodes for a decoder pass forward and backward per step; the decoder is the same.

        The result does not depend on how the signal is cut into blocks. Do not use the codec for anything
        else while iterating: a causal model keeps streaming state in its layers.
        """
        n_q, hop = self.stages(bandwidth), self.hop_length
        bias = self._rate_bias(rate_weight) if rate_weight else None
        check_refine_steps(refine_steps)

        def synthesise(latent: torch.Tensor) -> torch.Tensor:
            return self.decode_straight_through(latent, n_q, bias)

        def encode_window(window: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                latent = self.encoder(window)
            if refine_steps:
                latent = refine_latent(latent, window, synthesise, self.sample_rate, refine_steps)
            with torch.no_grad():
                return self.quantizer.encode(latent, n_q, bias)

        normalised = (block / scale for block in pad_stream(blocks, hop))
        with self._chunking(self.encoder):
            yield from map_windows(encode_window, normalised, *self._chunk_sizes(chunk_seconds, hop), (1, hop))

    def decode(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor | None = None,
        chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
    ) -> torch.Tensor:
        """codes [B, n_q, F] (and scale [B, 1, 1]) -> wav [B, 1, F * hop]."""
        return torch.cat(list(self.decode_blocks(codes, scale, chunk_seconds)), dim=-1)

    def decode_blocks(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor | None = None,
        chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
    ) -> Iterator[torch.Tensor]:
        """codes [B, n_q, F] (and scale [B, 1, 1]) -> consecutive blocks of wav [B, 1, n], F * hop samples in
        all, in memory that does not grow with F. As for encode_blocks, finish iterating before other uses."""

        def decode_window(window: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                wav = self.decoder(self.quantizer.decode(window))
                return wav if scale is None else wav * scale

        with self._chunking(self.decoder):
            yield from map_windows(decode_window, [codes], *self._chunk_sizes(chunk_seconds, 1), (self.hop_length, 1))

    def _rate_bias(self, weight: float) -> StageBias:
        """weight x the entropy tables' log prior of each stage, given the previous stage's codes."""
        if self.entropy is None:
            raise NdvqError(
                "rate-aware assignment needs the model's entropy tables (make them with `ndvq fit-entropy`)"
            )
        check_rate_weight(weight)
        device = next(self.parameters()).device
        prior = weight * torch.from_numpy(self.entropy.log_prior).to(device)  # [n_q, GROUPS + 1, K]
        groups = torch.from_numpy(self.entropy.groups).long().to(device)

        def bias(stage: int, previous: torch.Tensor | None) -> torch.Tensor:
            return prior[stage, -1] if previous is None else prior[stage][groups[stage - 1][previous]]

        return bias

    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        return F.pad(wav, (0, -wav.shape[-1] % self.hop_length))

    def _chunking(self, module: nn.Module):
        """Causal models stream (exact, no context); non-causal ones use overlapping windows."""
        return streaming(module) if self.config.causal else nullcontext()

    def _chunk_sizes(self, chunk_seconds: float | None, unit: int) -> tuple[int, int]:
        """(chunk, context) in steps of the sequence being chunked: samples (unit = hop) or frames (unit = 1)."""
        if chunk_seconds is None:
            return 2**62, 0
        frames = max(1, round(chunk_seconds * self.frame_rate))
        context = 0 if self.config.causal else self.context_frames
        return frames * unit, context * unit

    # --- identity, saving and loading --------------------------------------------------------------
    def identity(self, entropy: bool = False) -> bytes:
        """8-byte fingerprint written into every bitstream: of the config and the weights, and with `entropy`
        (entropy-coded streams) of the entropy tables too, so that fitting tables leaves plain streams valid."""
        if entropy and self.entropy is None:
            raise NdvqError("this model has no entropy tables (make them with `ndvq fit-entropy`)")
        config = json.dumps(self.config.identity_dict(), sort_keys=True)
        state = sorted(self.state_dict().items())
        # Hashing the weights takes tens of ms: reuse the last digest while no tensor was replaced or changed in
        # place (torch counts in-place changes in `_version`; changes made through `.data` are not seen) and the
        # tables are the same object. The cache holds the tensors, so no new tensor can take a cached address.
        try:
            key = (config, tuple((name, t.data_ptr(), t._version, t.dtype, t.shape) for name, t in state), entropy)
        except RuntimeError:  # tensors made under torch.inference_mode() have no version counter: no caching
            key = None
        cached = getattr(self, "_identity_cache", None)
        if key is not None and cached is not None and cached[0] == key and (not entropy or cached[1] is self.entropy):
            return cached[3]
        digest = hashlib.sha256(config.encode())
        for name, tensor in state:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        if entropy:
            for name, table in (("entropy.tables", self.entropy.tables), ("entropy.groups", self.entropy.groups)):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(table, "<i4").tobytes())
        self._identity_cache = (key, self.entropy, [t for _, t in state], digest.digest()[:8])
        return digest.digest()[:8]

    def save(self, directory: str | os.PathLike, storage: str = "float32") -> None:
        """Write model.safetensors (and entropy.safetensors when the model has tables), then config.json with
        their SHA-256.

        storage="float16" stores the encoder's and decoder's floating weights as float16 (half the size; loading
        casts them back to float32, so the loaded model is this one with those weights rounded to float16).
        """
        if storage not in STORAGES:
            raise NdvqError(f"unknown weight storage {storage!r} (storages: {', '.join(STORAGES)})")
        directory = Path(directory)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        if storage == "float16":
            tensors = {name: _to_storage(name, t) for name, t in tensors.items()}
        weights = safetensors.torch.save(tensors)
        document = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
        }
        if storage != "float32":
            document["storage"] = storage
        files = [(WEIGHTS_FILE, weights)]
        if self.entropy is not None:
            tables = {name: torch.from_numpy(getattr(self.entropy, name)) for name in ("tables", "groups")}
            files.append((ENTROPY_FILE, safetensors.torch.save(tables)))
            document["entropy_sha256"] = hashlib.sha256(files[-1][1]).hexdigest()
            if self.entropy.rate_weight:
                document["entropy_rate_weight"] = self.entropy.rate_weight
        files.append((CONFIG_FILE, (json.dumps(document, indent=2) + "\n").encode()))
        # Every file is written beside its target before any replaces its target (the config last, as the
        # stack unwinds): a failed write leaves the directory as it was, and no temporary file. (A rename that
        # fails after another succeeded leaves weights that the old config's checksum refuses on loading.)
        with ExitStack() as stack:
            for name, content in reversed(files):
                stack.enter_context(atomic_path(directory / name)).write_bytes(content)
        if self.entropy is None:
            (directory / ENTROPY_FILE).unlink(missing_ok=True)

    @classmethod
    def from_preset(cls, name: str) -> "Codec":
        """A preset's architecture with reproducible (seeded, untrained) weights."""
        if name not in PRESETS:
            raise NdvqError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return cls(PRESETS[name]).eval()

    @classmethod
    def load(cls, source: str | os.PathLike) -> "Codec":
        """Load a model directory (config.json + model.safetensors), a shipped trained model by name (ndvq.pretrained,
        e.g. "speech-16k") or a preset's architecture with untrained weights (ndvq.presets). Never unpickles."""
        path = Path(source)
        if path.is_dir():
            return cls._load_directory(path)
        shipped = pretrained.registry()
        if str(source) in shipped:
            codec = cls._load_directory(pretrained.directory(str(source)))
            entry = shipped[str(source)]
            found = {"identity": codec.identity().hex()}
            if codec.entropy is not None or "entropy_identity" in entry:  # the tables too, when it ships them
                found["entropy_identity"] = codec.identity(True).hex() if codec.entropy is not None else None
            for key, value in found.items():
                if value != entry.get(key):
                    what = "fingerprint" if key == "identity" else "entropy-coding fingerprint"
                    raise NdvqError(
                        f"{pretrained.REGISTRY}: shipped model {str(source)!r} has {what} {value}, not the "
                        f"recorded {entry.get(key)} (reinstall ndvq, or ship it again with scripts/ship_model.py)"
                    )
            return codec
        if str(source) in PRESETS:
            return cls.from_preset(str(source))
        raise NdvqError(
            f"{source}: not a model directory, shipped model or preset "
            f"(shipped: {', '.join(shipped) or 'none'}; presets: {', '.join(PRESETS)})"
        )

    @classmethod
    def _load_directory(cls, path: Path) -> "Codec":
        try:
            document = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise NdvqError(f"{path / CONFIG_FILE}: cannot read model config ({error})") from None
        if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
            raise NdvqError(f"{path / CONFIG_FILE}: not an ndvq model config")
        version = document.get("version")
        if version not in (1, MODEL_FORMAT_VERSION):
            raise NdvqError(f"{path / CONFIG_FILE}: unsupported model format version {version}")
        storage = document.get("storage", "float32")
        if storage not in STORAGES:
            raise NdvqError(f"{path / CONFIG_FILE}: unknown weight storage {storage!r} ({', '.join(STORAGES)})")
        codec = cls(CodecConfig.from_dict(document.get("config"), str(path / CONFIG_FILE)))
        weights = _read_weights(path, document)
        if storage == "float16":  # stored tensors that _to_storage halves, back to float32
            weights = {n: _from_storage(n, t) for n, t in weights.items()}
        expected = codec.state_dict()
        problems = sorted(set(expected) ^ set(weights))
        problems += [n for n in expected if n in weights and _kind(weights[n]) != _kind(expected[n])]
        if problems:
            raise NdvqError(f"{path / WEIGHTS_FILE}: weights do not match the config ({len(problems)} tensors differ)")
        codec.load_state_dict(weights)
        if "entropy_sha256" in document:
            codec.set_entropy(_read_entropy(path, document["entropy_sha256"], document.get("entropy_rate_weight", 0.0)))
        return codec.eval()


def _read_entropy(directory: Path, recorded: object, rate_weight: object) -> EntropyModel:
    """directory/entropy.safetensors, checked against the SHA-256 that config.json records for it, with the
    rate weight config.json gives."""
    try:
        number = isinstance(rate_weight, (int, float)) and not isinstance(rate_weight, bool)
        weight = float(rate_weight) if number else math.nan
    except OverflowError:  # an integer too large for a float
        weight = math.nan
    if not math.isfinite(weight):
        raise NdvqError(f"{directory / CONFIG_FILE}: entropy_rate_weight must be a finite number, got {rate_weight!r}")
    path = directory / ENTROPY_FILE
    try:
        data = path.read_bytes()
    except OSError as error:
        raise NdvqError(f"{path}: cannot read entropy tables ({error.strerror or error})") from None
    if hashlib.sha256(data).hexdigest() != recorded:
        raise NdvqError(f"{path}: damaged or replaced entropy tables (their SHA-256 is not the one in {CONFIG_FILE})")
    try:
        tables = safetensors.torch.load(data)
        return EntropyModel(tables["tables"].numpy(), tables["groups"].numpy(), weight)
    except (SafetensorError, KeyError, ValueError) as error:
        raise NdvqError(f"{path}: not valid entropy tables ({error})") from None


def _read_weights(directory: Path, document: dict) -> dict[str, torch.Tensor]:
    """The tensors of directory/model.safetensors, after checking them against the SHA-256 in config.json
    (format version 2; version 1 has none, loaded with a note). safetensors holds only tensors, never code."""
    path, recorded = directory / WEIGHTS_FILE, document.get("weights_sha256")
    if (recorded is not None or document["version"] > 1) and not (
        isinstance(recorded, str) and re.fullmatch("[0-9a-f]{64}", recorded)
    ):
        raise NdvqError(f"{directory / CONFIG_FILE}: no valid weights_sha256 (the SHA-256 of {WEIGHTS_FILE})")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise NdvqError(f"{path}: cannot read weights ({error.strerror or error})") from None
    if recorded is None:
        log.warning("note: %s: no checksum to verify (format version 1); Codec.save adds one", path)
    elif hashlib.sha256(data).hexdigest() != recorded:
        raise NdvqError(f"{path}: damaged or replaced weights (their SHA-256 is not the one in {CONFIG_FILE})")
    try:
        return safetensors.torch.load(data)
    except SafetensorError as error:
        raise NdvqError(f"{path}: cannot read weights ({error})") from None


def _to_storage(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as storage "float16" holds it: float32 encoder/decoder weights as float16, the rest as is."""
    return tensor.half() if name.startswith(HALF_PREFIXES) and tensor.dtype == torch.float32 else tensor


def _from_storage(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The inverse of _to_storage: float16 encoder/decoder weights as float32 (exactly their values)."""
    return tensor.float() if name.startswith(HALF_PREFIXES) and tensor.dtype == torch.float16 else tensor


def _kind(tensor: torch.Tensor) -> tuple[torch.Size, torch.dtype]:
    return tensor.shape, tensor.dtype
