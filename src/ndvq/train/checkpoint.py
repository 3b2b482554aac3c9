"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory `step-NNNNNNNN/` with `state.safetensors` and `state.json`, written
under a temporary name and renamed; the file `latest` names the newest complete one.
"""

import json
import os
from pathlib import Path
import shutil
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
import torch

from ndvq.errors import NdvqError

LATEST = "latest"


def flatten_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into `tensors` under a dotted key; return the rest for JSON."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[key, flatten_state(value, f"{prefix}.{key}", tensors)] for key, value in state.items()]}
    if isinstance(state, (list, tuple)):
        return [flatten_state(value, f"{prefix}.{i}", tensors) for i, value in enumerate(state)]
    return state


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of flatten_state (dict keys keep their type: optimizer states use integer keys)."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {key: unflatten_state(value, tensors) for key, value in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(value, tensors) for value in skeleton]
    return skeleton


def checkpoint_name(step: int) -> str:
    """The folder name of step `step`'s checkpoint, zero-padded so that names sort by step."""
    return f"step-{step:08d}"


def kept_checkpoints(directory: Path) -> list[Path]:
    """The checkpoint folders in `directory` (a run's checkpoints/), oldest first."""
    return sorted(directory.glob("step-*"))


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` (nested dicts of tensors and JSON values) as checkpoint `step`; keep the newest `keep`."""
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    temporary = directory / f".{name}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "state", tensors)
    save_file(tensors, temporary / "state.safetensors")
    (temporary / "state.json").write_text(json.dumps(skeleton))
    shutil.rmtree(directory / name, ignore_errors=True)
    os.replace(temporary, directory / name)
    pointer = directory / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, directory / LATEST)
    for old in kept_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return directory / name


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    if not path.is_dir():
        raise NdvqError(f"{pointer}: names a missing checkpoint {path.name}")
    return path


def checkpoint_of_step(run_dir: Path, step: int) -> Path:
    """The kept checkpoint of `step`; NdvqError listing the kept steps if there is none."""
    path = run_dir / "checkpoints" / checkpoint_name(step)
    if not path.is_dir():
        kept = ", ".join(str(int(p.name[5:])) for p in kept_checkpoints(run_dir / "checkpoints")) or "none"
        raise NdvqError(f"{run_dir}: no checkpoint of step {step} (kept: {kept})")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        tensors = load_file(path / "state.safetensors")
        skeleton = json.loads((path / "state.json").read_text())
    except (OSError, SafetensorError, json.JSONDecodeError) as error:
        raise NdvqError(f"{path}: cannot read checkpoint ({error})") from None
    try:
        return unflatten_state(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise NdvqError(f"{path}: state.json and state.safetensors do not match ({error!r})") from None
