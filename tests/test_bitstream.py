import os
import tempfile

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from ndvq import Codec, NdvqError, bitstream, compress, decompress
from ndvq.compress import encode_file


@pytest.mark.parametrize("bits", [1, 3, 8, 10, 13, 16])
def test_bit_packing_round_trip(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 1 << bits, size=(2, 3, 37))
    data = bitstream.pack_codes(codes, bits)
    assert len(data) == (codes.size * bits + 7) // 8
    assert np.array_equal(bitstream.unpack_codes(data, codes.size, bits).reshape(codes.shape), codes)


def test_compress_round_trip_is_bit_exact_for_codes(tiny: Codec, speech) -> None:
    wav, rate = speech
    data = compress(tiny, wav, rate, 4.0, refine_steps=0)  # the one-pass encoder, Codec.encode's
    header, codes = bitstream.read(data)
    expected, scale = tiny.encode(torch.from_numpy(wav)[:, None], 4.0)
    assert np.array_equal(codes, expected.numpy())
    assert (header.stages, header.bits, header.channels, header.length) == (2, 8, 1, wav.shape[1])
    decoded, decoded_rate = decompress(data, tiny)
    assert decoded_rate == rate and decoded.shape == wav.shape and decoded.dtype == np.float32
    stored = torch.tensor(header.scales)[:, None, None]
    reference = tiny.decode(expected, stored)[:, 0, : wav.shape[1]].numpy()
    np.testing.assert_allclose(decoded, reference, atol=1e-6)


def test_decoded_audio_has_the_input_level(tiny: Codec, speech) -> None:
    """The stored scale is the input's RMS corrected for the decoder's level, so that the decode has the input's
    RMS per channel (within the correction's 0.01 dB steps) at any rate, whatever the model's own gain; the codes
    are those of the input's RMS alone (`match_level=False`, what tokenizing uses)."""
    wav, rate = speech
    cases = [(wav, rate), (0.01 * wav, rate)]
    for other in (44100, 8000):  # two channels of different loudness, resampled to and from the model's rate
        mono = soxr.resample(wav[0], rate, other).astype(np.float32)
        cases.append((np.stack([mono, 0.1 * mono[::-1]]), other))
    for audio, audio_rate in cases:
        data = compress(tiny, audio, audio_rate, 4.0, refine_steps=0)
        header, codes = bitstream.read(data)
        decoded, _ = decompress(data, tiny)
        level = 10 * np.log10(np.mean(decoded.astype(np.float64) ** 2, axis=1) / np.mean(audio**2, axis=1))
        assert np.abs(level).max() < 0.01
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "in.wav")
            sf.write(path, audio.T, audio_rate, subtype="FLOAT")
            plain = bitstream.read(encode_file(tiny, path, 4.0, refine_steps=0, match_level=False))
        assert np.array_equal(plain[1], codes)
        assert np.abs(20 * np.log10(np.array(header.scales) / np.array(plain[0].scales))).min() > 1  # corrected


@pytest.mark.parametrize("channels, rate, seconds", [(1, 16000, 1.0), (2, 44100, 0.7), (3, 8000, 0.01)])
def test_file_size_equals_formula(tiny: Codec, channels: int, rate: int, seconds: float) -> None:
    wav = 0.1 * np.random.default_rng(0).standard_normal((channels, int(rate * seconds))).astype(np.float32)
    for bandwidth in tiny.bandwidths:
        data = compress(tiny, wav, rate, bandwidth)
        stages, frames = tiny.stages(bandwidth), int(np.ceil(round(wav.shape[1] * 16000 / rate) / 64))
        payload = (channels * stages * frames * 8 + 7) // 8
        assert len(data) == payload + bitstream.header_size(channels) == payload + 46 + 4 * channels


@pytest.fixture(scope="module")
def small_file(tiny: Codec) -> bytes:
    wav = 0.1 * np.random.default_rng(1).standard_normal((1, 300)).astype(np.float32)
    return compress(tiny, wav, 16000, 8.0)


def test_every_single_bit_flip_is_detected(small_file: bytes) -> None:
    for position in range(len(small_file) * 8):
        corrupted = bytearray(small_file)
        corrupted[position // 8] ^= 1 << (position % 8)
        with pytest.raises(NdvqError):
            bitstream.read(bytes(corrupted))


@pytest.mark.parametrize("cut", [1, 4, 10, 60])
def test_truncated_file_is_rejected(small_file: bytes, cut: int) -> None:
    with pytest.raises(NdvqError, match="x.ndvq: truncated"):
        bitstream.read(small_file[:-cut], "x.ndvq")


@pytest.mark.parametrize("keep", [2, 10, 20])
def test_file_cut_inside_its_header_says_truncated(small_file: bytes, keep: int) -> None:
    with pytest.raises(NdvqError, match="x.ndvq: truncated .ndvq file"):
        bitstream.read(small_file[:keep], "x.ndvq")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "x.ndvq: not an .ndvq file"),
        (b"RIFF" + bytes(100), "x.ndvq: not an .ndvq file"),
        (b"NDVQ\x07" + bytes(100), "x.ndvq: unsupported .ndvq format version 7"),
    ],
)
def test_foreign_file_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(NdvqError, match=message):
        bitstream.read(data, "x.ndvq")


def test_file_from_another_model_is_rejected(small_file: bytes, tiny: Codec) -> None:
    torch.manual_seed(5)
    other = Codec(tiny.config).eval()
    with pytest.raises(NdvqError, match="made by another model"):
        decompress(small_file, other)


def test_silence_and_very_short_audio(tiny: Codec) -> None:
    for wav in (np.zeros((1, 5000), np.float32), np.full((1, 1), 0.5, np.float32)):
        decoded, _ = decompress(compress(tiny, wav, 16000, 2.0), tiny)
        assert decoded.shape == wav.shape and np.isfinite(decoded).all()


@pytest.mark.parametrize(
    "wav, message",
    [
        (np.zeros((1, 0), np.float32), "no audio samples"),
        (np.array([[0.0, np.nan, 0.1]], np.float32), "NaN or infinite"),
        (np.array([[0.0, np.inf]], np.float32), "NaN or infinite"),
    ],
)
def test_invalid_audio_is_rejected(tiny: Codec, wav: np.ndarray, message: str) -> None:
    with pytest.raises(NdvqError, match=message):
        compress(tiny, wav, 16000, 2.0)
