"""Corpus tokenization: codes equal to `ndvq compress --refine 0`'s whatever the shards, workers or ranks; resuming."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ndvq
from ndvq import bitstream, tokens
from ndvq.cli import main
from ndvq.compress import CODES_VERSION, encode_file
from ndvq.errors import NdvqError
from ndvq.refine import VERSION as REFINE_VERSION

BANDWIDTH = 4.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, speech) -> Path:
    """1.0 s mono 16 kHz, 0.5 s at 22.05 kHz, 1.5 s stereo FLAC in a subfolder, and a file that is not audio."""
    wav, rate = speech
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "sub").mkdir()
    sf.write(folder / "a.wav", wav[0, :16000], rate)
    (folder / "bad.wav").write_bytes(b"RIFF not audio")
    sf.write(folder / "c.wav", soxr.resample(wav[0, 8000:16000], rate, 22050), 22050)
    sf.write(folder / "sub" / "b.flac", np.stack([wav[0], wav[0, ::-1]], axis=1), rate)
    (folder / "notes.txt").write_text("not an audio suffix")
    return folder


@pytest.fixture(scope="module")
def expected(corpus, tiny) -> dict[str, np.ndarray]:
    """What `ndvq compress --refine 0` (tokenize's default encoder) stores for each readable file: codes
    [C, n_q, frames]."""
    paths = ("a.wav", "c.wav", "sub/b.flac")
    return {p: bitstream.read(encode_file(tiny, corpus / p, BANDWIDTH, refine_steps=0))[1] for p in paths}


def codes(out_dir: Path) -> dict[str, np.ndarray]:
    return {path: np.array(c) for path, c in tokens.load(out_dir)}


def index(out_dir: Path) -> dict:
    return json.loads((out_dir / "index.json").read_text())


def assert_codes(out_dir: Path, expected: dict[str, np.ndarray]) -> None:
    found = codes(out_dir)
    assert list(found) == sorted(expected)
    for path, array in expected.items():
        assert found[path].dtype == np.int16 and np.array_equal(found[path], array), path


# 0.01 s: one file a shard, but bad.wav (0 s, unreadable) shares c.wav's
@pytest.mark.parametrize(("batch_seconds", "workers", "shards"), [(0.01, 1, 3), (1000.0, 1, 1), (0.01, 2, 3)])
def test_codes_equal_compress_whatever_the_shards_and_workers(
    tmp_path, corpus, expected, tiny, batch_seconds, workers, shards
) -> None:
    out = tmp_path / "tokens"
    model = "tiny" if workers > 1 else tiny
    summary = tokens.tokenize(model, corpus, out, BANDWIDTH, batch_seconds=batch_seconds, workers=workers)
    assert summary.complete and summary.shards == shards and summary.files == 3
    assert summary.seconds == pytest.approx(3.0)
    assert summary.failures == (("bad.wav", "cannot decode audio (Format not recognised.)"),)
    assert_codes(out, expected)
    document = index(out)
    assert document["model"] == tiny.identity().hex() and document["bandwidth"] == BANDWIDTH
    assert document["failures"] == [{"path": "bad.wav", "reason": "cannot decode audio (Format not recognised.)"}]
    assert [item["path"] for item in document["items"]] == ["a.wav", "c.wav", "sub/b.flac"]
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [
        f"shard-{k:05d}.{suffix}" for k in range(shards) for suffix in ("json", "npy")
    ]


def test_shard_plan_depends_on_durations_only(corpus) -> None:
    entries = tokens.source_files(corpus)
    assert [e.relative for e in entries] == ["a.wav", "bad.wav", "c.wav", "sub/b.flac"]
    assert [e.seconds for e in entries] == [1.0, 0.0, 0.5, 1.5]
    shards = tokens.plan(entries, 1.0)  # a shard closes once it holds 1 s: [a], [bad, c, b]
    assert [[e.relative for e in shard] for shard in shards] == [["a.wav"], ["bad.wav", "c.wav", "sub/b.flac"]]


def test_manifest_source(tmp_path, corpus, expected, tiny) -> None:
    names = [os.path.relpath(corpus / p, tmp_path) for p in ("c.wav", "a.wav")]
    (tmp_path / "list.tsv").write_text("path\tseconds\n" + "".join(f"{name}\t1\n" for name in names))
    tokens.tokenize(tiny, tmp_path / "list.tsv", tmp_path / "tokens", BANDWIDTH, batch_seconds=1)
    loaded = tokens.load(tmp_path / "tokens")
    assert loaded.paths == names  # the manifest's order and spelling
    for name, path in zip(names, ["c.wav", "a.wav"], strict=True):
        assert np.array_equal(loaded[name], expected[path])


def _rank(rank: int, init_file: str, corpus: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    summary = tokens.tokenize("tiny", corpus, out, BANDWIDTH, batch_seconds=0.01, rank=rank, world=2)
    assert summary.complete and summary.files == 3
    dist.destroy_process_group()


def test_two_gloo_ranks_give_the_same_codes_and_index(tmp_path, corpus, expected, tiny) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(corpus), str(tmp_path / "ranks")), nprocs=2)
    tokens.tokenize(tiny, corpus, tmp_path / "one", BANDWIDTH, batch_seconds=0.01)
    assert_codes(tmp_path / "ranks", expected)
    assert index(tmp_path / "ranks") == index(tmp_path / "one")


def test_interrupted_run_resumes_without_redoing_finished_shards(tmp_path, corpus, expected, tiny, monkeypatch) -> None:
    full, out = tmp_path / "full", tmp_path / "out"
    tokens.tokenize(tiny, corpus, full, BANDWIDTH, batch_seconds=0.01)
    write_json, calls = tokens._write_json, []

    def killed_after_first_shard(path: Path, document: dict) -> None:
        if calls:  # the second shard: its .npy is written, then the run dies before its .json
            raise KeyboardInterrupt
        calls.append(path)
        write_json(path, document)

    monkeypatch.setattr(tokens, "_write_json", killed_after_first_shard)
    with pytest.raises(KeyboardInterrupt):
        tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=0.01)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.json", "shard-00000.npy", "shard-00001.npy"]
    assert len(tokens.load(out)) == 1  # what is finished is readable
    first = (out / "shard-00000.json").stat().st_mtime_ns

    made = []
    make_shard = tokens._make_shard
    monkeypatch.setattr(
        tokens, "_make_shard", lambda codec, o, k, *rest: made.append(k) or make_shard(codec, o, k, *rest)
    )
    summary = tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=0.01)
    assert made == [1, 2] and summary.finished_before == 1 and summary.complete
    assert (out / "shard-00000.json").stat().st_mtime_ns == first
    assert index(out) == index(full)
    assert_codes(out, expected)

    (out / "shard-00002.json").unlink()  # a shard lost: only it is made again
    made.clear()
    tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=0.01)
    assert made == [2] and index(out) == index(full)


def test_rerun_refuses_another_bandwidth_or_plan(tmp_path, corpus, tiny) -> None:
    out = tmp_path / "tokens"
    tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=0.01)
    message = rf"{out}: holds tokens of model .* at 4 kbps, codes v\d+, not of model .* at 8 kbps"
    with pytest.raises(NdvqError, match=message):
        tokens.tokenize(tiny, corpus, out, 8.0, batch_seconds=0.01)
    with pytest.raises(NdvqError, match=f"{out}: its shard 0 was made from other files"):
        tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=1000)


def test_refined_codes_equal_compress_refine_and_are_recorded(tmp_path, corpus, tiny) -> None:
    out, bandwidth, paths = tmp_path / "tokens", 8.0, ("a.wav", "c.wav", "sub/b.flac")
    tokens.tokenize(tiny, corpus, out, bandwidth, refine_steps=5, batch_seconds=0.01)
    refined = {p: bitstream.read(encode_file(tiny, corpus / p, bandwidth, refine_steps=5))[1] for p in paths}
    assert_codes(out, refined)
    plain = {p: bitstream.read(encode_file(tiny, corpus / p, bandwidth, refine_steps=0))[1] for p in paths}
    assert any(not np.array_equal(refined[p], plain[p]) for p in paths)  # refinement changed codes
    assert (index(out)["refine_steps"], index(out)["refine_version"]) == (5, REFINE_VERSION)
    assert tokens.load(out).refine_steps == 5
    message = rf"{out}: holds tokens of model .* at 8 kbps, refined with 5 steps \(v{REFINE_VERSION}\), codes v\d+, not"
    with pytest.raises(NdvqError, match=message):
        tokens.tokenize(tiny, corpus, out, bandwidth, batch_seconds=0.01)
    with pytest.raises(NdvqError, match="refine steps: expected a whole number of 0 or more, got -1"):
        tokens.tokenize(tiny, corpus, tmp_path / "never", bandwidth, refine_steps=-1)
    assert not (tmp_path / "never").exists()
    # Shards written before refinement existed (no refine_steps) read as unrefined.
    unrefined = tmp_path / "unrefined"
    tokens.tokenize(tiny, corpus, unrefined, BANDWIDTH, batch_seconds=1000)
    shard = unrefined / "shard-00000.json"
    shard.write_text(json.dumps({k: v for k, v in json.loads(shard.read_text()).items() if k != "refine_steps"}))
    assert tokens.load(unrefined).refine_steps == 0
    assert tokens.tokenize(tiny, corpus, unrefined, BANDWIDTH, batch_seconds=1000).finished_before == 1


def test_rerun_refuses_shards_of_another_version_of_the_codes(tmp_path, corpus, tiny) -> None:
    # A run resumed after compress changed how it computes codes must not mix the two in one directory.
    out = tmp_path / "tokens"
    tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=0.01)
    assert index(out)["codes_version"] == CODES_VERSION
    shard = out / "shard-00001.json"
    document = json.loads(shard.read_text())
    shard.write_text(json.dumps({k: v for k, v in document.items() if k != "codes_version"}))  # made before it
    message = rf"{out}: holds tokens of model .* at 4 kbps, codes v1, not of model .* at 4 kbps, codes v{CODES_VERSION}"
    with pytest.raises(NdvqError, match=message):
        tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=0.01)
    with pytest.raises(NdvqError, match=f"{out}: its shards come from different models, .* or versions of the codes"):
        tokens.load(out)


def test_load_random_access_equals_iteration(tmp_path, corpus, tiny) -> None:
    out = tmp_path / "tokens"
    tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=1.0)
    loaded = ndvq.tokens.load(out)
    pairs = list(loaded)
    assert len(loaded) == 3 and "c.wav" in loaded and "bad.wav" not in loaded and "nope.wav" not in loaded
    for path, array in reversed(pairs):
        assert np.array_equal(loaded[path], array) and array.shape[1] == 2
    assert loaded.failures == [("bad.wav", "cannot decode audio (Format not recognised.)")]
    with pytest.raises(KeyError):
        loaded["nope.wav"]
    with pytest.raises(NdvqError, match="no token shards"):
        tokens.load(tmp_path)
    shard = out / "shard-00000.json"
    document = json.loads(shard.read_text())
    for damaged in ({**document, "model": None}, {k: v for k, v in document.items() if k != "items"}):
        shard.write_text(json.dumps(damaged))
        with pytest.raises(NdvqError, match=f"{shard}: damaged tokens shard"):
            tokens.load(out)  # and a re-run of tokenize over it says the same
        with pytest.raises(NdvqError, match=f"{shard}: damaged tokens shard"):
            tokens.tokenize(tiny, corpus, out, BANDWIDTH, batch_seconds=1.0)


def test_cli(tmp_path, corpus, capsys) -> None:
    out = tmp_path / "tokens"
    code = main(["tokenize", str(corpus), str(out), "-b", "4", "--model", "tiny", "--batch-seconds", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(f"{out}: 3 files, 1 failures, 3.0 s of audio in 2 shards (0 already done)")
    assert "audio per second" in captured.out and "failed bad.wav: cannot decode audio" in captured.err
    assert len(tokens.load(out)) == 3

    refined = tmp_path / "refined"
    assert main(["tokenize", str(corpus), str(refined), "-b", "4", "--model", "tiny", "--refine", "2"]) == 0
    assert tokens.load(refined).refine_steps == 2
    capsys.readouterr()

    code = main(["tokenize", str(tmp_path / "missing"), str(out), "-b", "4", "--model", "tiny"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ndvq: error")]
    assert code == 1 and errors == [f"ndvq: error: {tmp_path / 'missing'}: no such file or directory"]
