"""Residual quantizers sharing one contract: forward(z, n_q) -> (quantized, codes, losses)."""

from ndvq.quantization.ndvq import ResidualNDVQ
from ndvq.quantization.residual import QuantizerOutput, ResidualQuantizer
from ndvq.quantization.rvq import ResidualVQ

__all__ = ["QuantizerOutput", "ResidualNDVQ", "ResidualQuantizer", "ResidualVQ"]
