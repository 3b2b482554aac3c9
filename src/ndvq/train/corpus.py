"""Corpora as manifests (see ndvq.manifest): the embedded demo corpus (Debian's asterisk voice prompts and
KLettres clips) and LibriTTS."""

import argparse
from collections import Counter
import importlib.util
import logging
from pathlib import Path
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from ndvq.audio import atomic_path, audio_seconds, mono_at, read_audio, read_bytes
from ndvq.errors import NdvqError
from ndvq.manifest import write_manifest

log = logging.getLogger("ndvq")
DEMO_PACKAGES = [*(f"asterisk-core-sounds-{lang}-g722" for lang in ("en", "es", "fr", "it", "ru")), "klettres-data"]
SOUNDS = Path("usr/share/asterisk/sounds")  # <lang>_<region>_<sex>_<name>/**/*.g722: one voice per folder
KLETTRES = Path("usr/share/klettres")  # <lang>/{alpha,syllab}/*.ogg: one voice per language, named klettres_<lang>
DEMO_RATE = 16000
# The demo corpus is split by speaker: these voices are held out of training whole, every other voice is in train.
# Chosen once by hand for a spread of languages, scripts and voice pitch; klettres_ru and klettres_uk go together
# as they may share a speaker.
DEMO_HELD_OUT = {
    "ru_RU_f_IvrvoiceRU": "test",
    "klettres_ar": "test",
    "klettres_he": "test",
    "klettres_hu": "test",
    "klettres_nds": "test",
    "klettres_ru": "test",
    "klettres_uk": "test",
    "klettres_de": "valid",
    "klettres_it": "valid",
    "klettres_lt": "valid",
}
SAME_SPEAKER = {"es_MX_f_Allison": "en_US_f_Allison"}  # {voice: the voice it shares a speaker (and split) with}
LIBRITTS_SPLITS = {
    "train": ("train-clean-100", "train-clean-360", "train-other-500"),
    "valid": ("dev-clean",),
    "test": ("test-clean",),
}
SPLITS = ("train", "valid", "test")
Summary = dict[str, dict[str, tuple[int, float]]]  # {group: {name: (files, minutes)}}


def demo_split(voice: str) -> str:
    """The split of a demo voice (its folder under audio/), from DEMO_HELD_OUT and SAME_SPEAKER."""
    return DEMO_HELD_OUT.get(SAME_SPEAKER.get(voice, voice), "train")


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        raise NdvqError(
            f"{tool} not found: the demo corpus comes from Debian packages; on other systems train on any "
            "folder of audio files instead (ndvq train ... data.train=/path/to/folder)"
        )


def download_demo_packages(work_dir: Path) -> Path:
    """`apt-get download` the demo packages into work_dir (no root needed) and unpack them: the unpacked root."""
    _require("apt-get")
    _require("dpkg-deb")
    work_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", *DEMO_PACKAGES], cwd=work_dir, capture_output=True, text=True)
    if result.returncode:
        detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        if "Unable to locate package" in result.stderr:
            raise NdvqError(
                f"apt-get download failed ({detail}): the package lists are missing; run 'apt-get update' "
                "(as root) once, or pass --packages DIR with the .deb files"
            )
        raise NdvqError(f"apt-get download failed ({detail}); pass --packages DIR with the .deb files instead")
    return unpack(work_dir, work_dir / "unpacked")


def unpack(folder: Path, target: Path) -> Path:
    """Unpack every .deb in folder into target and return target; a folder without .deb files is returned as is
    (taken to hold unpacked trees)."""
    debs = sorted(folder.glob("*.deb"))
    if not debs:
        return folder
    _require("dpkg-deb")
    for deb in debs:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True)
        if result.returncode:
            detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise NdvqError(f"{deb}: cannot unpack ({detail})")
    return target


def _package_roots(folder: Path) -> list[Path]:
    """Unpacked package trees: folder itself (packages unpacked together) and/or its subfolders (one per package)."""
    roots = [folder, *sorted(folder.glob("*"))]
    return [root for root in roots if (root / SOUNDS).is_dir() or (root / KLETTRES).is_dir()]


def _demo_sources(roots: list[Path]) -> list[tuple[Path, Path]]:
    """(source file, output path under audio/ whose first part is the voice) of every demo clip in roots."""
    sources = []
    for root in roots:
        for path in sorted((root / SOUNDS).rglob("*.g722")):
            sources.append((path, path.relative_to(root / SOUNDS).with_suffix(".flac")))
        for path in sorted((root / KLETTRES).glob("*/*/*.ogg")):
            sources.append((path, Path(f"klettres_{path.parts[-3]}", *path.parts[-2:]).with_suffix(".flac")))
    return sources


def _decode(path: Path) -> np.ndarray:
    """A demo clip as 16 kHz mono int16: G.722 decoded, anything else read, mixed down and resampled."""
    if path.suffix == ".g722":
        import G722

        return np.asarray(G722.G722(DEMO_RATE, 64000).decode(read_bytes(path)), dtype=np.int16)
    wav, rate = read_audio(path)
    mono = mono_at(wav, rate, DEMO_RATE)
    return np.round(np.clip(mono, -1, 1) * 32767).astype(np.int16)


def _summarise(rows: dict[str, list[tuple[Path, float]]]) -> dict[str, tuple[int, float]]:
    return {name: (len(items), sum(s for _, s in items) / 60) for name, items in rows.items()}


def build_demo_corpus(packages_root: Path, out_dir: Path) -> Summary:
    """Convert the clips of unpacked asterisk-core-sounds-*-g722 and klettres-data packages to 16 kHz mono FLAC.

    Writes out_dir/audio/<voice>/.../<name>.flac, out_dir/licenses/<package>.copyright and the manifests
    out_dir/{train,valid,test}.tsv, split by voice (demo_split). Returns
    {"splits": {split: (files, minutes)}, "voices": {voice: (files, minutes)}}.
    """
    roots = _package_roots(packages_root)
    sources = _demo_sources(roots)
    if not sources:
        raise NdvqError(
            f"{packages_root}: no {SOUNDS}/*/*.g722 or {KLETTRES}/*/*/*.ogg files "
            "(unpacked asterisk-core-sounds-*-g722 or klettres-data)"
        )
    if any(source.suffix == ".g722" for source, _ in sources) and importlib.util.find_spec("G722") is None:
        raise NdvqError("the demo corpus needs the g722 package: pip install 'ndvq[train]'")
    splits: dict[str, list[tuple[Path, float]]] = {split: [] for split in SPLITS}
    voices: dict[str, list[tuple[Path, float]]] = {}
    for source, relative in sources:
        try:
            samples = _decode(source)
        except NdvqError as error:
            log.warning("skipped %s", error)
            continue
        if len(samples) < DEMO_RATE // 10:
            log.warning("skipped %s: empty or shorter than 0.1 s", source)
            continue
        target = out_dir / "audio" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            sf.write(temporary, samples, DEMO_RATE, subtype="PCM_16", format="FLAC")
        row = (target, len(samples) / DEMO_RATE)
        splits[demo_split(relative.parts[0])].append(row)
        voices.setdefault(relative.parts[0], []).append(row)
    if not voices:
        raise NdvqError(f"{packages_root}: none of the {len(sources)} clips could be decoded")
    (out_dir / "licenses").mkdir(parents=True, exist_ok=True)
    for root in roots:
        for copyright_file in sorted((root / "usr/share/doc").glob("*/copyright")):
            shutil.copyfile(copyright_file, out_dir / "licenses" / f"{copyright_file.parent.name}.copyright")
    for split, items in splits.items():
        if not items:
            log.warning("the %s split is empty: none of its voices (DEMO_HELD_OUT) is in %s", split, packages_root)
        write_manifest(out_dir / f"{split}.tsv", items)
    return {"splits": _summarise(splits), "voices": _summarise(dict(sorted(voices.items())))}


def libritts_manifests(root: Path, out_dir: Path) -> Summary:
    """Write train.tsv (train-* subsets), valid.tsv (dev-clean) and test.tsv (test-clean) for a local LibriTTS
    copy (`root` is the LibriTTS folder or its parent; layout <subset>/<speaker>/<chapter>/*.wav). Unreadable
    files are skipped with a warning. Returns {"splits": ..., "subsets": ...} of (files, minutes)."""
    if not any((root / s).is_dir() for subsets in LIBRITTS_SPLITS.values() for s in subsets):
        root = root / "LibriTTS"
    splits: dict[str, list[tuple[Path, float]]] = {}
    subsets: dict[str, list[tuple[Path, float]]] = {}
    for split, names in LIBRITTS_SPLITS.items():
        for subset in names:
            for path in sorted((root / subset).glob("*/*/*.wav")):
                try:
                    row = (path, audio_seconds(path))
                except NdvqError as error:
                    log.warning("skipped %s", error)
                    continue
                splits.setdefault(split, []).append(row)
                subsets.setdefault(subset, []).append(row)
    if not splits:
        names = ", ".join(s for v in LIBRITTS_SPLITS.values() for s in v)
        raise NdvqError(f"{root}: no LibriTTS subsets with .wav files ({names})")
    for split, items in splits.items():
        write_manifest(out_dir / f"{split}.tsv", items)
    return {"splits": _summarise(splits), "subsets": _summarise(subsets)}


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    """Add `ndvq data demo OUT [--packages DIR]` and `ndvq data libritts ROOT OUT` to the CLI."""
    data = commands.add_parser("data", help="Build training corpora and manifests.", description=_DATA_HELP)
    kinds = data.add_subparsers(dest="kind", required=True)
    demo_help = (
        "The embedded corpus: 131 min of studio voice prompts in 5 languages and 51 min of letters and syllables in "
        "20 languages (Debian asterisk and klettres packages), split by speaker."
    )
    demo = kinds.add_parser("demo", help=demo_help, description=demo_help)
    demo.add_argument("output", type=Path, help="corpus folder: audio/, licenses/, train.tsv, valid.tsv, test.tsv")
    demo.add_argument(
        "--packages", type=Path, help="reuse a download: a folder of the .deb files or of the unpacked trees"
    )
    libritts_help = "Manifests (train.tsv, valid.tsv, test.tsv) for a local LibriTTS copy."
    libritts = kinds.add_parser("libritts", help=libritts_help, description=libritts_help)
    libritts.add_argument("root", type=Path, help="the LibriTTS folder or its parent")
    libritts.add_argument("output", type=Path, help="where the manifests go")


_DATA_HELP = (
    "Build a training corpus: manifests (TSV: path<TAB>seconds) that `ndvq train data.train=...` and `ndvq eval` read."
)


def run_data_command(args: argparse.Namespace) -> int:
    """Run `ndvq data ...` and print the summary; errors are NdvqError."""
    if args.kind == "libritts":
        summary = libritts_manifests(args.root, args.output)
    elif args.packages is not None:
        if not args.packages.is_dir():
            raise NdvqError(f"{args.packages}: no such folder")
        with tempfile.TemporaryDirectory() as folder:
            summary = build_demo_corpus(unpack(args.packages, Path(folder)), args.output)
    else:
        with tempfile.TemporaryDirectory() as folder:
            summary = build_demo_corpus(download_demo_packages(Path(folder)), args.output)
    voices = Counter(demo_split(voice) for voice in summary.get("voices", {}))
    for group, rows in summary.items():
        for name, (files, minutes) in rows.items():
            label = f"{name} ({demo_split(name)})" if group == "voices" else name
            where = f", {voices[name]} voices" if voices and group == "splits" else ""
            where += f" -> {args.output / (name + '.tsv')}" if group == "splits" else ""
            print(f"{group[:-1]} {label}: {files} files, {minutes:.1f} min{where}")
    return 0
