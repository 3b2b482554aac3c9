"""Training data: random fixed-length crops of audio files, mono, at the model's rate."""

import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ndvq.audio import AUDIO_SUFFIXES, resample
from ndvq.errors import NdvqError

log = logging.getLogger("ndvq")


def read_manifest(path: str | os.PathLike) -> list[tuple[Path, float]]:
    """A TSV manifest (header `path<TAB>seconds`, paths relative to the manifest) -> [(absolute path, seconds)]."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise NdvqError(f"{path}: cannot read manifest ({error})") from None
    if not lines or lines[0].split("\t")[:2] != ["path", "seconds"]:
        raise NdvqError(f"{path}: not a manifest (expected the header 'path<TAB>seconds')")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            rows.append(((path.parent / fields[0]).resolve(), float(fields[1])))
        except (IndexError, ValueError):
            raise NdvqError(f"{path}:{number}: expected 'path<TAB>seconds', got {line!r}") from None
    return rows


def _scan(folder: Path) -> tuple[list[tuple[Path, float]], list[tuple[str, str]]]:
    files, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            info = sf.info(str(path))
            files.append((path, info.frames / info.samplerate))
        except (sf.LibsndfileError, RuntimeError) as error:
            skipped.append((str(path), str(error).splitlines()[0]))
    return files, skipped


class AudioDataset(torch.utils.data.Dataset):
    """Random crops of `segment_seconds` from a folder of audio files or a manifest.

    Item i of epoch e is a crop of file i at an offset drawn from a generator seeded by (seed, e, i),
    so a resumed run, any worker process and any rank see exactly the same crops. Shape [1, samples].
    """

    def __init__(
        self,
        source: str | os.PathLike,
        sample_rate: int,
        segment_seconds: float,
        min_seconds: float = 0.5,
        max_seconds: float = 30.0,
        seed: int = 0,
    ) -> None:
        source = Path(source)
        if source.is_dir():
            files, self.skipped = _scan(source)
        elif source.is_file():
            files, self.skipped = read_manifest(source), []
        else:
            raise NdvqError(f"{source}: no such folder or manifest")
        for path, reason in self.skipped:
            log.warning("skipped %s: %s", path, reason)
        if self.skipped:
            log.warning("%s: skipped %d unreadable files", source, len(self.skipped))
        self.files = [(str(p), s) for p, s in files if min_seconds <= s <= max_seconds]
        if not self.files:
            raise NdvqError(f"{source}: no readable audio files between {min_seconds:g} and {max_seconds:g} s")
        self.sample_rate, self.segment = sample_rate, round(segment_seconds * sample_rate)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        for attempt in range(len(self.files)):
            path, _ = self.files[(index + attempt) % len(self.files)]
            try:
                return torch.from_numpy(self._crop(path, (index + attempt) % len(self.files)))[None]
            except (sf.LibsndfileError, RuntimeError, ValueError) as error:
                log.warning("skipped %s while reading: %s", path, str(error).splitlines()[0])
        raise NdvqError("no file of the dataset could be read")

    def _crop(self, path: str, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        with sf.SoundFile(path) as audio:
            rate = audio.samplerate
            want = int(np.ceil(self.segment * rate / self.sample_rate)) + 16  # margin for the resampler
            start = int(rng.integers(0, max(1, audio.frames - want + 1)))
            audio.seek(start)
            wav = audio.read(want, dtype="float32", always_2d=True)
        if not np.isfinite(wav).all():
            raise ValueError("non-finite samples")
        wav = resample(wav.mean(axis=1)[None], rate, self.sample_rate)[0, : self.segment]
        return np.pad(wav, (0, self.segment - len(wav)))
