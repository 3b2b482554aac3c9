"""Fitting a model's entropy tables on the codes of a training corpus (`ndvq fit-entropy`)."""

from collections.abc import Iterator
from dataclasses import replace
import os

import numpy as np
import torch
from tqdm import tqdm

from ndvq import bitstream
from ndvq.codec import Codec
from ndvq.compress import encode_file
from ndvq.entropy import GROUPS, EntropyModel, check_rate_weight, index_groups
from ndvq.errors import NdvqError
from ndvq.quantization.kmeans import kmeans, nearest
from ndvq.tokens import Entry, source_files, spread


def fit_entropy(
    codec: Codec,
    source: str | os.PathLike,
    limit: int | None = None,
    progress: bool = False,
    contexts: bool = True,
    rate_weight: float = 0.0,
) -> tuple[EntropyModel, int, list[tuple[str, str]]]:
    """Tables fitted on the codes, at the model's highest bitrate (every stage), of the audio files of a folder
    or manifest (`limit` of them taken at equal steps through the list, so that every voice counts):
    (tables, files used, [(file, why it was skipped)]). Without `contexts`, every code of a stage shares one
    group: one table per stage (for comparison).

    With `rate_weight` > 0, the tables are for rate-aware assignment at that weight (Codec.encode_blocks): fitted
    on the most likely codes first, then again on the codes assigned with those tables as the prior (the files
    are coded twice; the prior keeps every stage's context tables, even where bit-packing would code the most likely
    codes as well, since the prior is what makes the codes predictable); the result records the weight, which
    `ndvq compress --entropy` then uses."""
    check_rate_weight(rate_weight)  # before the first pass over the corpus, not after it
    entries = spread(source_files(source), limit)
    failures: list[tuple[str, str]] = []
    groups = code_groups(codec) if contexts else np.zeros((codec.num_codebooks, codec.codebook_size), np.int32)
    tables = EntropyModel.fit(corpus_codes(codec, entries, failures, progress), groups, select=not rate_weight)
    if len(failures) == len(entries):
        raise NdvqError(f"{source}: no file could be coded (first: {failures[0][1]})")
    if rate_weight:
        attached = codec.entropy
        try:
            codec.set_entropy(tables)
            tables = EntropyModel.fit(corpus_codes(codec, entries, [], progress, rate_weight), groups)
        finally:
            codec.set_entropy(attached)
    return replace(tables, rate_weight=float(rate_weight)), len(entries) - len(failures), failures


def corpus_codes(
    codec: Codec,
    entries: list[Entry],
    failures: list[tuple[str, str]],
    progress: bool = False,
    rate_weight: float = 0.0,
) -> Iterator[np.ndarray]:
    """The codes [C, n_q, frames] of each file at the model's highest bitrate, as `ndvq compress --refine 0`
    makes them (the one-pass encoder, rate-aware at `rate_weight` with the model's entropy tables); files that
    cannot be coded are appended to `failures` as (file, why)."""
    for entry in tqdm(entries, unit="file", disable=not progress, leave=False):
        try:
            data = encode_file(
                codec, entry.path, max(codec.bandwidths), entropy=False, rate_weight=rate_weight, refine_steps=0
            )
            yield bitstream.read(data)[1]
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
