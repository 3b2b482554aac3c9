"""Reading, writing and resampling audio. Arrays are float32 [channels, samples]."""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
import errno
import os
from pathlib import Path
import re
import secrets
from typing import TypeVar

import numpy as np
import soundfile as sf
import soxr

from ndvq.errors import NdvqError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au")
_HIGH_RESOLUTION = ("PCM_24", "PCM_32", "FLOAT", "DOUBLE")  # sample formats above 16 bits
_LOSSLESS = ("PCM_S8", "PCM_U8", "PCM_16", *_HIGH_RESOLUTION)  # those a decoded file can carry over
T = TypeVar("T")


# libsndfile notes a data chunk shorter than its header declares as "data : 32000 (should be 15978)" (WAV) or
# " SSND : 336400 (should be 168177)" (AIFF, indented).
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND) : (\d+) \(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the size unset


@contextmanager
def open_audio(path: str | os.PathLike) -> Iterator[sf.SoundFile]:
    """Open an audio file for reading; rejects missing, unreadable, truncated (WAV/AIFF) and empty files."""
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):  # libsndfile would say "System error"
        raise NdvqError(f"{path}: {'is a directory' if os.path.isdir(path) else 'no such file'}")
    try:
        with _quiet_stderr(Path(str(path)).suffix.lower() == ".mp3"):
            audio = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        detail = str(error).split("\n")[0].removeprefix(f"Error opening {str(path)!r}: ")
        raise NdvqError(f"{path}: cannot decode audio ({detail})") from None
    except OSError as error:
        raise NdvqError(f"{path}: {error.strerror or error}") from None
    with audio:
        if audio.format == "OGG" and not _ogg_last_page_whole(Path(path)):
            raise NdvqError(f"{path}: truncated file (its last Ogg page is cut off)")
        short = _SHORT_CHUNK.search(audio.extra_info)
        if short and int(short[1]) not in _UNKNOWN_SIZES and int(short[2]) < int(short[1]):
            raise NdvqError(f"{path}: truncated file ({short[2]} of {short[1]} bytes of audio data)")
        if audio.frames == 0:
            raise NdvqError(f"{path}: no audio samples (empty or truncated file)")
        yield audio


def audio_files(folder: str | os.PathLike, suffixes: tuple[str, ...] = AUDIO_SUFFIXES) -> list[Path]:
    """Every file below folder (recursively) whose suffix, in any case, is one of `suffixes`; sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def audio_seconds(path: str | os.PathLike) -> float:
    """A file's duration in seconds, from its header (an estimate for an MP3 without a Xing, Info or VBRI header);
    NdvqError naming the file as open_audio's."""
    with open_audio(path) as audio:
        return audio.frames / audio.samplerate


def audio_blocks(audio: sf.SoundFile, frames: int) -> Iterator[np.ndarray]:
    """An open file from its start, as float32 blocks [C, <= frames] (-1: all at once), each checked to be
    finite."""

    def decode(step: Callable[[], T]) -> T:
        try:
            with _quiet_stderr(audio.format == "MP3"):
                return step()
        except (sf.LibsndfileError, RuntimeError) as error:
            raise NdvqError(f"{audio.name}: cannot decode audio ({str(error).splitlines()[0]})") from None

    decode(lambda: audio.seek(0))  # a file cut short can fail here already
    # The other formats' length is exact; MP3's only with a Xing, Info or VBRI header (then within 1%).
    mp3 = audio.format == "MP3"
    declared = 0 if mp3 and not _mp3_declares_length(audio.name) else audio.frames
    decoded = 0
    while True:
        block = decode(lambda: audio.read(frames, dtype="float32", always_2d=True)).T
        if block.shape[1] == 0:
            missing = declared - decoded - (declared // 100 if mp3 else 0)
            if missing > 0:
                raise NdvqError(
                    f"{audio.name}: damaged or truncated audio (decoded {decoded} of the {audio.frames} samples "
                    "its header declares)"
                )
            return
        decoded += block.shape[1]
        yield check_audio(block, str(audio.name))


@contextmanager
def _quiet_stderr(quiet: bool) -> Iterator[None]:
    """Silence file descriptor 2 while `quiet`: libmpg123 prints its decoding complaints there itself."""
    if not quiet:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _mp3_declares_length(name: object) -> bool:
    """Whether the MP3 file `name` starts (after any ID3v2 tag) with a Xing, Info or VBRI header, which states
    its frame count. Without one libsndfile estimates the length from the first frame's bitrate, and a
    variable-bitrate file decodes to far fewer (or more) samples than that estimate: no check is possible."""
    if not isinstance(name, (str, os.PathLike)):
        return False
    with open(name, "rb") as file:
        head = file.read(10)
        if head[:3] == b"ID3" and len(head) == 10:  # ID3v2: a 28-bit "syncsafe" size, plus a footer if flagged
            size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F
            file.seek(10 + size + (10 if head[5] & 0x10 else 0))
        else:
            file.seek(0)
        first = file.read(4096)  # the first frame (a layer III frame is at most 1,441 bytes) and any junk before it
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


def _ogg_last_page_whole(path: Path) -> bool:
    """Whether an Ogg file's last page holds all the bytes its header declares (a file cut inside a page does
    not). The end-of-stream flag is not required: some encoders never set it (klettres-data's Vorbis files), so
    a file cut exactly between two pages cannot be told from a whole one; it decodes to its whole pages."""
    size = path.stat().st_size
    with path.open("rb") as file:
        file.seek(max(0, size - 65_536 - 282))  # a page: 27 bytes + up to 255 lacing values + 65,025 of data
        tail = file.read()
    start = tail.rfind(b"OggS")
    while start >= 0:
        if start + 27 > len(tail):  # a page header cut off
            return False
        if tail[start + 4] == 0:  # stream structure version 0 (else "OggS" inside a packet's data)
            segments = tail[start + 26]
            lacing = tail[start + 27 : start + 27 + segments]
            return len(lacing) == segments and start + 27 + segments + sum(lacing) <= len(tail)
        start = tail.rfind(b"OggS", 0, start)
    return False


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a whole file: (wav [C, T] float32, sample rate). See open_audio for what is rejected."""
    with open_audio(path) as audio:
        blocks = list(audio_blocks(audio, -1))  # one block: the whole file
    if not blocks:
        raise NdvqError(f"{path}: no audio samples (empty or truncated file)")
    return blocks[0], audio.samplerate


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


def resample(wav: np.ndarray, source_rate: float, target_rate: int) -> np.ndarray:
    """wav [C, T] from source_rate to target_rate Hz with soxr (high quality)."""
    if source_rate == target_rate:
        return wav
    return np.ascontiguousarray(soxr.resample(wav.T, source_rate, target_rate).T, dtype=np.float32)


def mono_at(wav: np.ndarray, rate: float, target_rate: int) -> np.ndarray:
    """Audio [C, T] at `rate` mixed down to mono and resampled: float32 [T'] at `target_rate`."""
    return resample(wav.mean(axis=0, keepdims=True), rate, target_rate)[0].astype(np.float32, copy=False)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty file beside `path` (hidden, same suffix), renamed onto `path` only if the block succeeds
    and removed otherwise, also when a signal ends the program (see cli).

    The file is created as open() creates files, so `path` gets the mode the umask gives (0644 under 022).
    OSErrors about the temporary file (creating, writing, renaming it) become NdvqErrors naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NdvqError(f"{path}: cannot create its folder ({error.strerror or error}: {error.filename})") from None
    try:
        temporary = _new_file_beside(path)
    except OSError as error:
        raise NdvqError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        if str(temporary) not in (error.filename, error.filename2):
            raise
        raise NdvqError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        temporary.unlink(missing_ok=True)


def _new_file_beside(path: Path) -> Path:
    """Create an empty file `.STEM.RANDOM.tmpSUFFIX` next to `path`, mode 0666 less the umask."""
    for _ in range(100):
        temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temporary
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def check_output(
    path: str | os.PathLike,
    audio: bool = False,
    subtype: str | None = None,
    source: str | os.PathLike | None = None,
) -> None:
    """Refuse, before any work, an output path that is a directory or the input file `source`; for audio also
    an unknown suffix or a subtype its container cannot hold."""
    path = Path(path)
    if path.is_dir():
        raise NdvqError(f"{path}: is a directory (give an output file name)")
    if source is not None and path.exists() and Path(source).exists() and path.samefile(source):
        raise NdvqError(f"{path}: is the input file; write the output elsewhere")
    if audio:
        _subtype(path, subtype)


def subtype_like(source: str | os.PathLike, target: str | os.PathLike) -> str | None:
    """The sample format of audio file `source` if `target`'s container holds it (24-bit or more becomes
    PCM_24 where that is the best it holds); None (the container's default) otherwise or if unreadable."""
    try:
        with _quiet_stderr(Path(source).suffix.lower() == ".mp3"):
            subtype = sf.info(str(source)).subtype
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return None
    try:
        container = _format(Path(target))
    except NdvqError:
        return None  # check_output says what is wrong with the target
    if subtype in _LOSSLESS and sf.check_format(container, subtype):
        return subtype
    if subtype in _HIGH_RESOLUTION and sf.check_format(container, "PCM_24"):
        return "PCM_24"
    return None


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write wav [C, T] atomically; the format follows the suffix (see write_audio_blocks)."""
    write_audio_blocks(path, [wav], sample_rate, wav.shape[0], subtype)


def write_audio_blocks(
    path: str | os.PathLike,
    blocks: Iterable[np.ndarray],
    sample_rate: int,
    channels: int,
    subtype: str | None = None,
) -> None:
    """Write consecutive blocks [C, n] to one file, atomically: nothing appears at `path` unless all succeed.

    The container follows the suffix, the sample format is `subtype` (a soundfile subtype such as PCM_24 or
    FLOAT; default: the container's, 16-bit PCM for WAV and FLAC). Samples are clipped to [-1, 1] except
    in float formats.
    """
    path = Path(path)
    container, subtype = _format(path), _subtype(path, subtype)
    clip = subtype not in ("FLOAT", "DOUBLE")
    with atomic_path(path) as temporary:
        try:
            with sf.SoundFile(temporary, "w", sample_rate, channels, subtype, format=container) as audio:
                for block in blocks:
                    audio.write((np.clip(block, -1.0, 1.0) if clip else block).T)
        except (sf.LibsndfileError, TypeError, ValueError) as error:
            detail = getattr(error, "error_string", None) or str(error)  # without the temporary file's name
            raise NdvqError(f"{path}: cannot write audio ({detail})") from None


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


def _subtype(path: Path, subtype: str | None) -> str:
    """`subtype` (any case) if `path`'s container holds it, else NdvqError; None: the container's default."""
    container = _format(path)
    if subtype is None:
        return sf.default_subtype(container)
    if not sf.check_format(container, subtype.upper()):
        available = ", ".join(sf.available_subtypes(container))
        raise NdvqError(f"{path}: {container} files cannot hold samples as {subtype} (they can: {available})")
    return subtype.upper()
