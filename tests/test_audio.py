"""ndvq.audio's file listing, durations and mix-down, and what the evaluation takes as references."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ndvq import NdvqError
from ndvq.audio import audio_files, audio_seconds, mono_at, read_audio
from ndvq.eval.compare import reference_files
from ndvq.eval.systems import Codec2System
from ndvq.manifest import write_manifest


@pytest.fixture
def folder(tmp_path) -> Path:
    """b.WAV and sub/a.flac (audio), notes.txt, and a folder named like an audio file."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "looks.wav").mkdir()
    sf.write(tmp_path / "b.WAV", np.zeros(8000, dtype=np.float32), 16000)
    sf.write(tmp_path / "sub" / "a.flac", np.zeros((24000, 2), dtype=np.float32), 48000)
    (tmp_path / "notes.txt").write_text("not audio")
    return tmp_path


def test_audio_files_are_every_audio_file_below_sorted(folder: Path) -> None:
    assert audio_files(folder) == [folder / "b.WAV", folder / "sub" / "a.flac"]
    assert audio_files(folder, (".txt",)) == [folder / "notes.txt"]


def test_audio_seconds_reads_the_header_and_names_a_bad_file(folder: Path) -> None:
    assert audio_seconds(folder / "b.WAV") == 0.5
    assert audio_seconds(folder / "sub" / "a.flac") == 0.5
    with pytest.raises(NdvqError, match=f"{folder / 'notes.txt'}: cannot decode audio"):
        audio_seconds(folder / "notes.txt")


def test_mono_at_mixes_down_and_resamples() -> None:
    t = np.arange(48000) / 48000
    left, right = np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    mono = mono_at(np.stack([left, right]), 48000, 16000)
    assert mono.shape == (16000,) and mono.dtype == np.float32
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(mono[100:-100] - expected[100:-100]).max() < 1e-3
    assert mono_at(np.ones((2, 10)), 16000, 16000).dtype == np.float32  # same rate: still float32


def test_references_are_a_file_a_folder_or_a_manifest_of_any_name(folder: Path) -> None:
    assert reference_files(folder / "b.WAV") == [folder / "b.WAV"]
    assert reference_files(folder) == [folder / "b.WAV", folder / "sub" / "a.flac"]
    write_manifest(folder / "list.txt", [(folder / "sub" / "a.flac", 0.5)])
    assert reference_files(folder / "list.txt") == [(folder / "sub" / "a.flac").resolve()]
    with pytest.raises(NdvqError, match="notes.txt:1: not a manifest"):
        reference_files(folder / "notes.txt")
    with pytest.raises(NdvqError, match="gone: no such audio file, folder or manifest"):
        reference_files(folder / "gone")


def test_unknown_codec2_mode_is_named() -> None:
    system = object.__new__(Codec2System)  # without c2enc installed: the mode check needs no tool
    assert system.kbps("3200") == 3.2
    with pytest.raises(NdvqError, match="codec2: unknown mode 9999"):
        system.kbps("9999")


def _ogg_crc(page: bytes) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def test_an_ogg_without_end_of_stream_flag_decodes_whole(tmp_path: Path) -> None:
    """Some encoders never flag the last page end-of-stream (the klettres-data clips of the demo corpus): the
    file is whole, not truncated."""
    path = tmp_path / "no-eos.ogg"
    tone = 0.3 * np.sin(np.arange(32000) * 2 * np.pi * 440 / 16000).astype(np.float32)
    sf.write(path, tone, 16000)
    data = bytearray(path.read_bytes())
    last = data.rfind(b"OggS")
    assert data[last + 5] & 0x04  # libsndfile sets the flag; clear it and reseal the page
    data[last + 5] &= ~0x04
    data[last + 22 : last + 26] = bytes(4)
    data[last + 22 : last + 26] = _ogg_crc(bytes(data[last:])).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert audio_seconds(path) == pytest.approx(2.0)
    wav, rate = read_audio(path)
    assert rate == 16000 and wav.shape == (1, 32000)
