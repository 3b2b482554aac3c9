"""Training data: the dataset, manifests, the demo corpus builder and the LibriTTS reader."""

import logging
from pathlib import Path

import G722
import numpy as np
import pytest
import soundfile as sf
import torch

from ndvq import NdvqError
from ndvq.cli import main
from ndvq.train import corpus
from ndvq.train.data import AudioDataset, read_manifest


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


def test_no_usable_file_is_an_error(tmp_path) -> None:
    (tmp_path / "x.wav").write_text("nope")
    with pytest.raises(NdvqError, match="no readable audio files"):
        AudioDataset(tmp_path, 16000, 1.0)


def test_manifest_round_trip_and_errors(tmp_path) -> None:
    sf.write(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    corpus.write_manifest(tmp_path / "m" / "list.tsv", [(tmp_path / "a.wav", 1.0)])
    assert read_manifest(tmp_path / "m" / "list.tsv") == [((tmp_path / "a.wav").resolve(), 1.0)]
    assert len(AudioDataset(tmp_path / "m" / "list.tsv", 16000, 0.5)) == 1
    (tmp_path / "bad.tsv").write_text("path\tseconds\na.wav\tlong\n")
    with pytest.raises(NdvqError, match=r"bad.tsv:2: expected"):
        read_manifest(tmp_path / "bad.tsv")
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
    assert {split: files for split, (files, _) in summary.items()} == {"train": 3, "valid": 2, "test": 1}
    rows = read_manifest(tmp_path / "manifests" / "valid.tsv")
    assert [p.name for p, _ in rows] == ["19_198_000000.wav", "19_198_000001.wav"] and rows[0][1] == 0.5
    with pytest.raises(NdvqError, match="no LibriTTS subsets"):
        corpus.libritts_manifests(tmp_path / "manifests", tmp_path / "x")


def stub_packages(root: Path) -> None:
    """Two fake unpacked asterisk packages with G.722 prompts and copyright files."""
    for lang, voice in (("en", "en_US_f_Test"), ("fr", "fr_CA_f_Test")):
        sounds = root / "usr/share/asterisk/sounds" / voice
        (sounds / "digits").mkdir(parents=True)
        for i in range(12):
            samples = (tone(0.3 + 0.05 * i, 16000)[:, 0] * 32767).astype(np.int16)
            target = sounds / ("digits" if i % 3 == 0 else ".") / f"prompt{i}.g722"
            target.write_bytes(bytes(G722.G722(16000, 64000).encode(samples)))
        doc = root / "usr/share/doc" / f"asterisk-core-sounds-{lang}-g722"
        doc.mkdir(parents=True)
        (doc / "copyright").write_text(f"{lang} licence: CC-BY-SA-3.0\n")


def test_demo_corpus_from_stub_packages(tmp_path, capsys) -> None:
    stub_packages(tmp_path / "packages")
    assert main(["data", "demo", str(tmp_path / "demo"), "--packages", str(tmp_path / "packages")]) == 0
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
    assert "train:" in capsys.readouterr().out


def test_demo_corpus_without_apt_says_so(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(corpus.shutil, "which", lambda tool: None)
    assert main(["data", "demo", str(tmp_path / "demo")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("ndvq: error: apt-get not found") and "data.train=" in error and "\n" not in error
    assert not (tmp_path / "demo").exists()
