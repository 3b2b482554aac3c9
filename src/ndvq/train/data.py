"""Training data: random fixed-length crops of audio files, mono, at the model's rate."""

from collections import Counter
import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ndvq.audio import audio_files, audio_seconds, mono_at
from ndvq.errors import NdvqError
from ndvq.manifest import read_manifest

log = logging.getLogger("ndvq")


def _scan(folder: Path) -> tuple[list[tuple[Path, float]], list[tuple[str, str]]]:
    """Audio files below folder, sorted, with their durations in seconds; and (path, reason) of unreadable ones."""
    files, skipped = [], []
    for path in audio_files(folder):
        try:
            files.append((path, audio_seconds(path)))
        except NdvqError as error:
            skipped.append((str(path), str(error).removeprefix(f"{path}: ")))
    return files, skipped


MAX_SPEED = 0.5  # speed perturbation draws from [1 - speed, 1 + speed] with speed under this
MAX_EQUALISER_DB = 40.0
# The random equaliser's gains are drawn at these frequencies (octaves, Hz) and interpolated over log frequency;
# below the first and above the last the gain is flat.
EQUALISER_HZ = tuple(31.25 * 2**octave for octave in range(9))  # 31.25 .. 8000


def check_augmentation(speed: float, equaliser_db: float = 0.0, dc_offset: float = 0.0) -> None:
    """Raise NdvqError naming the data key whose augmentation setting is out of range."""
    if not 0.0 <= speed < MAX_SPEED:
        raise NdvqError(f"data.speed (speed perturbation): must be in [0, {MAX_SPEED:g}), got {speed:g}")
    if not 0.0 <= equaliser_db <= MAX_EQUALISER_DB:
        raise NdvqError(f"data.equaliser (random EQ, dB): must be in [0, {MAX_EQUALISER_DB:g}], got {equaliser_db:g}")
    if not 0.0 <= dc_offset <= 1.0:
        raise NdvqError(f"data.dc_offset (a constant, times the crop's RMS): must be in [0, 1], got {dc_offset:g}")


def random_equaliser(wav: np.ndarray, sample_rate: int, max_db: float, rng: np.random.Generator) -> np.ndarray:
    """wav [T] through a random smooth EQ: a gain drawn uniformly in [-max_db, max_db] dB at each of EQUALISER_HZ,
    linear in dB over log frequency between them (applied to the spectrum of the whole crop): [T], float32."""
    gains_db = rng.uniform(-max_db, max_db, len(EQUALISER_HZ))
    frequencies = np.fft.rfftfreq(len(wav), 1 / sample_rate)
    octaves = np.log2(np.maximum(frequencies, EQUALISER_HZ[0]))
    gain = 10 ** (np.interp(octaves, np.log2(EQUALISER_HZ), gains_db) / 20)
    return np.fft.irfft(np.fft.rfft(wav) * gain, n=len(wav)).astype(np.float32)


class AudioDataset(torch.utils.data.Dataset):
    """Random crops of `segment_seconds` from a folder of audio files or a manifest.

    Item i of epoch e is a crop of file i at an offset drawn from a generator seeded by (seed, e, i),
    so a resumed run, any worker process and any rank see exactly the same crops. Shape [1, samples].
    Item (i, k) is the (k + 1)-th crop of file i in the epoch, its own draw (seed, e, i, k) ((i, 0) is item i):
    for samplers that take a file more than once per epoch (`folder_weights`).
    With `speed` > 0 each crop is also played at a speed drawn uniformly in [1 - speed, 1 + speed]
    (tempo and pitch together, as Kaldi's speed perturbation): more voices from a few speakers. With
    `equaliser_db` > 0 it then passes through a random EQ (random_equaliser), and with `dc_offset` > 0 gets a
    constant drawn in [-dc_offset, dc_offset] times its RMS: more microphones and rooms than the corpus has.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        sample_rate: int,
        segment_seconds: float,
        min_seconds: float = 0.5,
        max_seconds: float = 20.0,
        seed: int = 0,
        speed: float = 0.0,
        equaliser_db: float = 0.0,
        dc_offset: float = 0.0,
    ) -> None:
        check_augmentation(speed, equaliser_db, dc_offset)
        source = Path(source)
        if source.is_dir():
            files, self.skipped = _scan(source)
        elif source.is_file():
            listed = read_manifest(source)
            files = [(path, seconds) for path, seconds in listed if path.is_file()]
            self.skipped = [(str(path), "no such file") for path, _ in listed if not path.is_file()]
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
        self.seed, self.epoch, self.speed = seed, 0, speed
        self.equaliser_db, self.dc_offset = equaliser_db, dc_offset

    def set_epoch(self, epoch: int) -> None:
        """Crops of the next items are drawn for this epoch (call it before each epoch, in every process)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def folder_weights(self, balance: float) -> torch.Tensor:
        """Sampling weights of the files [len(self)], summing to 1: each file's is proportional to the number of
        files in its folder to the power -balance. 0: every file alike; 1: every folder (a voice, in the demo
        corpus) alike, whatever its number of files; between them, as multilingual models sample languages."""
        folders = [str(Path(path).parent) for path, _ in self.files]
        counts = Counter(folders)
        weights = torch.tensor([counts[folder] ** -balance for folder in folders], dtype=torch.float64)
        return weights / weights.sum()

    def __getitem__(self, index: int | tuple[int, int]) -> torch.Tensor:
        """Item `index` (or the (k + 1)-th crop of file i, index (i, k)) of the current epoch: float32 [1, segment
        samples]. A file that fails to decode is reported and replaced by the next item's crop, so one bad file
        never stops training."""
        index, repeat = index if isinstance(index, tuple) else (index, 0)
        if not 0 <= index < len(self.files) or repeat < 0:
            raise IndexError(f"item {index} of a dataset of {len(self.files)}")
        for attempt in range(len(self.files)):
            current = (index + attempt) % len(self.files)
            path = self.files[current][0]
            try:
                return torch.from_numpy(self._crop(path, current, repeat))[None]
            except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
                log.warning("skipped %s while reading: %s", path, (str(error).splitlines() or ["error"])[0])
        raise NdvqError(f"none of the {len(self.files)} files of the dataset could be read")

    def _crop(self, path: str, index: int, repeat: int = 0) -> np.ndarray:
        """Read only the crop (plus a margin for the resampler), mix down, resample, cut or zero-pad: [segment]."""
        rng = np.random.default_rng([self.seed, self.epoch, index] + ([repeat] if repeat else []))
        # Played `speed` times faster: read `speed` times more source and resample as if it ran at rate * speed.
        speed = 1.0 + rng.uniform(-self.speed, self.speed) if self.speed else 1.0
        with sf.SoundFile(path) as audio:
            rate = audio.samplerate
            want = int(np.ceil(self.segment * speed * rate / self.sample_rate)) + 16  # margin for the resampler
            start = int(rng.integers(0, max(1, audio.frames - want + 1)))
            audio.seek(start)
            wav = audio.read(want, dtype="float32", always_2d=True)
        if not np.isfinite(wav).all():
            raise ValueError("non-finite samples")
        wav = mono_at(wav.T, rate * speed, self.sample_rate)[: self.segment]
        wav = np.pad(wav, (0, self.segment - len(wav)))
        # Drawn after the crop's own draws, so that runs without them see the crops they saw before.
        if self.equaliser_db:
            wav = random_equaliser(wav, self.sample_rate, self.equaliser_db, rng)
        if self.dc_offset:
            rms = np.sqrt(np.mean(np.square(wav, dtype=np.float64)))
            wav = (wav + rng.uniform(-self.dc_offset, self.dc_offset) * rms).astype(np.float32)
        return wav
