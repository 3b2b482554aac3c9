"""NDVQ: a neural speech codec with normal-distribution vector quantization."""

from ndvq.codec import Codec
from ndvq.compress import compress, decompress
from ndvq.config import CodecConfig
from ndvq.errors import NdvqError
from ndvq.quantization import ResidualNDVQ, ResidualVQ

__all__ = ["Codec", "CodecConfig", "NdvqError", "ResidualNDVQ", "ResidualVQ", "compress", "decompress"]
__version__ = "0.1.0"
