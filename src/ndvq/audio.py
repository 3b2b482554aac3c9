"""Reading, writing and resampling audio. Arrays are float32 [channels, samples]."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
import os
from pathlib import Path
import re
import tempfile

import numpy as np
import soundfile as sf
import soxr

from ndvq.errors import NdvqError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au")


# libsndfile notes a data chunk shorter than its header declares as "data : 32000 (should be 15978)".
_SHORT_CHUNK = re.compile(r"^(?:data|SSND) : (\d+) \(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the size unset


@contextmanager
def open_audio(path: str | os.PathLike) -> Iterator[sf.SoundFile]:
    """Open an audio file for reading; rejects unreadable, truncated (WAV/AIFF) and empty files."""
    try:
        audio = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        detail = str(error).split("\n")[0].removeprefix(f"Error opening {str(path)!r}: ")
        raise NdvqError(f"{path}: cannot decode audio ({detail})") from None
    except OSError as error:
        raise NdvqError(f"{path}: {error.strerror or error}") from None
    with audio:
        short = _SHORT_CHUNK.search(audio.extra_info)
        if short and int(short[1]) not in _UNKNOWN_SIZES and int(short[2]) < int(short[1]):
            raise NdvqError(f"{path}: truncated file ({short[2]} of {short[1]} bytes of audio data)")
        if audio.frames == 0:
            raise NdvqError(f"{path}: no audio samples (empty or truncated file)")
        yield audio


def audio_blocks(audio: sf.SoundFile, frames: int) -> Iterator[np.ndarray]:
    """An open file from its start, as float32 blocks [C, <= frames] (-1: all at once), each checked to be
    finite."""
    audio.seek(0)
    while True:
        try:
            block = audio.read(frames, dtype="float32", always_2d=True).T
        except (sf.LibsndfileError, RuntimeError) as error:
            raise NdvqError(f"{audio.name}: cannot decode audio ({str(error).splitlines()[0]})") from None
        if block.shape[1] == 0:
            return
        yield check_audio(block, str(audio.name))


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a whole file: (wav [C, T] float32, sample rate). See open_audio for what is rejected."""
    with open_audio(path) as audio:
        for wav in audio_blocks(audio, -1):  # one block: the whole file
            return wav, audio.samplerate
    raise NdvqError(f"{path}: no audio samples (empty or truncated file)")


def check_audio(wav: np.ndarray, name: str) -> np.ndarray:
    """wav [C, T] as float32, after checking that it is non-empty and finite."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 2 or wav.shape[0] == 0:
        raise NdvqError(f"{name}: expected audio of shape [channels, samples], got {wav.shape}")
    if wav.shape[1] == 0:
        raise NdvqError(f"{name}: no audio samples (empty or truncated file)")
    if not np.isfinite(wav).all():
        raise NdvqError(f"{name}: the audio contains NaN or infinite samples")
    return wav


def resample(wav: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """wav [C, T] from source_rate to target_rate Hz with soxr (high quality)."""
    if source_rate == target_rate:
        return wav
    return np.ascontiguousarray(soxr.resample(wav.T, source_rate, target_rate).T, dtype=np.float32)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); renamed onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
    """Write wav [C, T] atomically; the format follows the suffix (16-bit PCM for WAV)."""
    write_audio_blocks(path, [wav], sample_rate, wav.shape[0])


def write_audio_blocks(path: str | os.PathLike, blocks: Iterable[np.ndarray], sample_rate: int, channels: int) -> None:
    """Write consecutive blocks [C, n] to one file, atomically: nothing appears at `path` unless all succeed."""
    path = Path(path)
    subtype = "PCM_16" if path.suffix.lower() == ".wav" else None
    with atomic_path(path) as temporary:
        try:
            with sf.SoundFile(temporary, "w", sample_rate, channels, subtype, format=_format(path)) as audio:
                for block in blocks:
                    audio.write(np.clip(block, -1.0, 1.0).T)
        except (sf.LibsndfileError, TypeError, ValueError) as error:
            raise NdvqError(f"{path}: cannot write audio ({error})") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The contents of a file; NdvqError naming it if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise NdvqError(f"{path}: {error.strerror or error}") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def _format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    formats = {"aif": "AIFF", "opus": "OGG", "mp3": "MP3"}
    if suffix.upper() in sf.available_formats() or suffix in formats:
        return formats.get(suffix, suffix.upper())
    raise NdvqError(f"{path}: unknown audio format {path.suffix!r} (use .wav, .flac or .ogg)")
