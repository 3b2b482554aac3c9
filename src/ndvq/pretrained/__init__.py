"""Trained models shipped inside the package, loaded by name: `Codec.load("speech-16k")`.

Each shipped model is a model directory `pretrained/<name>/` (config.json + model.safetensors, encoder and
decoder weights stored as float16) listed in `models.json` with its fingerprint, `Codec.identity().hex()` of
the loaded model; `Codec.load` refuses a model whose fingerprint is not the recorded one. `scripts/ship_model.py
MODEL_DIR` writes both. Architecture presets (ndvq.presets) are a different thing: untrained weights.
"""

import json
from pathlib import Path

from ndvq.errors import NdvqError

ROOT = Path(__file__).parent
REGISTRY = ROOT / "models.json"


def registry(path: Path = REGISTRY) -> dict[str, dict[str, str]]:
    """name -> {"identity": 16 hex digits, "architecture": preset name, "description": text}."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NdvqError(f"{path}: cannot read the registry of shipped models ({error})") from None
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise NdvqError(f"{path}: not a registry of shipped models")
    return document


def names() -> list[str]:
    """The names of the shipped models."""
    return sorted(registry())


def directory(name: str) -> Path:
    """The model directory of the shipped model `name`."""
    return ROOT / name
