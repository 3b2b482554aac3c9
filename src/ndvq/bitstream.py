"""The .ndvq file format: a versioned binary header, bit-packed codes and a CRC-32. Bytes in, bytes out.

Layout (little-endian), format version 1:

    offset  size  field
    0       4     magic b"NDVQ"
    4       1     format version
    5       8     model identity (first 8 bytes of SHA-256 over the model's config and weights)
    13      4     model sample rate, Hz
    17      2     hop length, samples per frame at the model rate
    19      1     bits per code (log2 of the codebook size)
    20      1     stages n_q
    21      4     requested bandwidth, kbps (float32)
    25      4     audio sample rate, Hz (the input's, restored on decoding)
    29      1     channels C
    30      8     length, samples per channel at the audio sample rate
    38      4     frames per channel
    42      4*C   output scale per channel (float32): the decoder's output is multiplied by it (the input's RMS,
                  corrected for the decoder's level by files written since session 35; ndvq.compress)
    ...     P     codes, [C, n_q, frames] in C order, `bits` bits each, least significant bit first
    end-4   4     CRC-32 of everything before it

P = ceil(C * n_q * frames * bits / 8), so the file is exactly `header_size(C) + P` bytes: 42 bytes of
fields, 4 per channel of scales, 4 of checksum, the codes.

Format version 2 (written only for an entropy-coded payload; version 1 files are unchanged and still read):
the same fields with version 2, then after the scales

    42+4C   1     flags: 1 = the codes are entropy-coded (ndvq.entropy, with the model's tables);
                  no other value is defined
    ...     P     the range coder's 32-bit words (little-endian), P a multiple of 4
    end-4   4     CRC-32 of everything before it

The payload's size is not implied by the header, so a reader bounds the codes it will decode by it:
at most entropy.MAX_SYMBOLS_PER_BYTE codes per payload byte (plus a small allowance), which every file
the coder writes satisfies (each symbol costs at least log2(128/127) bits there).

Readers check every field (`check`) before anything is allocated: a valid CRC only says the file was not
damaged after it was written, not that its writer was sound. Beyond the checksum, the fields must be
within bounds and agree with each other and with the file's size; the unused bits after the last code
must be zero, so an accepted file is exactly what `write` makes of its header and codes.
"""

from dataclasses import dataclass
import math
import struct
import zlib

import numpy as np

from ndvq.config import stages_for_bandwidth
from ndvq.entropy import MAX_SYMBOLS_PER_BYTE, EntropyModel
from ndvq.errors import NdvqError

MAGIC = b"NDVQ"
VERSION = 1  # bit-packed codes
ENTROPY_VERSION = 2  # entropy-coded codes (flags byte 1)
ENTROPY_CODED = 1
SYMBOL_ALLOWANCE = 4096  # codes an entropy-coded payload may hold beyond MAX_SYMBOLS_PER_BYTE per byte
_FIELDS = struct.Struct("<4sB8sIHBBfIBQI")
_CRC = struct.Struct("<I")
_SLICE = 1 << 14  # codes (un)packed at a time, so the bit planes stay small; a multiple of 8: whole bytes
SAMPLE_RATES = (1000, 768_000)  # Hz, inclusive: the audio and model rates a file may have
MAX_CHANNELS = 255
MAX_SCALE = 1e30  # RMS per channel: far below float32's limit, so that decoded samples stay finite


@dataclass(frozen=True)
class Header:
    model_id: bytes
    model_sample_rate: int
    hop_length: int
    bits: int
    stages: int
    bandwidth: float  # kbps, as requested
    sample_rate: int
    channels: int
    length: int
    frames: int
    scales: tuple[float, ...]
    entropy_coded: bool = False  # format version 2

    @property
    def version(self) -> int:
        return ENTROPY_VERSION if self.entropy_coded else VERSION

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.length / self.sample_rate

    @property
    def nominal_bitrate(self) -> float:
        """kbps: frame rate x stages x bits per code."""
        return self.model_sample_rate / self.hop_length * self.stages * self.bits / 1000


def header_size(channels: int, entropy_coded: bool = False) -> int:
    """Bytes of everything but the codes: header fields, scales, flags (version 2) and checksum."""
    return _FIELDS.size + 4 * channels + int(entropy_coded) + _CRC.size


def payload_size(channels: int, stages: int, frames: int, bits: int) -> int:
    return (channels * stages * frames * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Integers in [0, 2**bits) -> `bits` bits each, least significant first, zero-padded to a byte."""
    flat = np.ascontiguousarray(codes, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits})")
    return b"".join(_pack(flat[i : i + _SLICE], bits) for i in range(0, flat.size, _SLICE))


def unpack_codes(data: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    """Inverse of pack_codes: the first `count` integers, int64."""
    codes = np.empty(count, np.int64)
    weights = 1 << np.arange(bits, dtype=np.int64)
    for i in range(0, count, _SLICE):
        n = min(_SLICE, count - i)
        packed = np.frombuffer(data, np.uint8, count=(n * bits + 7) // 8, offset=i * bits // 8)
        planes = np.unpackbits(packed, bitorder="little")[: n * bits]
        codes[i : i + n] = planes.reshape(n, bits).astype(np.int64) @ weights
    return codes


def _pack(codes: np.ndarray, bits: int) -> bytes:
    planes = (codes[:, None] >> np.arange(bits)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def check(header: Header) -> None:
    """Raise ValueError naming the first field that is out of bounds or disagrees with the others."""
    low, high = SAMPLE_RATES
    for what, rate in (("audio", header.sample_rate), ("model", header.model_sample_rate)):
        if not low <= rate <= high:
            raise ValueError(f"{what} sample rate {rate} Hz, not between {low} and {high}")
    if header.hop_length < 1:
        raise ValueError(f"hop length {header.hop_length}")
    if not 1 <= header.bits <= 16:
        raise ValueError(f"{header.bits} bits per code, not between 1 and 16")
    if not 1 <= header.stages <= 255:
        raise ValueError(f"{header.stages} stages, not between 1 and 255")
    if not 1 <= header.channels <= MAX_CHANNELS or len(header.scales) != header.channels:
        raise ValueError(f"{header.channels} channels with {len(header.scales)} scales")
    if not all(0 < scale <= MAX_SCALE for scale in header.scales):
        raise ValueError(f"scales {header.scales}, not each above 0 and at most {MAX_SCALE:g}")
    if not (math.isfinite(header.bandwidth) and header.bandwidth > 0):
        raise ValueError(f"bandwidth {header.bandwidth} kbps")
    stages = _stages(header.bandwidth, header.model_sample_rate / header.hop_length, header.bits)
    if header.stages not in stages:
        raise ValueError(f"{header.stages} stages at {header.bandwidth:g} kbps (the rule gives {stages[-1]})")
    frames = _frames(header.length, header.sample_rate, header.model_sample_rate, header.hop_length)
    if header.frames not in frames:
        raise ValueError(
            f"{header.frames} frames for {header.length} samples at {header.sample_rate} Hz "
            f"(expected {frames.start} to {frames.stop - 1})"
            if frames
            else f"{header.length} samples at {header.sample_rate} Hz: not even one at the model's rate"
        )


def _stages(bandwidth: float, frame_rate: float, bits: int) -> range:
    """The stages the spec's rule gives at `bandwidth` kbps, allowing for its rounding to float32."""
    lo, hi = (stages_for_bandwidth(bandwidth * factor, frame_rate, bits) for factor in (1 - 1e-6, 1 + 1e-6))
    return range(lo, hi + 1)


def _frames(length: int, sample_rate: int, model_rate: int, hop: int) -> range:
    """The frame counts of `length` samples at `sample_rate` Hz once resampled to `model_rate`: soxr gives the
    exact length rounded (none below half a sample), and one sample either way is allowed."""
    exact = length * model_rate
    if length < 1 or 2 * exact < sample_rate:
        return range(0)
    lo, hi = max(1, exact // sample_rate - 1), -(-exact // sample_rate) + 1
    return range(-(-lo // hop), -(-hi // hop) + 1)


def write(header: Header, codes: np.ndarray, entropy: EntropyModel | None = None) -> bytes:
    """Serialise codes [C, n_q, frames] with their header (which must pass `check`); entropy-coded with
    `entropy` (format version 2) when the header says so."""
    check(header)
    if header.entropy_coded and entropy is None:
        raise ValueError("an entropy-coded header needs the model's entropy tables")
    expected = (header.channels, header.stages, header.frames)
    if codes.shape != expected:
        raise ValueError(f"codes of shape {codes.shape} do not match the header {expected}")
    fields = _FIELDS.pack(
        MAGIC,
        header.version,
        header.model_id,
        header.model_sample_rate,
        header.hop_length,
        header.bits,
        header.stages,
        header.bandwidth,
        header.sample_rate,
        header.channels,
        header.length,
        header.frames,
    )
    scales = struct.pack(f"<{header.channels}f", *header.scales)
    if header.entropy_coded:
        body = fields + scales + bytes([ENTROPY_CODED]) + entropy.encode(codes)
    else:
        body = fields + scales + pack_codes(codes, header.bits)
    return body + _CRC.pack(zlib.crc32(body))


def read_header(data: bytes, name: str = "input") -> Header:
    """Parse and verify a bitstream's header, checksum and size without unpacking its codes.

    Raises NdvqError naming `name` for anything but a file `write` could have made (see `check`).
    """
    if data[:4] != MAGIC[: len(data)] or not data:
        raise NdvqError(f"{name}: not an .ndvq file")
    if len(data) < _FIELDS.size + _CRC.size:
        raise NdvqError(f"{name}: truncated .ndvq file ({len(data)} bytes, shorter than any header)")
    (_, version, *values) = _FIELDS.unpack_from(data)
    if version not in (VERSION, ENTROPY_VERSION):
        raise NdvqError(
            f"{name}: unsupported .ndvq format version {version} (this version of ndvq reads {VERSION} and "
            f"{ENTROPY_VERSION})"
        )
    fields = Header(*values, scales=(), entropy_coded=version == ENTROPY_VERSION)
    if fields.entropy_coded:
        return _read_entropy_header(data, name, values, fields)
    expected = header_size(fields.channels) + payload_size(fields.channels, fields.stages, fields.frames, fields.bits)
    (checksum,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if checksum != zlib.crc32(memoryview(data)[: -_CRC.size]):
        if len(data) != expected:
            raise NdvqError(f"{name}: truncated or corrupted .ndvq file ({len(data)} bytes, header says {expected})")
        raise NdvqError(f"{name}: corrupted .ndvq file (checksum mismatch)")
    if len(data) != expected:
        raise NdvqError(f"{name}: inconsistent .ndvq file ({len(data)} bytes, its header says {expected})")
    header = Header(*values, scales=struct.unpack_from(f"<{fields.channels}f", data, _FIELDS.size))
    try:
        check(header)
    except ValueError as error:
        raise NdvqError(f"{name}: impossible .ndvq header ({error})") from None
    used = header.channels * header.stages * header.frames * header.bits % 8
    if used and data[-_CRC.size - 1] >> used:
        raise NdvqError(f"{name}: inconsistent .ndvq file (bits set after the last code)")
    return header


def _read_entropy_header(data: bytes, name: str, values: list, fields: Header) -> Header:
    """read_header for format version 2: checksum, flags, payload size and the bound on its codes."""
    flags_at = _FIELDS.size + 4 * fields.channels
    if len(data) < flags_at + 1 + _CRC.size:
        raise NdvqError(f"{name}: truncated .ndvq file ({len(data)} bytes)")
    (checksum,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if checksum != zlib.crc32(memoryview(data)[: -_CRC.size]):
        raise NdvqError(f"{name}: truncated or corrupted .ndvq file (checksum mismatch)")
    if data[flags_at] != ENTROPY_CODED:
        raise NdvqError(f"{name}: unknown .ndvq flags {data[flags_at]} (version 2 defines 1, entropy-coded)")
    header = Header(*values, scales=struct.unpack_from(f"<{fields.channels}f", data, _FIELDS.size), entropy_coded=True)
    try:
        check(header)
    except ValueError as error:
        raise NdvqError(f"{name}: impossible .ndvq header ({error})") from None
    payload = len(data) - header_size(header.channels, True)
    if payload % 4:
        raise NdvqError(f"{name}: inconsistent .ndvq file (entropy-coded payload of {payload} bytes, not 32-bit words)")
    count = header.channels * header.stages * header.frames
    if count > MAX_SYMBOLS_PER_BYTE * payload + SYMBOL_ALLOWANCE:
        raise NdvqError(f"{name}: inconsistent .ndvq file ({count} codes cannot come from {payload} bytes)")
    return header


def read(data: bytes, name: str = "input", entropy: EntropyModel | None = None) -> tuple[Header, np.ndarray]:
    """Parse and verify a bitstream (see read_header): (header, codes [C, n_q, frames]). An entropy-coded
    one (format version 2) needs the tables of the model that wrote it, `entropy`."""
    header = read_header(data, name)
    shape = (header.channels, header.stages, header.frames)
    payload = memoryview(data)[header_size(header.channels, header.entropy_coded) - _CRC.size : -_CRC.size]
    if not header.entropy_coded:
        return header, unpack_codes(payload, math.prod(shape), header.bits).reshape(shape)
    if entropy is None or entropy.stages < header.stages or entropy.codebook_size != 1 << header.bits:
        raise NdvqError(f"{name}: entropy-coded, and the model given has no entropy tables for it")
    try:
        return header, entropy.decode(payload, *shape)
    except ValueError as error:
        raise NdvqError(f"{name}: corrupted .ndvq file ({error})") from None
