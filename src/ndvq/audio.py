"""Reading, writing and resampling audio. Arrays are float32 [channels, samples]."""

from collections.abc import Iterator
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


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode any file soundfile reads: (wav [C, T] float32, sample rate).

    Rejects truncated WAV/AIFF files, empty audio and non-finite samples.
    """
    try:
        with sf.SoundFile(path) as audio:
            short = _SHORT_CHUNK.search(audio.extra_info)
            if short and int(short[1]) not in _UNKNOWN_SIZES and int(short[2]) < int(short[1]):
                raise NdvqError(f"{path}: truncated file ({short[2]} of {short[1]} bytes of audio data)")
            sample_rate = audio.samplerate
            wav = audio.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        detail = str(error).split("\n")[0].removeprefix(f"Error opening {str(path)!r}: ")
        raise NdvqError(f"{path}: cannot decode audio ({detail})") from None
    except OSError as error:
        raise NdvqError(f"{path}: {error.strerror or error}") from None
    return check_audio(wav.T, str(path)), sample_rate


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
    path = Path(path)
    subtype = "PCM_16" if path.suffix.lower() == ".wav" else None
    with atomic_path(path) as temporary:
        try:
            sf.write(temporary, np.clip(wav, -1.0, 1.0).T, sample_rate, subtype=subtype, format=_format(path))
        except (sf.LibsndfileError, TypeError, ValueError) as error:
            raise NdvqError(f"{path}: cannot write audio ({error})") from None


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
