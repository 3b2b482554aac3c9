"""Corpus tokenization: every audio file of a folder or manifest -> its codes, in numpy shards.

The codes of a file are exactly those `ndvq compress --refine STEPS` stores for it, STEPS being `refine_steps`
(default 0: the one-pass encoder, where compress refines ndvq.refine.DEFAULT_STEPS unless told; each file goes
through `encode_file` on its own, on the CPU), whatever the shard size, workers or ranks. The sorted file list is
cut into shards of about `batch_seconds` of audio each (a shard closes once its files reach that many
seconds, by their headers' durations), so the plan depends only on the source and `batch_seconds`. Shard k:

    shard-0000k.npy   every item's codes [C, n_q, frames], flattened and concatenated (int16, or int32
                      for codebooks above 32768 entries)
    shard-0000k.json  model identity, bandwidth, refine_steps, refine_version and codes_version (how compress
                      computes codes: ndvq.compress.CODES_VERSION), stages, dtype; items (path,
                      offset in elements, channels, stages, frames, seconds) and failures (path, reason)

Both are written under temporary names and renamed, the .json last: a shard is finished iff its .json
exists, and a re-run skips finished shards. index.json (all items and failures) is written once every
shard is finished; `load` reads the shard files and needs no index.

With refinement (`refine_steps` > 0, ndvq.refine) the codes are those of `ndvq compress --refine` run with the
same number of threads: refined codes depend on the summation order, hence on the thread count.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
import json
import multiprocessing
import os
from pathlib import Path
import queue
import tempfile
import time
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ndvq import bitstream
from ndvq.audio import AUDIO_SUFFIXES, atomic_path, audio_files, audio_seconds
from ndvq.codec import Codec
from ndvq.compress import CODES_VERSION, codes_identity, encode_file
from ndvq.errors import NdvqError
from ndvq.manifest import read_manifest
from ndvq.refine import VERSION as REFINE_VERSION
from ndvq.refine import check_refine_steps

T = TypeVar("T")

FORMAT = "ndvq-tokens"
VERSION = 1
DEFAULT_BATCH_SECONDS = 3600.0
INDEX = "index.json"


class Encoding(NamedTuple):
    """How every file is encoded: the bitrate in kbps, the encoder's refinement steps (0: none), if refined the
    refinement's version (ndvq.refine.VERSION; 0 when not refined), and how compress computes codes
    (ndvq.compress.CODES_VERSION)."""

    bandwidth: float
    refine_steps: int = 0
    refine_version: int = 0
    codes_version: int = CODES_VERSION

    def describe(self) -> str:
        refined = f", refined with {self.refine_steps} steps (v{self.refine_version})" if self.refine_steps else ""
        return f"{self.bandwidth:g} kbps{refined}, codes v{self.codes_version}"


class Entry(NamedTuple):
    """One source file: its path relative to the source (the key), its path to open, its seconds of audio."""

    relative: str
    path: str
    seconds: float


@dataclass(frozen=True)
class Summary:
    """A tokenize run. files, failures and seconds (of audio) count every finished shard; coded_seconds is the
    audio this process encoded in this run, in wall_seconds."""

    out_dir: Path
    shards: int
    finished_before: int
    files: int
    failures: tuple[tuple[str, str], ...]
    seconds: float
    coded_seconds: float
    wall_seconds: float
    complete: bool

    @property
    def rate(self) -> float:
        """Seconds of audio coded per wall-clock second in this run."""
        return self.coded_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def __str__(self) -> str:
        state = "" if self.complete else "; not complete (other ranks' shards are missing): run again"
        return (
            f"{self.out_dir}: {self.files} files, {len(self.failures)} failures, {self.seconds:.1f} s of audio in "
            f"{self.shards} shards ({self.finished_before} already done); coded {self.coded_seconds:.1f} s in "
            f"{self.wall_seconds:.1f} s wall = {self.rate:.1f} s of audio per second{state}"
        )


def source_files(source: str | os.PathLike) -> list[Entry]:
    """A folder (every audio file below it, sorted, its duration from its header; 0 if unreadable) or a
    manifest (`path<TAB>seconds`, paths relative to it, in its order)."""
    source = Path(source)
    if source.is_dir():
        entries = []
        for path in audio_files(source):
            try:
                seconds = audio_seconds(path)
            except NdvqError:
                seconds = 0.0  # encode_file says why, as the file's failure
            entries.append(Entry(path.relative_to(source).as_posix(), str(path), seconds))
    elif source.is_file():
        rows = read_manifest(source)  # checks every line
        names = [line.split("\t")[0] for line in source.read_text(encoding="utf-8-sig").splitlines()[1:]]
        entries = [Entry(name, str(path), seconds) for name, (path, seconds) in zip(names, rows, strict=True)]
    else:
        raise NdvqError(f"{source}: no such folder or manifest")
    if not entries:
        raise NdvqError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    if len({entry.relative for entry in entries}) < len(entries):
        raise NdvqError(f"{source}: lists the same file more than once")
    return entries


def spread(entries: list[T], count: int | None) -> list[T]:
    """`count` entries taken at equal steps through the list (all of them for None), so every voice counts."""
    return entries if count is None else entries[:: max(1, len(entries) // count)][:count]


def plan(entries: list[Entry], batch_seconds: float) -> list[list[Entry]]:
    """Consecutive files in shards: a shard closes as soon as its files reach batch_seconds of audio."""
    if not batch_seconds > 0:
        raise NdvqError(f"batch seconds must be positive, got {batch_seconds}")
    shards: list[list[Entry]] = [[]]
    seconds = 0.0
    for entry in entries:
        if seconds >= batch_seconds:
            shards.append([])
            seconds = 0.0
        shards[-1].append(entry)
        seconds += entry.seconds
    return shards


def _stem(out_dir: Path, k: int) -> Path:
    return out_dir / f"shard-{k:05d}"


def _read_json(path: Path) -> dict[str, Any]:
    """A shard's document, checked; NdvqError naming the file otherwise."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NdvqError(f"{path}: cannot read ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise NdvqError(f"{path}: not an ndvq tokens file")
    if not _is_shard(document):
        raise NdvqError(f"{path}: damaged tokens shard (fields missing or of the wrong type); run ndvq tokenize again")
    return document


def _is_shard(document: dict[str, Any]) -> bool:
    """Whether a shard document has the fields (and types) that readers use."""
    fields = {"shard": int, "model": str, "bandwidth": (int, float), "stages": int, "items": list, "failures": list}
    item_fields = {"path": str, "offset": int, "channels": int, "stages": int, "frames": int}

    def typed(entry: Any, types: dict[str, Any]) -> bool:
        return isinstance(entry, dict) and all(isinstance(entry.get(key), kind) for key, kind in types.items())

    return (
        typed(document, fields)
        and all(
            type(document.get(key, 0)) is int and document.get(key, 0) >= 0
            for key in ("refine_steps", "refine_version", "codes_version")
        )
        and all(typed(item, item_fields) for item in document["items"])
        and all(typed(failure, {"path": str, "reason": str}) for failure in document["failures"])
    )


def _write_json(path: Path, document: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1) + "\n")


def _encoding_of(document: dict[str, Any]) -> Encoding:
    # Shards made before refinement have neither refine key; refined ones made before its version was recorded read
    # as v0; those made before codes_version was recorded, as codes v1 (they may be either: such a directory is
    # not resumed).
    return Encoding(
        document["bandwidth"],
        document.get("refine_steps", 0),
        document.get("refine_version", 0),
        document.get("codes_version", 1),
    )


def _finished(out_dir: Path, shards: list[list[Entry]], model: str, encoding: Encoding) -> dict[int, dict[str, Any]]:
    """The finished shards' documents by number, after checking each belongs to this model, encoding and plan."""
    finished = {}
    for path in sorted(out_dir.glob("shard-*.json")):
        document = _read_json(path)
        if document["model"] != model or _encoding_of(document) != encoding:
            raise NdvqError(
                f"{out_dir}: holds tokens of model {document['model']} at {_encoding_of(document).describe()}, not "
                f"of model {model} at {encoding.describe()}; use another output directory"
            )
        k = document["shard"]
        listed = {item["path"] for item in document["items"] + document["failures"]}
        if k >= len(shards) or listed != {entry.relative for entry in shards[k]}:
            raise NdvqError(
                f"{out_dir}: its shard {k} was made from other files (another source or --batch-seconds); "
                "use another output directory"
            )
        finished[k] = document
    return finished


def _make_shard(
    codec: Codec, out_dir: Path, k: int, entries: list[Entry], encoding: Encoding, report: Callable[[float], None]
) -> dict[str, Any]:
    """Encode the shard's files one by one as `ndvq compress --refine STEPS` does (STEPS: encoding.refine_steps),
    then write its .npy and (last) its .json."""
    dtype = np.int16 if codec.codebook_size <= 32768 else np.int32
    items, failures, arrays, offset = [], [], [], 0
    for entry in entries:
        try:
            # Tokens keep the codes only: no decoding pass for the stored scale's level.
            data = encode_file(
                codec, entry.path, encoding.bandwidth, refine_steps=encoding.refine_steps, match_level=False
            )
            header, codes = bitstream.read(data, entry.relative, codec.entropy)
        except NdvqError as error:
            reason = str(error).splitlines()[0].removeprefix(f"{entry.path}: ")
            failures.append({"path": entry.relative, "reason": reason})
        else:
            channels, stages, frames = codes.shape
            items.append(
                {
                    "path": entry.relative,
                    "offset": offset,
                    "channels": channels,
                    "stages": stages,
                    "frames": frames,
                    "seconds": header.duration,
                }
            )
            arrays.append(codes.reshape(-1).astype(dtype))
            offset += codes.size
        report(entry.seconds)
    stem = _stem(out_dir, k)
    with atomic_path(stem.with_suffix(".npy")) as temporary:
        np.save(temporary, np.concatenate(arrays) if arrays else np.zeros(0, dtype))
    document = {
        "format": FORMAT,
        "version": VERSION,
        "shard": k,
        "model": codes_identity(codec),
        "bandwidth": encoding.bandwidth,
        "refine_steps": encoding.refine_steps,
        "refine_version": encoding.refine_version,
        "codes_version": encoding.codes_version,
        "stages": codec.stages(encoding.bandwidth),
        "dtype": np.dtype(dtype).name,
        "items": items,
        "failures": failures,
    }
    _write_json(stem.with_suffix(".json"), document)
    return document


# --- worker processes: each loads the model itself --------------------------------------------------------
_worker: dict[str, Any] = {}


def _start_worker(model: str, identity: str, threads: int, progress: Any) -> None:
    torch.set_num_threads(threads)
    codec = Codec.load(model)
    if codes_identity(codec) != identity:
        raise NdvqError(f"{model}: loads as model {codes_identity(codec)}, not {identity}")
    _worker.update(codec=codec, progress=progress)


def _worker_shard(out_dir: Path, k: int, entries: list[Entry], encoding: Encoding) -> dict[str, Any]:
    return _make_shard(_worker["codec"], out_dir, k, entries, encoding, _worker["progress"].put)


def _in_pool(
    model: str | os.PathLike | Codec,
    identity: str,
    todo: dict[int, list[Entry]],
    out_dir: Path,
    encoding: Encoding,
    workers: int,
    bar: tqdm,
) -> None:
    """The shards on `workers` spawned processes (fewer where fewer shards are left), each with a `workers`-th
    of this process's threads: the same however many shards are left, as refined codes depend on it."""
    with tempfile.TemporaryDirectory(prefix="ndvq-model-") as saved:
        if isinstance(model, Codec):
            model.save(saved)
            model = saved
        context = multiprocessing.get_context("spawn")
        progress = context.Queue()
        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(
            min(workers, len(todo)),
            context,
            initializer=_start_worker,
            initargs=(str(model), identity, threads, progress),
        ) as pool:
            pending: set[Future] = {pool.submit(_worker_shard, out_dir, k, e, encoding) for k, e in todo.items()}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # raises what the worker raised
                try:
                    while True:
                        bar.update(progress.get_nowait())
                except queue.Empty:
                    pass


def tokenize(
    codec: Codec | str | os.PathLike,
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    bandwidth: float,
    *,
    refine_steps: int = 0,
    batch_seconds: float = DEFAULT_BATCH_SECONDS,
    workers: int = 1,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
) -> Summary:
    """Tokenize every audio file of `source` (a folder or a manifest) into shards under `out_dir`.

    `codec` is a model or a model directory / preset name. A shard holds about `batch_seconds` seconds of
    audio (it closes once its files reach that much); shard k belongs to rank k % world, whose shards go to
    `workers` processes (spawned, each loading the model with total threads // workers threads). Files are
    never batched together: each is encoded alone, on the CPU, exactly as `ndvq compress --refine STEPS` encodes
    it, STEPS being `refine_steps` (0, one pass, by default; refined codes are equal at equal thread counts).
    A file that cannot be encoded (unreadable, too short, non-finite) is recorded as a failure. Finished
    shards are skipped. Under torch.distributed (world > 1), rank 0 writes index.json after a barrier.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    loaded = codec if isinstance(codec, Codec) else Codec.load(codec)
    stages, model = loaded.stages(bandwidth), codes_identity(loaded)
    check_refine_steps(refine_steps)
    encoding = Encoding(bandwidth, refine_steps, REFINE_VERSION if refine_steps else 0)
    shards = plan(source_files(source), batch_seconds)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NdvqError(f"{out_dir}: cannot create ({error.strerror or error})") from None
    finished = _finished(out_dir, shards, model, encoding)
    todo = {k: e for k, e in enumerate(shards) if k % world == rank and k not in finished}
    seconds = sum(entry.seconds for entries in todo.values() for entry in entries)
    with tqdm(total=round(seconds, 1), unit="s", disable=not progress, desc="tokenize") as bar:
        if workers > 1 and todo:
            _in_pool(codec, model, todo, out_dir, encoding, workers, bar)
        else:
            for k, entries in todo.items():
                _make_shard(loaded, out_dir, k, entries, encoding, bar.update)
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
    documents = {**finished, **_finished(out_dir, shards, model, encoding)}
    complete = len(documents) == len(shards)
    if complete and rank == 0:
        _write_index(out_dir, source, model, encoding, stages, [documents[k] for k in range(len(shards))])
    return Summary(
        out_dir=out_dir,
        shards=len(shards),
        finished_before=len(finished),
        files=sum(len(d["items"]) for d in documents.values()),
        failures=tuple((f["path"], f["reason"]) for d in documents.values() for f in d["failures"]),
        seconds=sum(item["seconds"] for d in documents.values() for item in d["items"]),
        coded_seconds=seconds,
        wall_seconds=time.perf_counter() - start,
        complete=complete,
    )


def _write_index(
    out_dir: Path, source: str | os.PathLike, model: str, encoding: Encoding, stages: int, documents: list[dict]
) -> None:
    items = [{"shard": d["shard"], **item} for d in documents for item in d["items"]]
    failures = [failure for d in documents for failure in d["failures"]]
    index = {
        "format": FORMAT,
        "version": VERSION,
        "source": str(source),
        "model": model,
        "bandwidth": encoding.bandwidth,
        "refine_steps": encoding.refine_steps,
        "refine_version": encoding.refine_version,
        "codes_version": encoding.codes_version,
        "stages": stages,
        "shards": len(documents),
        "items": items,
        "failures": failures,
    }
    _write_json(out_dir / INDEX, index)


class Tokens:
    """The tokens of a directory: iterate (relative path, codes [C, n_q, frames]), `len`, `in`, `tokens[path]`.

    Shards are memory-mapped when first used, so random access reads only what it returns. Codes are
    read-only views in the shard's dtype (int16 or int32). `failures` lists (path, reason); `model`, `bandwidth`,
    `refine_steps` and `stages` say how the codes were made.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        paths = sorted(self.out_dir.glob("shard-*.json"))
        if not paths:
            raise NdvqError(f"{self.out_dir}: no token shards (shard-*.json) in this directory; run ndvq tokenize")
        documents = [_read_json(path) for path in paths]
        if len({(d["model"], _encoding_of(d)) for d in documents}) > 1:
            raise NdvqError(
                f"{self.out_dir}: its shards come from different models, bandwidths, refinements or versions of "
                "the codes"
            )
        first = documents[0]
        self.model, self.bandwidth, self.stages = first["model"], first["bandwidth"], first["stages"]
        self.refine_steps = _encoding_of(first).refine_steps
        self._items: dict[str, tuple[int, int, tuple[int, int, int]]] = {}
        for document in documents:
            for item in document["items"]:
                shape = (item["channels"], item["stages"], item["frames"])
                self._items[item["path"]] = (document["shard"], item["offset"], shape)
        self.failures = [(f["path"], f["reason"]) for d in documents for f in d["failures"]]
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, path: object) -> bool:
        return path in self._items

    def __getitem__(self, path: str) -> np.ndarray:
        shard, offset, shape = self._items[path]
        if shard not in self._shards:
            self._shards[shard] = np.load(_stem(self.out_dir, shard).with_suffix(".npy"), mmap_mode="r")
        return self._shards[shard][offset : offset + int(np.prod(shape))].view(np.ndarray).reshape(shape)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return ((path, self[path]) for path in self._items)

    @property
    def paths(self) -> list[str]:
        return list(self._items)


def load(out_dir: str | os.PathLike) -> Tokens:
    """The tokens written by `tokenize` into out_dir (see Tokens)."""
    return Tokens(out_dir)
