"""Audio <-> .ndvq bytes: resampling, channels, normalisation and the codec, then the bitstream."""

import numpy as np
import torch

from ndvq import bitstream
from ndvq.audio import check_audio, resample
from ndvq.codec import Codec
from ndvq.errors import NdvqError


def compress(codec: Codec, wav: np.ndarray, sample_rate: int, bandwidth: float, progress: bool = False) -> bytes:
    """wav [C, T] float at `sample_rate` Hz -> .ndvq bytes. Each channel is coded on its own."""
    wav = check_audio(wav, "input")
    if wav.shape[0] > 255:
        raise NdvqError(f"input: {wav.shape[0]} channels, at most 255 are supported")
    n_q = codec.stages(bandwidth)
    x = torch.from_numpy(resample(wav, sample_rate, codec.sample_rate))[:, None, :]
    codes, scale = codec.encode(x, bandwidth, progress=progress)
    header = bitstream.Header(
        model_id=codec.identity(),
        model_sample_rate=codec.sample_rate,
        hop_length=codec.hop_length,
        bits=codec.config.bits_per_code,
        stages=n_q,
        bandwidth=bandwidth,
        sample_rate=sample_rate,
        channels=wav.shape[0],
        length=wav.shape[1],
        frames=codes.shape[-1],
        scales=tuple(scale.reshape(-1).tolist()),
    )
    return bitstream.write(header, codes.numpy())


def decompress(data: bytes, codec: Codec, name: str = "input", progress: bool = False) -> tuple[np.ndarray, int]:
    """.ndvq bytes -> (wav [C, T] float32 at the original sample rate, that rate)."""
    header, codes = bitstream.read(data, name)
    if header.model_id != codec.identity():
        raise NdvqError(
            f"{name}: made by another model (model id {header.model_id.hex()}, "
            f"this model is {codec.identity().hex()}); pass the model it was made with (--model)"
        )
    scale = torch.tensor(header.scales, dtype=torch.float32)[:, None, None]
    wav = codec.decode(torch.from_numpy(codes), scale, progress=progress)[:, 0].numpy()
    wav = resample(wav, codec.sample_rate, header.sample_rate)
    wav = np.pad(wav[:, : header.length], ((0, 0), (0, max(0, header.length - wav.shape[1]))))
    return wav, header.sample_rate
