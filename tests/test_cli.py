"""The command line: good paths, every kind of bad input, and what is left on disk."""

from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from ndvq import Codec
from ndvq.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_wav(path: Path, wav: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(path, wav.T, rate, subtype=subtype)
    return path


def assert_one_error_line(stderr: str, prefix: str, message: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("ndvq: error")]
    assert len(errors) == 1 and errors[0].startswith(prefix) and message in errors[0], stderr


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def clip(tmp_path, speech) -> Path:
    wav, rate = speech
    return write_wav(tmp_path / "clip.wav", wav, rate)


def test_compress_info_decompress(tmp_path, capsys, clip) -> None:
    code, out, err = run(capsys, "compress", clip, tmp_path / "clip.ndvq", "-b", "4", "--model", "tiny")
    assert code == 0, err
    assert "untrained preset" in err
    size = (tmp_path / "clip.ndvq").stat().st_size
    assert f"{size} bytes = {size - 50} codes + 50 header" in out and "4 kbps nominal" in out
    code, out, _ = run(capsys, "info", tmp_path / "clip.ndvq")
    assert code == 0 and "2 stages x 375 frames x 8 bits" in out and "16000 Hz, 24000 samples" in out
    code, out, err = run(capsys, "decompress", tmp_path / "clip.ndvq", tmp_path / "out.wav", "--model", "tiny")
    assert code == 0, err
    decoded, rate = sf.read(tmp_path / "out.wav", always_2d=True)
    assert rate == 16000 and decoded.shape == (24000, 1)
    assert files(tmp_path) == ["clip.ndvq", "clip.wav", "out.wav"]


def test_roundtrip_restores_rate_and_channels(tmp_path, capsys) -> None:
    stereo = 0.1 * np.random.default_rng(0).standard_normal((2, 22050)).astype(np.float32)
    source = tmp_path / "stereo.flac"
    sf.write(source, stereo.T, 44100)
    code, _, err = run(capsys, "roundtrip", source, tmp_path / "out.flac", "-b", "2", "--model", "tiny")
    assert code == 0, err
    info = sf.info(tmp_path / "out.flac")
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 22050)


def test_directory_mirrors_tree(tmp_path, capsys, speech) -> None:
    wav, rate = speech
    (tmp_path / "in" / "a" / "b").mkdir(parents=True)
    write_wav(tmp_path / "in" / "one.wav", wav[:, :4000], rate)
    sf.write(tmp_path / "in" / "a" / "b" / "two.flac", wav[0, :3000], rate)
    (tmp_path / "in" / "notes.txt").write_text("not audio, not selected")
    assert run(capsys, "compress", tmp_path / "in", tmp_path / "codes", "--model", "tiny", "-b", "8")[0] == 0
    assert files(tmp_path / "codes") == ["a", "a/b", "a/b/two.ndvq", "one.ndvq"]
    assert run(capsys, "decompress", tmp_path / "codes", tmp_path / "out", "--model", "tiny")[0] == 0
    assert files(tmp_path / "out") == ["a", "a/b", "a/b/two.wav", "one.wav"]
    assert sf.info(tmp_path / "out" / "a" / "b" / "two.wav").frames == 3000


def _bad_audio(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"bad_{kind}.wav"
    tone = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)[None]
    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "not_audio":
        path.write_text("this is a text file, not audio\n" * 20)
    elif kind == "truncated":
        write_wav(path, tone)
        path.write_bytes(path.read_bytes()[:20000])
    elif kind == "zero_length":
        write_wav(path, np.zeros((1, 0), np.float32))
    elif kind in ("nan", "inf"):
        tone[0, 100] = np.nan if kind == "nan" else np.inf
        write_wav(path, tone, subtype="FLOAT")
    elif kind == "truncated_flac":
        path = tmp_path / "bad.flac"
        sf.write(path, tone.T, 16000)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "header_only_flac":  # a download cut off early: libsndfile fails to seek, not to open
        path = tmp_path / "bad.flac"
        sf.write(path, tone.T, 16000)
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "truncated_aiff":  # libsndfile indents the AIFF note of a short chunk, unlike WAV's
        path = tmp_path / "bad.aiff"
        sf.write(path, tone.T, 16000)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind in ("truncated_ogg", "truncated_opus", "truncated_mp3"):  # lossy files decode short, not fail
        path = tmp_path / f"bad.{kind.removeprefix('truncated_')}"
        opus = {"format": "OGG", "subtype": "OPUS"} if kind == "truncated_opus" else {}
        sf.write(path, np.tile(tone, 8).T, 16000, **opus)  # 8 s: several Ogg pages, so that the cut is not in the first
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    elif kind == "damaged_mp3":  # libmpg123 gives up resyncing, and says so on stderr by itself
        path = tmp_path / "bad.mp3"
        sf.write(path, tone.T, 16000)
        data = bytearray(path.read_bytes())
        data[len(data) // 3 : 2 * len(data) // 3] = bytes(len(data) // 3)
        path.write_bytes(bytes(data))
    elif kind == "missing":
        path = tmp_path / "missing.wav"
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty_file", "cannot decode audio"),
        ("not_audio", "cannot decode audio"),
        ("truncated", "truncated file"),
        ("truncated_flac", "cannot decode audio"),
        ("header_only_flac", "cannot decode audio"),
        ("truncated_aiff", "truncated file"),
        ("truncated_ogg", "truncated file"),
        ("truncated_opus", "truncated file"),
        ("truncated_mp3", "damaged or truncated audio"),
        ("damaged_mp3", "damaged or truncated audio"),
        ("zero_length", "no audio samples"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("missing", "no such file or directory"),
    ],
)
@pytest.mark.parametrize("command", ["compress", "roundtrip"])
def test_bad_audio_input(tmp_path, capfd, command: str, kind: str, message: str) -> None:
    source = _bad_audio(tmp_path, kind)
    before = files(tmp_path)
    target = tmp_path / ("out.ndvq" if command == "compress" else "out.wav")
    code, out, err = run(capfd, command, source, target, "--model", "tiny", "-b", "2")
    assert code == 1
    assert_one_error_line(err, f"ndvq: error: {source}: ", message)
    assert all(line.startswith("ndvq: ") for line in err.splitlines()), err
    assert files(tmp_path) == before  # no output and no temporary file left behind


@pytest.mark.parametrize("suffix, subtype", [(".ogg", "VORBIS"), (".opus", "OPUS"), (".mp3", "MPEG_LAYER_III")])
def test_lossy_input_decodes_whole_to_16_bit_wav(tmp_path, capfd, suffix: str, subtype: str) -> None:
    source = tmp_path / f"tone{suffix}"
    tone = 0.1 * np.sin(np.arange(8 * 16000) / 5)
    sf.write(source, tone, 16000, format="MP3" if suffix == ".mp3" else "OGG", subtype=subtype)
    code, _, err = run(capfd, "roundtrip", source, tmp_path / "out.wav", "--model", "tiny", "-b", "2")
    assert code == 0, err
    out = sf.info(tmp_path / "out.wav")
    assert (out.subtype, out.frames) == ("PCM_16", sf.info(source).frames)


def test_a_variable_bitrate_mp3_without_xing_header_decodes_whole(tmp_path, capfd) -> None:
    """Without a Xing header an MP3's length is a guess from its first frame's bitrate: a variable-bitrate file
    decodes far fewer samples than that and is still whole, not truncated."""
    rng = np.random.default_rng(0)
    signal = np.concatenate([np.zeros(32000), 0.3 * rng.standard_normal(32000), 0.3 * np.sin(np.arange(32000) / 5)])
    source = tmp_path / "vbr.mp3"
    sf.write(source, signal.astype(np.float32), 16000, format="MP3", bitrate_mode="VARIABLE")
    data = source.read_bytes()
    assert data[:2] == b"\xff\xf3" and b"Xing" in data[:64]  # MPEG-2 layer III, the first frame is the header
    kbps = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)[data[2] >> 4]
    first_frame = 72_000 * kbps // 16000 + (data[2] >> 1 & 1)
    source.write_bytes(data[first_frame:])
    assert sf.info(source).frames > 1.2 * len(signal)  # the guess, far from what decodes
    code, _, err = run(capfd, "roundtrip", source, tmp_path / "out.wav", "--model", "tiny", "-b", "2")
    assert code == 0, err
    assert sf.info(tmp_path / "out.wav").frames == pytest.approx(len(signal), rel=0.02)


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, capsys, clip) -> None:
    original = clip.read_bytes()
    (tmp_path / "link.wav").symlink_to(clip)
    for argv, target, message in [
        (["roundtrip", clip, clip], clip, "is the input file"),
        (["roundtrip", clip, tmp_path / "link.wav"], tmp_path / "link.wav", "is the input file"),
        (["compress", clip, clip], clip, "compress writes an .ndvq file, not .wav audio"),
    ]:
        code, _, err = run(capsys, *argv, "--model", "tiny", "-b", "2")
        assert code == 1
        assert_one_error_line(err, f"ndvq: error: {target}: ", message)
        assert clip.read_bytes() == original
    assert run(capsys, "compress", clip, tmp_path / "c.ndvq", "--model", "tiny", "-b", "2")[0] == 0
    packed = (tmp_path / "c.ndvq").read_bytes()
    code, _, err = run(capsys, "decompress", tmp_path / "c.ndvq", tmp_path / "c.ndvq", "--model", "tiny")
    assert code == 1 and "is the input file" in err and (tmp_path / "c.ndvq").read_bytes() == packed


def test_very_short_audio_is_coded(tmp_path, capsys) -> None:
    source = write_wav(tmp_path / "short.wav", np.full((1, 3), 0.25, np.float32))
    assert run(capsys, "roundtrip", source, tmp_path / "out.wav", "--model", "tiny", "-b", "2")[0] == 0
    assert sf.info(tmp_path / "out.wav").frames == 3


@pytest.fixture
def compressed(tmp_path, capsys, clip) -> Path:
    assert run(capsys, "compress", clip, tmp_path / "clip.ndvq", "--model", "tiny", "-b", "2")[0] == 0
    return tmp_path / "clip.ndvq"


def _other_model(tmp_path: Path) -> Path:
    torch.manual_seed(7)
    Codec(Codec.from_preset("tiny").config).save(tmp_path / "other")
    return tmp_path / "other"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[:-7], "truncated or corrupted .ndvq file"),
        (lambda d: d[:30] + bytes([d[30] ^ 4]) + d[31:], "corrupted .ndvq file (checksum mismatch)"),
        (lambda d: b"ID3" + d[3:], "not an .ndvq file"),
        (lambda d: b"", "not an .ndvq file"),
    ],
)
def test_bad_ndvq_input(tmp_path, capsys, compressed: Path, damage, message: str) -> None:
    compressed.write_bytes(damage(compressed.read_bytes()))
    before = files(tmp_path)
    code, _, err = run(capsys, "decompress", compressed, tmp_path / "out.wav", "--model", "tiny")
    assert code == 1
    assert_one_error_line(err, f"ndvq: error: {compressed}: ", message)
    assert files(tmp_path) == before
    code, _, err = run(capsys, "info", compressed)
    assert code == 1 and len(err.splitlines()) == 1
    assert_one_error_line(err, f"ndvq: error: {compressed}: ", message)


def test_ndvq_from_another_model(tmp_path, capsys, compressed: Path) -> None:
    other = _other_model(tmp_path)
    before = files(tmp_path)
    code, _, err = run(capsys, "decompress", compressed, tmp_path / "out.wav", "--model", other)
    assert code == 1 and f"ndvq: error: {compressed}: made by another model" in err
    assert files(tmp_path) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-b", "5"], "unsupported bitrate 5 kbps (this model supports 2, 4, 8)"),
        (["--model", "nonexistent"], "nonexistent: not a model directory, shipped model or preset"),
    ],
)
def test_bad_options(tmp_path, capsys, clip, argv: list[str], message: str) -> None:
    before = files(tmp_path)
    code, _, err = run(capsys, "compress", clip, tmp_path / "x.ndvq", *(["--model", "tiny", "-b", "2"] + argv))
    assert code == 1
    assert_one_error_line(err, "ndvq: error: ", message)
    assert files(tmp_path) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "REF", "--out", "OUT", "--model", "tiny", "-b", "abc"], "expected a bitrate in kbps, got 'abc'"),
        (["eval", "REF", "--out", "OUT", "--opus", "-6"], "expected a bitrate in kbps, got '-6'"),
        (["compress", "REF", "OUT", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["eval", "REF", "--out", "OUT", "--model", "tiny", "--limit", "0"], "--limit: must be at least 1, got 0"),
        (["eval", "REF", "--out", "OUT", "--model", "tiny", "--workers", "-3"], "--workers: must be at least 1"),
        (["tokenize", "REF", "OUT", "--workers", "two"], "--workers: expected a whole number, got 'two'"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, clip, argv: list[str], message: str) -> None:
    argv = [{"REF": str(clip), "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and message in err and "--help" in err, err
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_summary_that_is_not_one(tmp_path, capsys) -> None:
    (tmp_path / "summary.json").write_text("{}")
    code, _, err = run(capsys, "report", tmp_path)
    assert code == 1
    assert_one_error_line(err, f"ndvq: error: {tmp_path / 'summary.json'}", "not an `ndvq eval` summary")
    assert files(tmp_path) == ["summary.json"]
    code, _, err = run(capsys, "report", tmp_path / "summary.json")
    assert code == 1
    assert_one_error_line(err, f"ndvq: error: {tmp_path / 'summary.json'}: ", "not a directory")


def test_eval_model_argument_needs_a_label_and_a_model(tmp_path, capsys, clip) -> None:
    for item in ("ndvq=", "=tiny"):
        code, _, err = run(capsys, "eval", clip, "--out", tmp_path / "out", "--model", item)
        assert code == 1
        assert_one_error_line(err, f"ndvq: error: --model {item}: ", "expected LABEL=MODEL")
    assert not (tmp_path / "out").exists()


def test_output_folder_under_a_file_is_one_line(tmp_path, capsys, clip) -> None:
    code, _, err = run(capsys, "fit-entropy", "tiny", clip, "--out", clip / "model", "--limit", "1")
    assert code == 1
    assert_one_error_line(err, f"ndvq: error: {clip / 'model'}", f"({clip} is not a directory)")


def test_an_os_error_no_command_expected_is_one_line(tmp_path, capsys, clip, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError(5, "Input/output error", str(clip))

    monkeypatch.setattr("ndvq.cli._info", refuse)
    code, _, err = run(capsys, "info", clip)
    assert code == 1
    assert_one_error_line(err, "ndvq: error: ", f"Input/output error: '{clip}'")
    assert "Traceback" not in err


def test_directory_continues_past_a_bad_file(tmp_path, capsys, speech) -> None:
    wav, rate = speech
    (tmp_path / "in").mkdir()
    write_wav(tmp_path / "in" / "good.wav", wav[:, :2000], rate)
    (tmp_path / "in" / "bad.wav").write_text("garbage")
    code, out, err = run(capsys, "compress", tmp_path / "in", tmp_path / "codes", "--model", "tiny", "-b", "2")
    assert code == 1 and "bad.wav: cannot decode audio" in err and "good.wav" in out
    assert files(tmp_path / "codes") == ["good.ndvq"]


def test_console_entry_point_prints_no_traceback(tmp_path) -> None:
    (tmp_path / "bad.wav").write_text("garbage")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ndvq",
            "compress",
            tmp_path / "bad.wav",
            tmp_path / "x.ndvq",
            "--model",
            "tiny",
            "-b",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"ndvq: error: {tmp_path / 'bad.wav'}: cannot decode")
    assert "Traceback" not in result.stderr and not (tmp_path / "x.ndvq").exists()


@pytest.mark.parametrize(
    "subtype, suffix, expected",
    [
        ("PCM_16", ".wav", "PCM_16"),
        ("PCM_24", ".wav", "PCM_24"),
        ("FLOAT", ".wav", "FLOAT"),
        ("FLOAT", ".flac", "PCM_24"),
    ],
)
def test_roundtrip_output_follows_the_input_sample_format(tmp_path, capsys, speech, subtype, suffix, expected) -> None:
    wav, rate = speech
    source = write_wav(tmp_path / "in.wav", wav[:, :4000], rate, subtype)
    assert run(capsys, "roundtrip", source, tmp_path / f"out{suffix}", "--model", "tiny", "-b", "2")[0] == 0
    assert sf.info(tmp_path / f"out{suffix}").subtype == expected


def test_subtype_option(tmp_path, capsys, compressed: Path) -> None:
    assert run(capsys, "decompress", compressed, tmp_path / "plain.wav", "--model", "tiny")[0] == 0
    assert sf.info(tmp_path / "plain.wav").subtype == "PCM_16"  # a .ndvq file does not record the input's
    code, _, err = run(capsys, "decompress", compressed, tmp_path / "f.wav", "--model", "tiny", "--subtype", "float")
    assert code == 0, err
    assert sf.info(tmp_path / "f.wav").subtype == "FLOAT"
    before = files(tmp_path)
    code, _, err = run(capsys, "decompress", compressed, tmp_path / "v.wav", "--model", "tiny", "--subtype", "VORBIS")
    assert code == 1
    assert_one_error_line(err, f"ndvq: error: {tmp_path / 'v.wav'}: ", "WAV files cannot hold samples as VORBIS")
    assert files(tmp_path) == before
