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
from ndvq.manifest import read_manifest, write_manifest
from ndvq.train import corpus
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


def test_speed_perturbation_shifts_pitch_within_the_range_and_is_reproducible(tmp_path) -> None:
    t = np.arange(32000) / 16000
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000)

    def peak_hz(item: torch.Tensor) -> float:
        spectrum = np.abs(np.fft.rfft(item[0].numpy() * np.hanning(item.shape[-1]), n=1 << 16))
        return float(np.argmax(spectrum) * 16000 / (1 << 16))

    plain = AudioDataset(tmp_path, 16000, 0.5)
    assert peak_hz(plain[0]) == pytest.approx(1000, abs=1)
    peaks = []
    a, b = AudioDataset(tmp_path, 16000, 0.5, speed=0.1), AudioDataset(tmp_path, 16000, 0.5, speed=0.1)
    for epoch in range(20):
        a.set_epoch(epoch), b.set_epoch(epoch)
        item = a[0]
        assert item.shape == (1, 8000) and torch.equal(item, b[0])
        assert item[0, -100:].abs().max() > 0.1  # enough source was read for the whole crop at the highest speed
        peaks.append(peak_hz(item))
    assert 899 < min(peaks) and max(peaks) < 1101  # 1 kHz played at 0.9 .. 1.1 times its speed
    assert max(peaks) - min(peaks) > 60  # spread over the range, not one speed
    with pytest.raises(NdvqError, match="speed perturbation"):
        AudioDataset(tmp_path, 16000, 0.5, speed=0.5)


def test_channel_augmentation_keeps_each_octave_within_the_gain_range_and_is_reproducible(tmp_path) -> None:
    noise = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", noise, 16000)
    plain = AudioDataset(tmp_path, 16000, 0.5)
    a, b = (AudioDataset(tmp_path, 16000, 0.5, equaliser_db=10, dc_offset=0.3) for _ in range(2))
    frequencies = np.fft.rfftfreq(8000, 1 / 16000)
    octave_ratios_db, offsets = [], []
    for epoch in range(10):
        for dataset in (plain, a, b):
            dataset.set_epoch(epoch)
        clean, item = plain[0][0].numpy(), a[0]
        assert torch.equal(item, b[0]) and item.dtype == torch.float32
        item = item[0].numpy()
        offsets.append(item.mean() / np.sqrt(np.mean(np.square(item - item.mean()))))
        # the same crop (augmentation draws come after the crop's), its octave bands between 125 Hz and 4 kHz
        # filtered by at most +-10 dB
        spectrum_in, spectrum_out = np.abs(np.fft.rfft(clean)) ** 2, np.abs(np.fft.rfft(item)) ** 2
        for low in (125, 250, 500, 1000, 2000):
            band = (frequencies >= low) & (frequencies < 2 * low)
            octave_ratios_db.append(10 * np.log10(spectrum_out[band].sum() / spectrum_in[band].sum()))
    assert -10.5 < min(octave_ratios_db) < -3 and 3 < max(octave_ratios_db) < 10.5  # the range, not one gain
    assert max(np.abs(offsets)) < 0.35 and np.std(offsets) > 0.05  # a DC offset up to 0.3 of the RMS, varied
    with pytest.raises(NdvqError, match="data.equaliser"):
        AudioDataset(tmp_path, 16000, 0.5, equaliser_db=-1)


def test_folder_weights_balance_folders_and_repeated_draws_are_new_crops(tmp_path) -> None:
    for name, count in (("big", 6), ("small", 2)):
        (tmp_path / name).mkdir()
        for i in range(count):
            sf.write(tmp_path / name / f"{i}.wav", tone(1.0 + 0.1 * i, 16000), 16000)
    dataset = AudioDataset(tmp_path, 16000, 0.25)
    small = torch.tensor(["small" in path for path, _ in dataset.files])
    for balance, share in ((0, 2 / 8), (0.5, 2 / (2 + 6**0.5 * 2**0.5)), (1, 1 / 2)):
        weights = dataset.folder_weights(balance)
        assert weights.sum().item() == pytest.approx(1) and weights[small].sum().item() == pytest.approx(share)
    first, again, second = dataset[3], dataset[(3, 0)], dataset[(3, 1)]
    assert torch.equal(first, again) and not torch.equal(first, second)  # a second draw in the epoch: a new crop
    with pytest.raises(IndexError):
        dataset[(8, 0)]


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


def test_file_missing_from_a_manifest_is_skipped_or_replaced_by_the_next(tmp_path, caplog) -> None:
    sf.write(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    sf.write(tmp_path / "b.wav", tone(1.0, 16000), 16000)
    rows = [(tmp_path / "gone.wav", 1.0), (tmp_path / "b.wav", 1.0), (tmp_path / "a.wav", 1.0)]
    write_manifest(tmp_path / "list.tsv", rows)
    with caplog.at_level(logging.WARNING, logger="ndvq"):
        dataset = AudioDataset(tmp_path / "list.tsv", 16000, 0.5)  # missing at the start: skipped, said once
    assert [Path(p).name for p, _ in dataset.files] == ["b.wav", "a.wav"]
    assert [(Path(p).name, reason) for p, reason in dataset.skipped] == [("gone.wav", "no such file")]
    assert "gone.wav: no such file" in caplog.text and "1 unreadable" in caplog.text
    (tmp_path / "b.wav").unlink()  # gone since: replaced by the next item's crop
    with caplog.at_level(logging.WARNING, logger="ndvq"):
        assert torch.equal(dataset[0], dataset[1])
    assert "b.wav while reading" in caplog.text
    (tmp_path / "a.wav").unlink()
    with pytest.raises(NdvqError, match="none of the 2 files"):
        dataset[0]


def test_no_usable_file_is_an_error(tmp_path) -> None:
    (tmp_path / "x.wav").write_text("nope")
    with pytest.raises(NdvqError, match="no readable audio files"):
        AudioDataset(tmp_path, 16000, 1.0)


def test_manifest_round_trip_and_errors(tmp_path) -> None:
    sf.write(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    write_manifest(tmp_path / "m" / "list.tsv", [(tmp_path / "a.wav", 1.0)])
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


VOICES = {"en": "en_US_f_Allison", "es": "es_MX_f_Allison", "ru": "ru_RU_f_IvrvoiceRU"}  # asterisk: train, test
KLETTRES = {"fr": 1, "ar": 2, "de": 1}  # {language: channels}: train, test, valid
SPLIT_VOICES = {
    "train": {"en_US_f_Allison", "es_MX_f_Allison", "klettres_fr"},
    "valid": {"klettres_de"},
    "test": {"ru_RU_f_IvrvoiceRU", "klettres_ar"},
}
CLIPS = 12 * len(VOICES) + 4 * len(KLETTRES)


def stub_packages(root: Path, separate: bool = False) -> None:
    """Fake unpacked asterisk packages with G.722 prompts (12 good, 1 empty each) and a fake klettres-data with
    Ogg clips at 44.1 kHz (4 good, 1 broken each), with copyright files, unpacked together in root or (separate)
    each in root/<package>."""
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
    tree = root / "klettres-data" if separate else root
    for lang, channels in KLETTRES.items():
        for i in range(4):
            target = tree / "usr/share/klettres" / lang / ("alpha" if i < 3 else "syllab") / f"{i}.ogg"
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, tone(0.5, 44100, channels), 44100, format="OGG", subtype="VORBIS")
        (target.parent / "broken.ogg").write_text("not audio")
    (tree / "usr/share/klettres/pics").mkdir()
    (tree / "usr/share/doc/klettres-data").mkdir(parents=True)
    (tree / "usr/share/doc/klettres-data/copyright").write_text("License: GPL-2+\n")


def test_split_table_holds_out_whole_speakers(monkeypatch) -> None:
    held_out = list(corpus.DEMO_HELD_OUT.items())
    assert set(corpus.DEMO_HELD_OUT.values()) == {"valid", "test"}
    assert [v for v, s in held_out if s == "test" and not v.startswith("klettres_")] == ["ru_RU_f_IvrvoiceRU"]
    assert sum(s == "test" for _, s in held_out) == 7 and sum(s == "valid" for _, s in held_out) == 3
    assert corpus.demo_split("klettres_ml") == corpus.demo_split("en_US_f_Allison") == "train"
    monkeypatch.setitem(corpus.DEMO_HELD_OUT, "en_US_f_Allison", "valid")
    assert corpus.demo_split("es_MX_f_Allison") == "valid"  # one speaker, two folders: one split


def test_demo_corpus_from_stub_packages(tmp_path, capsys) -> None:
    stub_packages(tmp_path / "packages")
    assert main(["data", "demo", str(tmp_path / "demo"), "--packages", str(tmp_path / "packages")]) == 0
    out, err = capsys.readouterr()
    assert err.count("empty.g722: empty") == 3 and err.count("broken.ogg: cannot decode audio") == 3
    audio = tmp_path / "demo" / "audio"
    manifests = {s: read_manifest(tmp_path / "demo" / f"{s}.tsv") for s in ("train", "valid", "test")}
    files = [p for rows in manifests.values() for p, _ in rows]
    assert len(files) == len(set(files)) == CLIPS  # a partition of every clip
    voices = {s: {p.relative_to(audio).parts[0] for p, _ in rows} for s, rows in manifests.items()}
    assert voices == SPLIT_VOICES  # the split table, whole voices, none in two splits
    assert all(corpus.demo_split(v) == s for s, names in voices.items() for v in names)
    for path, seconds in manifests["test"]:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
        assert info.frames == round(seconds * 16000)
    clip = audio / "klettres_ar" / "syllab" / "3.flac"
    assert (clip, 0.5) in manifests["test"] and (audio / "klettres_de" / "alpha" / "0.flac", 0.5) in manifests["valid"]
    samples, _ = sf.read(clip)
    assert 0.25 < np.abs(samples).max() < 0.32  # the mean of two 0.3 tones: mono, not summed
    assert sorted(p.name for p in (tmp_path / "demo" / "licenses").iterdir()) == [
        *(f"asterisk-core-sounds-{lang}-g722.copyright" for lang in ("en", "es", "ru")),
        "klettres-data.copyright",
    ]
    assert (tmp_path / "demo/licenses/klettres-data.copyright").read_text() == "License: GPL-2+\n"
    assert "split test: 16 files" in out and "2 voices -> " in out
    assert "voice en_US_f_Allison (train): 12 files" in out and "voice klettres_de (valid): 4 files" in out
    again = corpus.build_demo_corpus(tmp_path / "packages", tmp_path / "again")
    assert {s: len(read_manifest(tmp_path / "again" / f"{s}.tsv")) for s in manifests} == {
        s: len(rows) for s, rows in manifests.items()
    }
    assert sum(files for files, _ in again["splits"].values()) == CLIPS
    assert set(again["voices"]) == set().union(*SPLIT_VOICES.values())


def test_demo_corpus_from_separately_unpacked_trees(tmp_path) -> None:
    stub_packages(tmp_path / "packages", separate=True)
    summary = corpus.build_demo_corpus(tmp_path / "packages", tmp_path / "demo")
    assert {voice: files for voice, (files, _) in summary["voices"].items()} == {
        **{v: 12 for v in VOICES.values()},
        **{f"klettres_{lang}": 4 for lang in KLETTRES},
    }
    assert len(list((tmp_path / "demo" / "licenses").iterdir())) == 4


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
    assert sum(len(read_manifest(tmp_path / "demo" / f"{s}.tsv")) for s in ("train", "valid", "test")) == CLIPS


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
