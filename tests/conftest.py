from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ndvq import Codec

EXAMPLE = Path(__file__).parent.parent / "examples" / "speech_en_16k.flac"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny() -> Codec:
    return Codec.from_preset("tiny")


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    """The bundled clip's first 1.5 s: wav [1, T] float32, 16 kHz."""
    wav, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    return wav[: int(1.5 * rate)].T.copy(), rate
