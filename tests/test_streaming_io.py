"""Files of any length in bounded memory: block-wise file coding equals in-memory coding."""

from collections.abc import Callable, Iterator
import importlib
from pathlib import Path
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from ndvq import Codec, CodecConfig, NdvqError, compress, decompress
from ndvq.audio import read_audio, resample
from ndvq.bitstream import read
from ndvq.chunking import map_windows
from ndvq.codec import rms_scale, signal_scale
from ndvq.compress import compress_file, decompress_file
from ndvq.presets import PRESETS

compress_module = importlib.import_module("ndvq.compress")  # `ndvq.compress` is also the function


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model's small steps gain nothing from threads, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_cuts(length: int, count: int, seed: int = 0) -> list[tuple[int, int]]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, length), count, replace=False)).tolist()
    return list(zip([0, *cuts], [*cuts, length], strict=True))


@pytest.mark.parametrize("context", [0, 6])
@pytest.mark.parametrize("length", [200, 196])
def test_windows_do_not_depend_on_blocks(context: int, length: int) -> None:
    conv = torch.nn.Conv1d(1, 1, 9, padding=4)
    signal = torch.randn(1, 1, length)
    whole = torch.cat(list(map_windows(conv, [signal], 32, context, (1, 1))), -1)
    blocks = [signal[..., a:b] for a, b in random_cuts(length, 12)]
    streamed = torch.cat(list(map_windows(conv, blocks, 32, context, (1, 1))), -1)
    assert torch.equal(streamed, whole) and whole.shape == signal.shape


# chunk 32, context 6: 200 leaves 8 after the window centred on 160..192, which ends 2 before the signal does;
# 196 and 192 end within the context of that window, which takes the rest instead of a window of context.
@pytest.mark.parametrize(("length", "windows"), [(200, 7), (196, 6), (192, 6), (30, 1)])
def test_no_window_only_recomputes_context(length: int, windows: int) -> None:
    sizes = []

    def double(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[-1])
        return 2 * x

    signal = torch.randn(1, 1, length)
    out = torch.cat(list(map_windows(double, [signal], 32, 6, (1, 1))), -1)
    assert torch.equal(out, 2 * signal)
    assert len(sizes) == windows and max(sizes) <= 32 + 2 * 6


def test_scale_does_not_depend_on_blocks() -> None:
    signal = 0.1 * torch.randn(3, 1, 200_000)
    blocks = [signal[..., a:b] for a, b in random_cuts(200_000, 30)]
    assert torch.equal(signal_scale(blocks), signal_scale([signal]))
    torch.testing.assert_close(signal_scale([signal]), rms_scale(signal))


def write(path: Path, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> Path:
    """A tone plus noise, [channels, seconds * rate], written 10 s at a time (float WAV, 24-bit FLAC)."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", rate, channels, "FLOAT" if path.suffix == ".wav" else "PCM_24") as audio:
        for start in range(0, int(seconds * rate), 10 * rate):
            t = np.arange(start, min(start + 10 * rate, int(seconds * rate))) / rate
            wav = 0.2 * np.sin(2 * np.pi * 220 * t)[None] + 0.05 * rng.standard_normal((channels, len(t)))
            audio.write(wav.T.astype(np.float32))
    return path


def causal_tiny() -> Codec:
    torch.manual_seed(1)
    return Codec(CodecConfig(**{**PRESETS["tiny"].to_dict(), "causal": True})).eval()


@pytest.mark.parametrize("causal", [False, True])
def test_file_gives_the_bytes_of_the_in_memory_path(tmp_path, tiny: Codec, monkeypatch, causal: bool) -> None:
    codec = causal_tiny() if causal else tiny
    monkeypatch.setattr(compress_module, "BLOCK_SECONDS", 0.37)  # many blocks, cut anywhere
    source = write(tmp_path / "in.wav", 12.3, 16000)  # two of the codec's 10 s windows
    data = compress_file(codec, source, tmp_path / "out.ndvq", 4.0)
    assert (tmp_path / "out.ndvq").read_bytes() == data == compress(codec, *read_audio(source), 4.0)


@pytest.mark.parametrize("rate, channels", [(44100, 2), (8000, 1)])
def test_resampled_file_round_trips(tmp_path, tiny: Codec, monkeypatch, rate: int, channels: int) -> None:
    monkeypatch.setattr(compress_module, "BLOCK_SECONDS", 0.37)
    source = write(tmp_path / "in.flac", 2.3, rate, channels)
    wav, _ = read_audio(source)
    data = compress_file(tiny, source, tmp_path / "in.ndvq", 4.0, refine_steps=0)  # one pass, as Codec.encode
    assert data == compress(tiny, wav, rate, 4.0, refine_steps=0)
    # Streaming resampling against resampling the whole signal at once (identical samples with soxr 1.1).
    _, codes = read(data)
    at_once, _ = tiny.encode(torch.from_numpy(resample(wav, rate, 16000))[:, None], 4.0)
    assert np.mean(codes == at_once.numpy()) > 0.99
    header = decompress_file(tiny, tmp_path / "in.ndvq", tmp_path / "out.wav")
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.channels, info.frames) == (rate, channels, wav.shape[1])
    assert (header.sample_rate, header.channels, header.length) == (rate, channels, wav.shape[1])
    decoded, decoded_rate = decompress(data, tiny)
    written, _ = sf.read(tmp_path / "out.wav", always_2d=True, dtype="float32")
    assert decoded_rate == rate and decoded.shape == wav.shape
    assert np.abs(written.T - np.clip(decoded, -1, 1)).max() <= 1 / 32768  # 16-bit WAV


def test_nan_deep_in_a_long_file_leaves_nothing(tmp_path, tiny: Codec, monkeypatch) -> None:
    monkeypatch.setattr(compress_module, "BLOCK_SECONDS", 1.0)
    wav = np.full((1, 16000 * 30), 0.1, np.float32)
    wav[0, 16000 * 27] = np.nan
    sf.write(tmp_path / "late_nan.wav", wav.T, 16000, subtype="FLOAT")
    calls = []
    hook = tiny.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(NdvqError, match="late_nan.wav: the audio contains NaN"):
            compress_file(tiny, tmp_path / "late_nan.wav", tmp_path / "late_nan.ndvq", 2.0)
    finally:
        hook.remove()
    assert not calls  # found by the first pass, before any encoding
    assert [p.name for p in tmp_path.iterdir()] == ["late_nan.wav"]


def traced_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """fn's result and the peak bytes Python and numpy allocated while it ran (torch's own are not traced)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_length(tmp_path, tiny: Codec) -> None:
    """30 s and 300 s at 48 kHz (resampled both ways): the same buffers, only the codes grow."""
    windows = {"encoder": 0, "decoder": 0}

    def record(name: str, size: Callable[[torch.Tensor], int]) -> Callable:
        def hook(_module, inputs) -> None:
            windows[name] = max(windows[name], size(inputs[0]))

        return hook

    hooks = [
        tiny.encoder.register_forward_pre_hook(record("encoder", lambda x: x.untyped_storage().nbytes() // 4)),
        tiny.decoder.register_forward_pre_hook(record("decoder", lambda x: x.shape[-1])),
    ]
    peaks = {}
    try:
        for seconds in (30, 300):
            source = write(tmp_path / f"{seconds}.wav", seconds, 48000, seed=seconds)
            coded, encode_peak = traced_peak(lambda s=source: compress_file(tiny, s, tmp_path / "x.ndvq", 2.0))
            header, decode_peak = traced_peak(lambda: decompress_file(tiny, tmp_path / "x.ndvq", tmp_path / "x.wav"))
            assert len(coded) > 250 * seconds and sf.info(str(tmp_path / "x.wav")).frames == header.length
            peaks[seconds] = max(encode_peak, decode_peak)
    finally:
        for hook in hooks:
            hook.remove()
    # The extra 270 s are 52 MB as one float32 copy at 48 kHz; their codes, as int64, 0.5 MB.
    assert peaks[300] - peaks[30] < 4_000_000, peaks
    # The model sees windows of 10 s plus context: its input buffer holds at most that plus a block.
    chunk, context = 2500, tiny.context_frames
    assert windows["decoder"] <= chunk + 2 * context, windows
    assert windows["encoder"] <= (chunk + 2 * context) * tiny.hop_length + 2 * 16000 * 10, windows
