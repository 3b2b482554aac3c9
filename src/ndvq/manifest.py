"""Manifests: lists of audio files for training, evaluation and tokenization.

A manifest is a UTF-8 TSV file with the header `path<TAB>seconds` and one audio file per line, its path
relative to the manifest's folder.
"""

import os
from pathlib import Path

from ndvq.audio import atomic_path
from ndvq.errors import NdvqError


def write_manifest(path: str | os.PathLike, rows: list[tuple[Path, float]]) -> None:
    """Write [(audio file, seconds)] as a manifest at `path`, atomically."""
    path = Path(path)
    lines = ["path\tseconds"]
    for file, seconds in rows:
        relative = Path(os.path.relpath(Path(file).absolute(), path.absolute().parent)).as_posix()
        if "\t" in relative or "\n" in relative or "\r" in relative:
            raise NdvqError(f"{file}: a path with a tab or line break cannot go in a manifest")
        lines.append(f"{relative}\t{seconds:.3f}")
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_manifest(path: str | os.PathLike) -> list[tuple[Path, float]]:
    """A manifest -> [(absolute path, seconds)]; NdvqError naming the file and line if it is malformed."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise NdvqError(f"{path}: cannot read manifest ({error})") from None
    if not lines or lines[0].split("\t") != ["path", "seconds"]:
        raise NdvqError(f"{path}:1: not a manifest (expected the header 'path<TAB>seconds')")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            if len(fields) != 2 or not fields[0]:
                raise ValueError
            seconds = float(fields[1])
            if not seconds >= 0:  # also rejects NaN
                raise ValueError
        except ValueError:
            raise NdvqError(f"{path}:{number}: expected 'path<TAB>seconds', got {line!r}") from None
        rows.append(((path.parent / fields[0]).resolve(), seconds))
    return rows
