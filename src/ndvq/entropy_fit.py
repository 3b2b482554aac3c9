"""Fitting a model's entropy tables on the codes of a training corpus (`ndvq fit-entropy`)."""

from collections.abc import Iterator
import os

import numpy as np
import torch
from tqdm import tqdm

from ndvq import bitstream
from ndvq.codec import Codec
from ndvq.compress import encode_file
from ndvq.entropy import GROUPS, EntropyModel, index_groups
from ndvq.errors import NdvqError
from ndvq.quantization.kmeans import kmeans, nearest
from ndvq.tokens import Entry, source_files, spread


def fit_entropy(
    codec: Codec, source: str | os.PathLike, limit: int | None = None, progress: bool = False, contexts: bool = True
) -> tuple[EntropyModel, int, list[tuple[str, str]]]:
    """Tables fitted on the codes, at the model's highest bitrate (every stage), of the audio files of a folder
    or manifest (`limit` of them taken at equal steps through the list, so that every voice counts):
    (tables, files used, [(file, why it was skipped)]). Without `contexts`, every code of a stage shares one
    group: one table per stage (for comparison)."""
    entries = spread(source_files(source), limit)
    failures: list[tuple[str, str]] = []
    groups = code_groups(codec) if contexts else np.zeros((codec.num_codebooks, codec.codebook_size), np.int32)
    tables = EntropyModel.fit(corpus_codes(codec, entries, failures, progress), groups)
    if len(failures) == len(entries):
        raise NdvqError(f"{source}: no file could be coded (first: {failures[0][1]})")
    return tables, len(entries) - len(failures), failures


def corpus_codes(
    codec: Codec, entries: list[Entry], failures: list[tuple[str, str]], progress: bool = False
) -> Iterator[np.ndarray]:
    """The codes [C, n_q, frames] of each file at the model's highest bitrate, as `ndvq compress` makes them;
    files that cannot be coded are appended to `failures` as (file, why)."""
    for entry in tqdm(entries, unit="file", disable=not progress, leave=False):
        try:
            yield bitstream.read(encode_file(codec, entry.path, max(codec.bandwidths)))[1]
        except NdvqError as error:
            failures.append((entry.relative, str(error)))


def code_groups(codec: Codec, count: int = GROUPS) -> np.ndarray:
    """[n_q, K] int32: the codes of each stage in `count` k-means clusters of their code vectors (the means for
    NDVQ), so that codes that decode alike share a context."""
    quantizer, codes = codec.quantizer, torch.arange(codec.codebook_size)
    groups = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for stage in range(codec.num_codebooks):
            vectors = quantizer.project_out[stage](quantizer.codebooks[stage].decode(codes)).float()
            if not torch.isfinite(vectors).all():  # an untrained codebook: no geometry to group by
                return index_groups(codec.num_codebooks, codec.codebook_size)
            centroids, _ = kmeans(vectors, count)
            groups.append(nearest(vectors, centroids).numpy().astype(np.int32))
    return np.stack(groups)
