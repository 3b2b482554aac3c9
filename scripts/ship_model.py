"""Ship a trained model inside the package: convert MODEL_DIR to src/ndvq/pretrained/NAME/ and record its fingerprint.

    python scripts/ship_model.py MODEL_DIR [--name speech-16k] [--description TEXT]

The encoder's and decoder's weights are stored as float16 (config.json says "storage": "float16"; loading
casts them back to float32), the quantizer's tensors and any entropy tables as they are. The fingerprint
recorded in src/ndvq/pretrained/models.json is that of the model as it loads from the package, which
`Codec.load(NAME)` then checks. Replaces the shipped model of that name, if any.
"""

import argparse
import json
import os
from pathlib import Path
import shutil
import tempfile

import torch

from ndvq.codec import Codec
from ndvq.presets import PRESETS
from ndvq.pretrained import registry

ROOT = Path(__file__).resolve().parent.parent / "src" / "ndvq" / "pretrained"  # the source tree, not an install
REGISTRY = ROOT / "models.json"


def architecture(codec: Codec) -> str:
    """The preset whose config the model has (ignoring the quantizer switch), or "custom"."""
    config = {**codec.config.to_dict(), "quantizer": "ndvq"}
    return next((name for name, c in PRESETS.items() if {**c.to_dict(), "quantizer": "ndvq"} == config), "custom")


def size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--name", default="speech-16k", help="the name it loads by (default speech-16k)")
    parser.add_argument("--description", default="", help="one line for the registry")
    args = parser.parse_args()
    torch.set_num_threads(1)

    source = Codec.load(args.model)
    target = ROOT / args.name
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=f".{args.name}.") as staging:
        source.save(staging, storage="float16")
        os.chmod(staging, 0o755)
        shipped = Codec.load(staging)  # as the package will load it: float16 weights cast to float32
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        os.mkdir(staging)  # for TemporaryDirectory's clean-up
    entries = registry(REGISTRY)
    entries[args.name] = {
        "identity": shipped.identity().hex(),
        "architecture": architecture(shipped),
        "description": args.description or f"shipped from {args.model.name}",
    }
    if shipped.entropy is not None:  # the fingerprint of its entropy-coded files, tables included
        entries[args.name]["entropy_identity"] = shipped.identity(True).hex()
    REGISTRY.write_text(json.dumps(dict(sorted(entries.items())), indent=2) + "\n")
    print(f"{args.model} -> {target}")
    print(f"fingerprint {entries[args.name]['identity']} (fp32 model: {source.identity().hex()})")
    print(f"architecture {entries[args.name]['architecture']}")
    print(f"size {size(target) / 1e6:.1f} MB (fp32 model: {size(args.model) / 1e6:.1f} MB)")
    print(f"registry {REGISTRY}")


if __name__ == "__main__":
    main()
