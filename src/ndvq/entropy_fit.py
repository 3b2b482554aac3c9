"""Fitting a model's entropy tables on the codes of a training corpus (`ndvq fit-entropy`)."""

from collections.abc import Iterator
import os

import numpy as np
from tqdm import tqdm

from ndvq import bitstream
from ndvq.codec import Codec
from ndvq.compress import encode_file
from ndvq.entropy import EntropyModel
from ndvq.errors import NdvqError
from ndvq.tokens import source_files


def fit_entropy(
    codec: Codec, source: str | os.PathLike, limit: int | None = None, progress: bool = False
) -> tuple[EntropyModel, int, list[tuple[str, str]]]:
    """Tables fitted on the codes, at the model's highest bitrate (every stage), of the audio files of a folder
    or manifest (the first `limit`): (tables, files used, [(file, why it was skipped)])."""
    entries = source_files(source)[:limit]
    failures: list[tuple[str, str]] = []

    def codes() -> Iterator[np.ndarray]:
        for entry in tqdm(entries, unit="file", disable=not progress, leave=False):
            try:
                yield bitstream.read(encode_file(codec, entry.path, max(codec.bandwidths)))[1]
            except NdvqError as error:
                failures.append((entry.relative, str(error)))

    tables = EntropyModel.fit(codes(), codec.num_codebooks, codec.codebook_size)
    if len(failures) == len(entries):
        raise NdvqError(f"{source}: no file could be coded (first: {failures[0][1]})")
    return tables, len(entries) - len(failures), failures
