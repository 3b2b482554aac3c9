"""NDVQ: a neural speech codec with normal-distribution vector quantization."""

from ndvq import tokens
from ndvq.codec import Codec
from ndvq.compress import compress, compress_file, decompress, decompress_file
from ndvq.config import CodecConfig
from ndvq.errors import NdvqError
from ndvq.quantization import ResidualNDVQ, ResidualVQ
from ndvq.stream import StreamingDecoder, StreamingEncoder

__all__ = [
    "Codec",
    "CodecConfig",
    "NdvqError",
    "ResidualNDVQ",
    "ResidualVQ",
    "StreamingDecoder",
    "StreamingEncoder",
    "compress",
    "compress_file",
    "decompress",
    "decompress_file",
    "tokens",
]
__version__ = "0.1.0"
