"""Corpora as manifests: the embedded demo corpus (Debian's asterisk voice prompts) and LibriTTS."""

import argparse
import hashlib
import logging
import os
from pathlib import Path
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from ndvq.audio import atomic_path
from ndvq.errors import NdvqError

log = logging.getLogger("ndvq")
DEMO_PACKAGES = [f"asterisk-core-sounds-{lang}-g722" for lang in ("en", "es", "fr", "it", "ru")]
SOUNDS = Path("usr/share/asterisk/sounds")
LIBRITTS_SPLITS = {
    "train": ("train-clean-100", "train-clean-360", "train-other-500"),
    "valid": ("dev-clean",),
    "test": ("test-clean",),
}


def write_manifest(path: Path, rows: list[tuple[Path, float]]) -> None:
    """Write a TSV manifest (`path<TAB>seconds`, paths relative to the manifest's folder), atomically."""
    lines = ["path\tseconds"] + [f"{os.path.relpath(p, path.parent)}\t{s:.3f}" for p, s in rows]
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")


def split_of(name: str) -> str:
    """A file's split from a hash of its name: about 90% train, 5% valid, 5% test, the same everywhere."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


def download_demo_packages(work_dir: Path) -> Path:
    """apt-get download the demo packages into work_dir and unpack them (no root needed): the unpacked root."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise NdvqError(
                f"{tool} not found: the demo corpus comes from Debian packages; on other systems train on any "
                "folder of audio files instead (ndvq train ... data.train=/path/to/folder)"
            )
    work_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", *DEMO_PACKAGES], cwd=work_dir, capture_output=True, text=True)
    if result.returncode:
        detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise NdvqError(f"apt-get download failed ({detail}); run 'apt-get update' first or pass --packages DIR")
    return unpack(work_dir)


def unpack(folder: Path) -> Path:
    """Unpack every .deb in folder into folder/unpacked (a folder without .deb files is taken as unpacked)."""
    debs = sorted(folder.glob("*.deb"))
    if not debs:
        return folder
    root = folder / "unpacked"
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    return root


def build_demo_corpus(packages_root: Path, out_dir: Path) -> dict[str, tuple[int, float]]:
    """Decode the G.722 prompts under packages_root to 16 kHz FLAC in out_dir/audio, copy the licences to
    out_dir/licenses, write train/valid/test manifests. Returns {split: (files, minutes)}."""
    import G722

    sounds = sorted((packages_root / SOUNDS).rglob("*.g722"))
    if not sounds:
        raise NdvqError(f"{packages_root}: no {SOUNDS}/*/*.g722 files (unpacked asterisk-core-sounds-*-g722)")
    rows: dict[str, list[tuple[Path, float]]] = {"train": [], "valid": [], "test": []}
    for source in sounds:
        relative = source.relative_to(packages_root / SOUNDS).with_suffix(".flac")
        samples = np.asarray(G722.G722(16000, 64000).decode(source.read_bytes()), dtype=np.int16)
        if len(samples) < 1600:
            log.warning("skipped %s: shorter than 0.1 s", source)
            continue
        target = out_dir / "audio" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            sf.write(temporary, samples, 16000, subtype="PCM_16", format="FLAC")
        rows[split_of(str(relative))].append((target, len(samples) / 16000))
    (out_dir / "licenses").mkdir(parents=True, exist_ok=True)
    for copyright_file in sorted((packages_root / "usr/share/doc").glob("*/copyright")):
        shutil.copyfile(copyright_file, out_dir / "licenses" / f"{copyright_file.parent.name}.copyright")
    for split, items in rows.items():
        write_manifest(out_dir / f"{split}.tsv", items)
    return {split: (len(items), sum(s for _, s in items) / 60) for split, items in rows.items()}


def libritts_manifests(root: Path, out_dir: Path) -> dict[str, tuple[int, float]]:
    """train.tsv (train-*), valid.tsv (dev-clean), test.tsv (test-clean) for a local LibriTTS copy
    (`root` is the LibriTTS folder or its parent). Returns {split: (files, minutes)}."""
    if not any((root / s).is_dir() for subsets in LIBRITTS_SPLITS.values() for s in subsets):
        root = root / "LibriTTS"
    summary = {}
    for split, subsets in LIBRITTS_SPLITS.items():
        rows = []
        for subset in subsets:
            for path in sorted((root / subset).glob("*/*/*.wav")):
                info = sf.info(str(path))
                rows.append((path, info.frames / info.samplerate))
        if rows:
            write_manifest(out_dir / f"{split}.tsv", rows)
        summary[split] = (len(rows), sum(s for _, s in rows) / 60)
    if not any(count for count, _ in summary.values()):
        raise NdvqError(f"{root}: no LibriTTS subsets ({', '.join(s for v in LIBRITTS_SPLITS.values() for s in v)})")
    return summary


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="Build training corpora and manifests.")
    kinds = data.add_subparsers(dest="kind", required=True)
    demo = kinds.add_parser("demo", help="The embedded corpus: 131 min of studio voice prompts in 5 languages.")
    demo.add_argument("output", type=Path)
    demo.add_argument("--packages", type=Path, help="a folder of downloaded .deb files or unpacked trees")
    libritts = kinds.add_parser("libritts", help="Manifests for a local LibriTTS copy.")
    libritts.add_argument("root", type=Path)
    libritts.add_argument("output", type=Path)


def run_data_command(args: argparse.Namespace) -> int:
    if args.kind == "libritts":
        summary = libritts_manifests(args.root, args.output)
    elif args.packages is not None:
        summary = build_demo_corpus(unpack(args.packages), args.output)
    else:
        with tempfile.TemporaryDirectory() as folder:
            summary = build_demo_corpus(download_demo_packages(Path(folder)), args.output)
    for split, (files, minutes) in summary.items():
        print(f"{split}: {files} files, {minutes:.1f} min -> {args.output / (split + '.tsv')}")
    return 0
