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
    42      4*C   RMS normalisation scale per channel (float32)
    ...     P     codes, [C, n_q, frames] in C order, `bits` bits each, least significant bit first
    end-4   4     CRC-32 of everything before it

P = ceil(C * n_q * frames * bits / 8), so the file is exactly `header_size(C) + P` bytes.
"""

from dataclasses import dataclass
import struct
import zlib

import numpy as np

from ndvq.errors import NdvqError

MAGIC = b"NDVQ"
VERSION = 1
_FIELDS = struct.Struct("<4sB8sIHBBfIBQI")
_CRC = struct.Struct("<I")
_SLICE = 1 << 14  # codes (un)packed at a time, so the bit planes stay small; a multiple of 8: whole bytes


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

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.length / self.sample_rate

    @property
    def nominal_bitrate(self) -> float:
        """kbps: frame rate x stages x bits per code."""
        return self.model_sample_rate / self.hop_length * self.stages * self.bits / 1000


def header_size(channels: int) -> int:
    """Bytes of everything but the codes: header fields, scales and checksum."""
    return _FIELDS.size + 4 * channels + _CRC.size


def payload_size(channels: int, stages: int, frames: int, bits: int) -> int:
    return (channels * stages * frames * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Integers in [0, 2**bits) -> `bits` bits each, least significant first, zero-padded to a byte."""
    flat = np.ascontiguousarray(codes, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits})")
    return b"".join(_pack(flat[i : i + _SLICE], bits) for i in range(0, flat.size, _SLICE))


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
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


def write(header: Header, codes: np.ndarray) -> bytes:
    """Serialise codes [C, n_q, frames] with their header."""
    expected = (header.channels, header.stages, header.frames)
    if codes.shape != expected or len(header.scales) != header.channels:
        raise ValueError(f"codes of shape {codes.shape} do not match the header {expected}")
    fields = _FIELDS.pack(
        MAGIC,
        VERSION,
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
    body = fields + struct.pack(f"<{header.channels}f", *header.scales) + pack_codes(codes, header.bits)
    return body + _CRC.pack(zlib.crc32(body))


def read(data: bytes, name: str = "input") -> tuple[Header, np.ndarray]:
    """Parse and verify a bitstream: (header, codes [C, n_q, frames]). Raises NdvqError naming `name`."""
    if len(data) < _FIELDS.size + _CRC.size or data[:4] != MAGIC:
        raise NdvqError(f"{name}: not an .ndvq file")
    (_, version, *values) = _FIELDS.unpack_from(data)
    if version != VERSION:
        raise NdvqError(f"{name}: unsupported .ndvq format version {version} (this version of ndvq reads {VERSION})")
    header = Header(*values, scales=())
    expected = header_size(header.channels) + payload_size(header.channels, header.stages, header.frames, header.bits)
    (checksum,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if checksum != zlib.crc32(data[: -_CRC.size]):
        if len(data) != expected:
            raise NdvqError(f"{name}: truncated or corrupted .ndvq file ({len(data)} bytes, header says {expected})")
        raise NdvqError(f"{name}: corrupted .ndvq file (checksum mismatch)")
    if len(data) != expected or not (
        1 <= header.bits <= 16 and header.stages and header.channels and header.hop_length
    ):
        raise NdvqError(f"{name}: inconsistent .ndvq header")
    scales = struct.unpack_from(f"<{header.channels}f", data, _FIELDS.size)
    header = Header(*values, scales=scales)
    count = header.channels * header.stages * header.frames
    codes = unpack_codes(data[_FIELDS.size + 4 * header.channels : -_CRC.size], count, header.bits)
    return header, codes.reshape(header.channels, header.stages, header.frames)
