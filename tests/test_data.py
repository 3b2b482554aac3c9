"""Training data: the dataset, manifests, the demo corpus builder and the LibriTTS reader."""

import logging
import os
from pathlib import Path
import pickle
import shutil
import subprocess

import G722
import numpy as np
import pytest
import soundfile as sf
import torch

from ndvq import NdvqError
from ndvq.cli import main
from ndvq.train import corpus
from ndvq.train.corpus import read_manifest
from ndvq.train.data import AudioDataset


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (200 + 50 * c) * t) for c in range(channels)], axis=1).astype(np.float32)


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "mono8k.wav", tone(2.0, 8000), 8000)
    sf.write(tmp_path / "sub" / "stereo22k.flac", tone(1.5, 22050, 2), 22050)
    sf.write(tmp_path / "short16k.wav", tone(0.3, 16000), 16000)
    sf.write(tmp_path / "too_short.wav", tone(0.05, 16000), 16000)
    (tmp_path / "corrupt.wav").write_text("not audio at all")
    return tmp_path


def test_dataset_resamples_mixes_down_pads_and_skips(folder, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ndvq"):
        dataset = AudioDataset(folder, 16000, 0.5, min_seconds=0.1)
    assert [Path(p).name for p, _ in dataset.files] == ["mono8k.wav", "short16k.wav", "stereo22k.flac"]
    assert [Path(p).name for p, _ in dataset.skipped] == ["corrupt.wav"]
    assert "skipped" in caplog.text and "corrupt.wav" in caplog.text and "1 unreadable" in caplog.text
    for i in range(len(dataset)):
        item = dataset[i]
        assert item.shape == (1, 8000) and item.dtype == torch.float32
    short = dataset[1]
    assert short[0, 4800:].abs().max() == 0 and short[0, :4000].abs().max() > 0.1  # 0.3 s, zero-padded
    stereo = dataset[2]
    assert 0.25 < stereo.abs().max() < 0.62  # the mean of two 0.3 tones: mono, not summed


def test_crops_depend_only_on_seed_epoch_and_index(folder) -> None:
    a, b = AudioDataset(folder, 16000, 0.5, seed=3), AudioDataset(folder, 16000, 0.5, seed=3)
    assert torch.equal(a[0], b[0])
    a.set_epoch(1)
    assert not torch.equal(a[0], b[0])
    b.set_epoch(1)
    assert torch.equal(a[0], b[0])
    assert torch.equal(pickle.loads(pickle.dumps(a))[0], a[0])  # as in a DataLoader worker
    assert len(list(a)) == len(a)  # out-of-range items raise IndexError, so iteration ends


def test_file_broken_after_a_valid_header_does_not_crash(tmp_path, caplog) -> None:
    sf.write(tmp_path / "good.flac", tone(1.0, 16000), 16000)
    sf.write(tmp_path / "broken.flac", 0.1 * np.random.default_rng(0).standard_normal(64000).astype(np.float32), 16000)
    data = (tmp_path / "broken.flac").read_bytes()
    (tmp_path / "broken.flac").write_bytes(data[: len(data) // 2])
    dataset = AudioDataset(tmp_path, 16000, 3.0, min_seconds=0.5)
    with caplog.at_level(logging.WARNING, logger="ndvq"):
        items = [dataset[i] for i in range(len(dataset))]
    assert all(item.shape == (1, 48000) for item in items)
    assert "broken.flac while reading" in caplog.text


def test_file_missing_from_a_manifest_is_replaced_by_the_next(tmp_path, caplog) -> None:
    sf.write(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    corpus.write_manifest(tmp_path / "list.tsv", [(tmp_path / "gone.wav", 1.0), (tmp_path / "a.wav", 1.0)])
    dataset = AudioDataset(tmp_path / "list.tsv", 16000, 0.5)
    with caplog.at_level(logging.WARNING, logger="ndvq"):
        assert torch.equal(dataset[0], dataset[1])
    assert "gone.wav while reading" in caplog.text
    (tmp_path / "a.wav").unlink()
    with pytest.raises(NdvqError, match="none of the 2 files"):
        dataset[0]


def test_no_usable_file_is_an_error(tmp_path) -> None:
    (tmp_path / "x.wav").write_text("nope")
    with pytest.raises(NdvqError, match="no readable audio files"):
        AudioDataset(tmp_path, 16000, 1.0)


def test_manifest_round_trip_and_errors(tmp_path) -> None:
    sf.write(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    corpus.write_manifest(tmp_path / "m" / "list.tsv", [(tmp_path / "a.wav", 1.0)])
    assert read_manifest(tmp_path / "m" / "list.tsv") == [((tmp_path / "a.wav").resolve(), 1.0)]
    assert len(AudioDataset(tmp_path / "m" / "list.tsv", 16000, 0.5)) == 1
    for number, body in enumerate(["a.wav\tlong", "a.wav", "a.wav\tnan", "a.wav\t1\textra"]):
        (tmp_path / f"bad{number}.tsv").write_text(f"path\tseconds\na.wav\t1\n{body}\n")
        with pytest.raises(NdvqError, match=rf"bad{number}.tsv:3: expected"):
            read_manifest(tmp_path / f"bad{number}.tsv")
    (tmp_path / "foreign.tsv").write_text("file,duration\n")
    with pytest.raises(NdvqError, match="not a manifest"):
        read_manifest(tmp_path / "foreign.tsv")


def test_libritts_reader_on_a_fake_tree(tmp_path) -> None:
    for subset, count in (("train-clean-100", 3), ("dev-clean", 2), ("test-clean", 1), ("test-other", 4)):
        for i in range(count):
            path = tmp_path / "LibriTTS" / subset / "19" / "198" / f"19_198_{i:06d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.zeros(12000, np.float32), 24000)
    summary = corpus.libritts_manifests(tmp_path, tmp_path / "manifests")  # the parent of LibriTTS works too
    assert {split: files for split, (files, _) in summary["splits"].items()} == {"train": 3, "valid": 2, "test": 1}
    assert summary["subsets"]["dev-clean"] == (2, 1 / 60)
    rows = read_manifest(tmp_path / "manifests" / "valid.tsv")
    assert [p.name for p, _ in rows] == ["19_198_000000.wav", "19_198_000001.wav"] and rows[0][1] == 0.5
    with pytest.raises(NdvqError, match="no LibriTTS subsets"):
        corpus.libritts_manifests(tmp_path / "manifests", tmp_path / "x")


VOICES = {"en": "en_US_f_Test", "fr": "fr_CA_f_Test"}


def stub_packages(root: Path, separate: bool = False) -> None:
    """Two fake unpacked asterisk packages with G.722 prompts (12 good, 1 empty each) and copyright files,
    unpacked together in root or (separate) each in root/<package>."""
    for lang, voice in VOICES.items():
        package = f"asterisk-core-sounds-{lang}-g722"
        tree = root / package if separate else root
        sounds = tree / "usr/share/asterisk/sounds" / voice
        (sounds / "digits").mkdir(parents=True)
        for i in range(12):
            samples = (tone(0.3 + 0.05 * i, 16000)[:, 0] * 32767).astype(np.int16)
            target = sounds / ("digits" if i % 3 == 0 else ".") / f"prompt{i}.g722"
            target.write_bytes(bytes(G722.G722(16000, 64000).encode(samples)))
        (sounds / "empty.g722").write_bytes(b"")
        doc = tree / "usr/share/doc" / package
        doc.mkdir(parents=True)
        (doc / "copyright").write_text(f"{lang} licence: CC-BY-SA-3.0\n")


def test_split_is_a_fixed_hash_of_the_relative_path() -> None:
    names = [f"en_US_f_Allison/digits/{i}.flac" for i in range(200)]
    splits = [corpus.split_of(name) for name in names]
    assert [i for i, split in enumerate(splits[:12]) if split != "train"] == [7, 8, 10, 11]  # pinned: any machine
    assert splits[7] == "test" and splits[11] == "valid"
    assert 0.8 < splits.count("train") / 200 < 0.97 and splits.count("valid") and splits.count("test")


def test_demo_corpus_from_stub_packages(tmp_path, capsys) -> None:
    stub_packages(tmp_path / "packages")
    assert main(["data", "demo", str(tmp_path / "demo"), "--packages", str(tmp_path / "packages")]) == 0
    out, err = capsys.readouterr()
    assert err.count("empty.g722: empty") == 2
    manifests = {s: read_manifest(tmp_path / "demo" / f"{s}.tsv") for s in ("train", "valid", "test")}
    files = [p for rows in manifests.values() for p, _ in rows]
    assert len(files) == len(set(files)) == 24  # a partition of every prompt
    assert all(
        corpus.split_of(str(p.relative_to(tmp_path / "demo" / "audio").as_posix())) == s
        for s, rows in manifests.items()
        for p, _ in rows
    )
    info = sf.info(str(files[0]))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert sorted(p.name for p in (tmp_path / "demo" / "licenses").iterdir()) == [
        "asterisk-core-sounds-en-g722.copyright",
        "asterisk-core-sounds-fr-g722.copyright",
    ]
    assert "split train: " in out and "voice en_US_f_Test: 12 files" in out and "voice fr_CA_f_Test: 12 files" in out
    again = corpus.build_demo_corpus(tmp_path / "packages", tmp_path / "again")
    assert {s: len(read_manifest(tmp_path / "again" / f"{s}.tsv")) for s in manifests} == {
        s: len(rows) for s, rows in manifests.items()
    }
    assert sum(files for files, _ in again["splits"].values()) == 24 and set(again["voices"]) == set(VOICES.values())


def test_demo_corpus_from_separately_unpacked_trees(tmp_path) -> None:
    stub_packages(tmp_path / "packages", separate=True)
    summary = corpus.build_demo_corpus(tmp_path / "packages", tmp_path / "demo")
    assert {voice: files for voice, (files, _) in summary["voices"].items()} == {v: 12 for v in VOICES.values()}
    assert len(list((tmp_path / "demo" / "licenses").iterdir())) == 2


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_demo_corpus_from_deb_files(tmp_path, capsys) -> None:
    stub_packages(tmp_path / "tree")
    (tmp_path / "tree" / "DEBIAN").mkdir()
    control = "Package: stub\nVersion: 1\nArchitecture: all\nMaintainer: x <x@example.org>\nDescription: stub\n"
    (tmp_path / "tree" / "DEBIAN" / "control").write_text(control)
    (tmp_path / "debs").mkdir()
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--build", str(tmp_path / "tree"), str(tmp_path / "debs" / "stub.deb")],
        check=True,
        capture_output=True,
    )
    assert main(["data", "demo", str(tmp_path / "demo"), "--packages", str(tmp_path / "debs")]) == 0
    assert sorted(p.name for p in (tmp_path / "debs").iterdir()) == ["stub.deb"]  # unpacked elsewhere
    assert sum(len(read_manifest(tmp_path / "demo" / f"{s}.tsv")) for s in ("train", "valid", "test")) == 24


def test_demo_corpus_without_apt_says_so(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(corpus.shutil, "which", lambda tool: None)
    assert main(["data", "demo", str(tmp_path / "demo")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("ndvq: error: apt-get not found") and "data.train=" in error and "\n" not in error
    assert not (tmp_path / "demo").exists()


def test_demo_download_without_package_lists_says_so(tmp_path, monkeypatch, capsys) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "dpkg-deb"):
        (bin_dir / tool).write_text(
            "#!/bin/sh\necho 'E: Unable to locate package asterisk-core-sounds-en-g722' >&2\nexit 100\n"
        )
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    assert main(["data", "demo", str(tmp_path / "demo")]) == 1
    error = capsys.readouterr().err.strip()
    assert "package lists are missing" in error and "apt-get update" in error and "\n" not in error
