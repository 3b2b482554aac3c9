"""Audio <-> .ndvq: resampling, channels, normalisation and the codec, then the bitstream.

Arrays and files take the same path, block by block. A file is read twice (first the RMS scale, then
the codes, which are then decoded once to set the stored scale's level) and decoded straight into the
output file, so its waveform is never held whole, only its codes (8 bytes per code: 2.9 MB for 10 min at
6 kbps with `speech-16k-large`).
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
import os
from typing import NamedTuple

import numpy as np
import soxr
import torch
from tqdm import tqdm

from ndvq import bitstream
from ndvq.audio import (
    audio_blocks,
    check_audio,
    check_output,
    open_audio,
    read_bytes,
    write_audio_blocks,
    write_bytes,
)
from ndvq.codec import Codec, signal_scale
from ndvq.entropy import FULL_WEIGHT_STAGES
from ndvq.errors import NdvqError
from ndvq.refine import DEFAULT_STEPS as DEFAULT_REFINE_STEPS
from ndvq.refine import check_refine_steps

BLOCK_SECONDS = 10.0  # audio read, resampled and written at a time
# The stored scale corrects the decoder's level (_level_matched): in steps of LEVEL_STEP_DB, at most MAX_LEVEL_DB.
LEVEL_STEP_DB, MAX_LEVEL_DB = 0.01, 12.0
# Of what compress writes and decompress returns, for caches of results; 2: level-matched scales; 3: the last
# window of a signal takes the rest of it (ndvq.chunking.map_windows), which changes the codes of the last
# second or so of some inputs longer than a window (Codec's chunk_seconds)
WRITER_VERSION = 3
# Of the codes compress computes for an input (tokens record it, so that no tokens directory mixes two): 2: as
# WRITER_VERSION 3 (the windows); 1 before
CODES_VERSION = 2

Blocks = Callable[[], Iterator[np.ndarray]]  # each call: a fresh pass over one signal, blocks [C, n] float32


def _resampled(blocks: Iterable[np.ndarray], source_rate: int, target_rate: int, channels: int) -> Iterator[np.ndarray]:
    """Consecutive blocks [C, n] of one signal, resampled by soxr as one stream (as if resampled whole)."""
    if source_rate == target_rate:
        yield from blocks
        return
    stream = soxr.ResampleStream(source_rate, target_rate, channels, dtype="float32")
    for block in blocks:
        yield stream.resample_chunk(np.ascontiguousarray(block.T)).T
    yield stream.resample_chunk(np.zeros((0, channels), np.float32), last=True).T


def _with_progress(
    blocks: Iterable[np.ndarray], sample_rate: int, seconds: float, enabled: bool
) -> Iterator[np.ndarray]:
    """The blocks [C, n], counted in seconds of audio on a progress bar (stderr) when enabled."""
    with tqdm(total=round(seconds, 1), unit="s", disable=not enabled, leave=False) as bar:
        for block in blocks:
            yield block
            bar.update(block.shape[1] / sample_rate)


def _block_frames(sample_rate: int) -> int:
    return max(1, round(BLOCK_SECONDS * sample_rate))


def _at_model_rate(
    codec: Codec, blocks: Iterable[np.ndarray], sample_rate: int, channels: int
) -> Iterator[torch.Tensor]:
    """Blocks [C, n] at sample_rate Hz -> blocks [C, 1, n] at the model's rate (channels as the batch)."""
    for block in _resampled(blocks, sample_rate, codec.sample_rate, channels):
        yield torch.from_numpy(block)[:, None]


class FirstPass(NamedTuple):
    scale: torch.Tensor  # RMS per channel at the model's rate, plus 1e-8 (signal_scale): [C, 1, 1]
    length: int  # samples per channel at the input's rate
    rms: np.ndarray  # RMS per channel at the input's rate, float64: [C]


def _first_pass(codec: Codec, blocks: Iterable[np.ndarray], sample_rate: int, channels: int, name: str) -> FirstPass:
    """The scale the encoder divides by, the length, and the input's own RMS, in one pass over blocks [C, n]."""
    length, model_length, energy = 0, 0, np.zeros(channels)

    def counted() -> Iterator[np.ndarray]:
        nonlocal length, energy
        for block in blocks:
            length += block.shape[1]
            energy = energy + np.square(block, dtype=np.float64).sum(axis=1)
            yield block

    def at_least_one_sample() -> Iterator[torch.Tensor]:
        nonlocal model_length
        for block in _at_model_rate(codec, counted(), sample_rate, channels):
            model_length += block.shape[-1]
            yield block
        if not model_length:
            raise NdvqError(
                f"{name}: too short ({length} samples at {sample_rate} Hz, "
                f"not one sample at the model's {codec.sample_rate} Hz)"
            )

    scale = signal_scale(at_least_one_sample())
    return FirstPass(scale, length, np.sqrt(energy / length))


def _level_matched(codec: Codec, codes: torch.Tensor, sample_rate: int, first: FirstPass) -> torch.Tensor:
    """The scale [C, 1, 1] to store: first.scale corrected so that the decode, as decompress returns it (at the
    input's rate and length), has the input's RMS.

    The decoder's level is off by a voice-dependent gain (the shipped model on held-out voices: 1.2 dB quieter on
    a studio voice, 1.8 to 5.4 dB on others; benchmarks/level.py, docs/ndvq-that-learns.md, session 35). One
    decoding pass over the codes measures it; the correction is rounded to LEVEL_STEP_DB (so that rounding
    differences between thread counts seldom reach the file) and kept within MAX_LEVEL_DB, and not applied where
    the input or its decode is silent or where it would take the scale over bitstream.MAX_SCALE. The format is
    unchanged: decoders multiply by the stored scale as before.
    """
    channels = codes.shape[0]
    energy = np.zeros(channels)
    for block in _trimmed(_decoded_blocks(codec, codes, None, sample_rate), channels, first.length):  # unit scale
        energy += np.square(block, dtype=np.float64).sum(axis=1)
    decoded_rms = np.sqrt(energy / first.length)
    scale = first.scale.reshape(-1).double().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 20 * np.log10(first.rms / (scale * decoded_rms))
    db = np.round(np.clip(db, -MAX_LEVEL_DB, MAX_LEVEL_DB) / LEVEL_STEP_DB) * LEVEL_STEP_DB
    stored = scale * 10 ** (db / 20)
    keep = ~np.isfinite(db) | (first.rms == 0) | (decoded_rms == 0) | (stored > bitstream.MAX_SCALE)
    return torch.from_numpy(np.where(keep, scale, stored)).float().reshape(first.scale.shape)


def _encode(
    codec: Codec,
    read: Blocks,
    sample_rate: int,
    channels: int,
    bandwidth: float,
    progress: bool,
    name: str,
    entropy: bool | None = None,
    rate_weight: float | None = None,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    match_level: bool = True,
) -> bytes:
    """Two passes over read() at sample_rate Hz: the scale and length, then the codes, which are decoded once to
    set the stored scale (_level_matched; with `match_level` False the input's RMS is stored); -> .ndvq bytes
    (entropy-coded with the model's tables when `entropy`; None: when the model has tables, unless bit-packing
    the same codes takes fewer bytes, as with many steps of refinement). `rate_weight` (see Codec.encode_blocks)
    defaults to EntropyModel.rate_weight_at when entropy-coding, else 0; `refine_steps` (ndvq.refine) to
    ndvq.refine.DEFAULT_STEPS."""
    smaller = entropy is None
    if entropy is None:
        entropy = codec.entropy is not None
    if entropy and codec.entropy is None:
        raise NdvqError("--entropy: this model has no entropy tables (make them with `ndvq fit-entropy`)")
    if channels > bitstream.MAX_CHANNELS:
        raise NdvqError(f"{name}: {channels} channels, at most {bitstream.MAX_CHANNELS} are supported")
    low, high = bitstream.SAMPLE_RATES
    if not low <= sample_rate <= high:
        raise NdvqError(f"{name}: sample rate {sample_rate} Hz, not between {low} and {high} Hz")
    n_q = codec.stages(bandwidth)
    if rate_weight is None:
        rate_weight = codec.entropy.rate_weight_at(n_q) if entropy else 0.0
    check_refine_steps(refine_steps)
    first = _first_pass(codec, read(), sample_rate, channels, name)
    scale, length = first.scale, first.length
    if float(scale.max()) > bitstream.MAX_SCALE:
        raise NdvqError(f"{name}: too loud (RMS {float(scale.max()):g}, at most {bitstream.MAX_SCALE:g})")
    blocks = _with_progress(read(), sample_rate, length / sample_rate, progress)
    model_blocks = _at_model_rate(codec, blocks, sample_rate, channels)
    coded = codec.encode_blocks(model_blocks, bandwidth, scale, rate_weight=rate_weight, refine_steps=refine_steps)
    codes = torch.cat(list(coded), dim=-1)
    if match_level:
        scale = _level_matched(codec, codes, sample_rate, first)
    header = bitstream.Header(
        model_id=codec.identity(entropy),
        model_sample_rate=codec.sample_rate,
        hop_length=codec.hop_length,
        bits=codec.config.bits_per_code,
        stages=n_q,
        bandwidth=bandwidth,
        sample_rate=sample_rate,
        channels=channels,
        length=length,
        frames=codes.shape[-1],
        scales=tuple(scale.reshape(-1).tolist()),
        entropy_coded=entropy,
    )
    data = bitstream.write(header, codes.numpy(), codec.entropy)
    if entropy and smaller:
        payload = bitstream.payload_size(channels, n_q, header.frames, header.bits)
        if bitstream.header_size(channels) + payload < len(data):  # bit-packing the same codes is smaller
            return bitstream.write(replace(header, model_id=codec.identity(), entropy_coded=False), codes.numpy())
    return data


def codes_identity(codec: Codec) -> str:
    """What decides the codes `compress` writes by default, for caches of codes or results: the model's
    fingerprint and, where it has entropy tables, theirs, their rate weight and the stage count from which
    rate-aware assignment uses all of it (EntropyModel.rate_weight_at)."""
    if codec.entropy is None:
        return codec.identity().hex()
    return f"{codec.identity(True).hex()}-w{codec.entropy.rate_weight:g}-full{FULL_WEIGHT_STAGES}"


def compress(
    codec: Codec,
    wav: np.ndarray,
    sample_rate: int,
    bandwidth: float,
    progress: bool = False,
    entropy: bool | None = None,
    rate_weight: float | None = None,
    refine_steps: int = DEFAULT_REFINE_STEPS,
) -> bytes:
    """wav [C, T] float at `sample_rate` Hz -> .ndvq bytes. Each channel is coded on its own. With `entropy`
    (by default, when the model has entropy tables) the codes are entropy-coded with the model's tables (format
    version 2), and assigned with the tables' rate weight, scaled down under 12 stages (EntropyModel.rate_weight_at),
    unless `rate_weight` is given (0: the most likely codes; see Codec.encode_blocks); without, bit-packed (format
    version 1); by default (entropy None) the same codes are bit-packed instead where that takes fewer bytes.
    The encoder's latent is refined by analysis by synthesis before coding, `refine_steps` steps (ndvq.refine; by
    default ndvq.refine.DEFAULT_STEPS, about 4x the encoding time of 0, the one-pass encoder of Codec.encode);
    the decoder is the same."""
    wav = check_audio(wav, "input")
    step = _block_frames(sample_rate)

    def read() -> Iterator[np.ndarray]:
        return (wav[:, i : i + step] for i in range(0, wav.shape[1], step))

    channels = wav.shape[0]
    return _encode(codec, read, sample_rate, channels, bandwidth, progress, "input", entropy, rate_weight, refine_steps)


def encode_file(
    codec: Codec,
    source: str | os.PathLike,
    bandwidth: float,
    progress: bool = False,
    entropy: bool | None = None,
    rate_weight: float | None = None,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    match_level: bool = True,
) -> bytes:
    """An audio file (anything soundfile reads) -> .ndvq bytes, equal to compress() of its samples.

    The file is read twice, block by block; unreadable, truncated or empty files and NaN or infinite
    samples raise NdvqError naming it. With `match_level` False the file stores the input's RMS as its scale
    and skips the decoding pass that sets it (README, Level): the same codes, for callers that want only them.
    """
    with open_audio(source) as audio:
        step = _block_frames(audio.samplerate)
        blocks = lambda: audio_blocks(audio, step)  # noqa: E731
        name = str(source)
        rate, channels = audio.samplerate, audio.channels
        options = (entropy, rate_weight, refine_steps, match_level)
        return _encode(codec, blocks, rate, channels, bandwidth, progress, name, *options)


def compress_file(
    codec: Codec,
    source: str | os.PathLike,
    target: str | os.PathLike,
    bandwidth: float,
    progress: bool = False,
    entropy: bool | None = None,
    rate_weight: float | None = None,
    refine_steps: int = DEFAULT_REFINE_STEPS,
) -> bytes:
    """Compress an audio file into a .ndvq file, written atomically (see encode_file). Returns its bytes."""
    check_output(target, source=source)
    data = encode_file(codec, source, bandwidth, progress, entropy, rate_weight, refine_steps)
    write_bytes(target, data)
    return data


def _decoded(codec: Codec, data: bytes, name: str, progress: bool) -> tuple[bitstream.Header, Iterator[np.ndarray]]:
    """The header, and the decoded audio as blocks [C, n] at the original rate, `length` samples in all."""
    _check_model(codec, bitstream.read_header(data, name), name)
    header, codes = bitstream.read(data, name, codec.entropy)
    scale = torch.tensor(header.scales, dtype=torch.float32)[:, None, None]
    decoded = _decoded_blocks(codec, torch.from_numpy(codes), scale, header.sample_rate)
    blocks = _trimmed(decoded, header.channels, header.length)
    return header, _with_progress(blocks, header.sample_rate, header.duration, progress)


def _check_model(codec: Codec, header: bitstream.Header, name: str) -> None:
    """The header's model fields against the model: its id, then what the id implies (a forged file may lie)."""
    if header.entropy_coded and codec.entropy is None:
        raise NdvqError(f"{name}: entropy-coded, and this model has no entropy tables; pass the model it was made with")
    if header.model_id != codec.identity(header.entropy_coded):
        raise NdvqError(
            f"{name}: made by another model (model id {header.model_id.hex()}, "
            f"this model is {codec.identity(header.entropy_coded).hex()}); pass the model it was made with (--model)"
        )
    found = (header.model_sample_rate, header.hop_length, header.bits)
    expected = (codec.sample_rate, codec.hop_length, codec.config.bits_per_code)
    if found != expected or header.stages > codec.num_codebooks:
        raise NdvqError(
            f"{name}: impossible .ndvq header for its model ({header.model_sample_rate} Hz, hop {header.hop_length}, "
            f"{header.bits} bits, {header.stages} stages; the model: {codec.sample_rate} Hz, hop {codec.hop_length}, "
            f"{codec.config.bits_per_code} bits, {codec.num_codebooks} stages)"
        )


def _decoded_blocks(
    codec: Codec, codes: torch.Tensor, scale: torch.Tensor | None, sample_rate: int
) -> Iterator[np.ndarray]:
    """codes [C, n_q, frames] (times scale [C, 1, 1]; None: the decoder's own level) -> consecutive blocks [C, n]
    of audio at sample_rate Hz, as decompress returns them before trimming to the length."""
    decoded = (wav[:, 0].numpy() for wav in codec.decode_blocks(codes, scale))
    return _resampled(decoded, codec.sample_rate, sample_rate, codes.shape[0])


def _trimmed(blocks: Iterable[np.ndarray], channels: int, length: int) -> Iterator[np.ndarray]:
    """The first `length` samples of the blocks [C, n], padded with zeros if there are fewer."""
    remaining = length
    for block in blocks:  # to the end, even past `length`, so that the codec leaves its streaming state
        if block.shape[1] and remaining:
            yield block[:, :remaining]
            remaining -= min(remaining, block.shape[1])
    if remaining:
        yield np.zeros((channels, remaining), np.float32)


def decompress(data: bytes, codec: Codec, name: str = "input", progress: bool = False) -> tuple[np.ndarray, int]:
    """.ndvq bytes -> (wav [C, T] float32 at the original sample rate, that rate)."""
    header, blocks = _decoded(codec, data, name, progress)
    return np.concatenate(list(blocks), axis=1), header.sample_rate


def decode_to_file(
    codec: Codec,
    data: bytes,
    target: str | os.PathLike,
    name: str = "input",
    progress: bool = False,
    subtype: str | None = None,
) -> bitstream.Header:
    """.ndvq bytes -> an audio file at the original rate, channels and length, written block by block and
    atomically. The container follows the suffix, the sample format is `subtype` (default: the container's,
    16-bit PCM for WAV). Errors about the bytes name `name`, errors about the output name `target`."""
    check_output(target, audio=True, subtype=subtype)
    header, blocks = _decoded(codec, data, name, progress)
    write_audio_blocks(target, blocks, header.sample_rate, header.channels, subtype)
    return header


def decompress_file(
    codec: Codec,
    source: str | os.PathLike,
    target: str | os.PathLike,
    progress: bool = False,
    subtype: str | None = None,
) -> bitstream.Header:
    """Decompress a .ndvq file into an audio file (see decode_to_file). Returns its header."""
    check_output(target, source=source)
    return decode_to_file(codec, read_bytes(source), target, str(source), progress, subtype)
