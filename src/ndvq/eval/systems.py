"""The codecs an evaluation compares, behind one interface: audio in, decoded audio and bytes out.

An NDVQ model runs through the public API (compress, then decompress); Opus and Codec2 run through
their command-line tools (Debian's opus-tools and codec2), when installed.
"""

from dataclasses import dataclass
import os
from pathlib import Path
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from ndvq.audio import mono_at, resample
from ndvq.codec import Codec
from ndvq.compress import WRITER_VERSION, codes_identity, compress, decompress
from ndvq.errors import NdvqError
from ndvq.refine import VERSION as REFINE_VERSION

CODEC2_MODES = {"3200": 3.2, "2400": 2.4, "1600": 1.6, "1400": 1.4, "1300": 1.3, "1200": 1.2, "700C": 0.7}


@dataclass
class Coded:
    audio: np.ndarray  # [C, T] float32 at the input's rate
    bytes: int  # size of what the codec wrote, container included


class NdvqSystem:
    """A model directory (or preset) at its bitrates in kbps; with `entropy`, its files are entropy-coded with
    the model's tables (and assigned with their rate weight); with `refine` > 0, encoded with that many steps of
    refinement (ndvq.refine). `codec`: the model already loaded (from `model`), to share it between systems."""

    aligned = True  # decodes are sample-aligned with the input by construction: no delay to search for

    def __init__(
        self, label: str, model: str, entropy: bool = False, refine: int = 0, codec: Codec | None = None
    ) -> None:
        self.label, self.model, self.entropy, self.refine = label, model, entropy, refine
        self.codec = Codec.load(model) if codec is None else codec
        if entropy and self.codec.entropy is None:
            raise NdvqError(f"{model}: no entropy tables to evaluate entropy coding with (ndvq fit-entropy)")
        # Results cached for other weights, tables, rate weights or refinements are not this system's.
        self.identity = codes_identity(self.codec) if entropy else self.codec.identity().hex()
        self.identity += f"-file{WRITER_VERSION}"
        if refine:
            self.identity += f"-refine{refine}v{REFINE_VERSION}"

    def kbps(self, bitrate: str) -> float:
        return float(bitrate)

    def code(self, wav: np.ndarray, rate: int, bitrate: str) -> Coded:
        data = compress(self.codec, wav, rate, float(bitrate), entropy=self.entropy, refine_steps=self.refine)
        decoded, _ = decompress(data, self.codec)
        return Coded(decoded, len(data))


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise NdvqError(f"{command[0]} failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")


class OpusSystem:
    """Opus (libopus via opusenc/opusdec), VBR at a target bitrate in kbps, in an Ogg container."""

    label = "opus"
    identity = ""
    aligned = False  # opusdec drops the pre-skip, but resampling leaves a sample or two: searched for

    def __init__(self) -> None:
        if not (shutil.which("opusenc") and shutil.which("opusdec")):
            raise NdvqError("opus: opusenc/opusdec not found (Debian package opus-tools)")

    def kbps(self, bitrate: str) -> float:
        return float(bitrate)

    def code(self, wav: np.ndarray, rate: int, bitrate: str) -> Coded:
        with tempfile.TemporaryDirectory() as folder:
            source, coded, decoded = (os.path.join(folder, n) for n in ("in.wav", "out.opus", "out.wav"))
            sf.write(source, wav.T, rate, subtype="PCM_16")
            _run(["opusenc", "--quiet", "--bitrate", bitrate, source, coded])
            _run(["opusdec", "--quiet", "--rate", str(rate), coded, decoded])
            audio, _ = sf.read(decoded, dtype="float32", always_2d=True)
            return Coded(audio.T[:, : wav.shape[1]], Path(coded).stat().st_size)


class Codec2System:
    """Codec2 (c2enc/c2dec), 8 kHz mono; the input is mixed down and resampled there and back."""

    label = "codec2"
    identity = ""
    aligned = False  # a delay of about 18 ms (3200) to 30 ms (700C), searched for

    def __init__(self) -> None:
        if not (shutil.which("c2enc") and shutil.which("c2dec")):
            raise NdvqError("codec2: c2enc/c2dec not found (Debian package codec2)")

    def kbps(self, bitrate: str) -> float:
        if bitrate not in CODEC2_MODES:
            raise NdvqError(f"codec2: unknown mode {bitrate} (modes: {', '.join(CODEC2_MODES)})")
        return CODEC2_MODES[bitrate]

    def code(self, wav: np.ndarray, rate: int, bitrate: str) -> Coded:
        self.kbps(bitrate)  # checks the mode
        narrow = mono_at(wav, rate, 8000)
        with tempfile.TemporaryDirectory() as folder:
            source, coded, decoded = (os.path.join(folder, n) for n in ("in.raw", "out.c2", "out.raw"))
            (np.clip(narrow, -1, 1) * 32767).astype("<i2").tofile(source)
            _run(["c2enc", bitrate, source, coded])
            _run(["c2dec", bitrate, coded, decoded])
            audio = np.fromfile(decoded, dtype="<i2").astype(np.float32) / 32768
            size = Path(coded).stat().st_size
        audio = resample(audio[None], 8000, rate)[:, : wav.shape[1]]
        audio = np.pad(audio, ((0, 0), (0, wav.shape[1] - audio.shape[1])))
        return Coded(np.repeat(audio, wav.shape[0], axis=0), size)
