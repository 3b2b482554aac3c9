"""Hostile files, signals and weights: nothing crashes, nothing is left behind, nothing is trusted blindly."""

from collections.abc import Callable
import dataclasses
import importlib
import json
import os
from pathlib import Path
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

from ndvq import Codec, NdvqError, bitstream, compress, decompress
from ndvq.cli import main
from ndvq.entropy import EntropyModel, index_groups

compress_module = importlib.import_module("ndvq.compress")  # `ndvq.compress` is also the function

# The header's fields after magic, version and model id: (offset, struct format), as bitstream.py documents.
FIELDS = {
    "model_sample_rate": (13, "<I"),
    "hop_length": (17, "<H"),
    "bits": (19, "<B"),
    "stages": (20, "<B"),
    "bandwidth": (21, "<f"),
    "sample_rate": (25, "<I"),
    "channels": (29, "<B"),
    "length": (30, "<Q"),
    "frames": (38, "<I"),
}
HOSTILE_INTS = (0, 1, 2, 3, 7, 255, 256, 1000, 16000, 65535, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1)
HOSTILE_FLOATS = (0.0, -0.0, -1.0, 1e-45, 1e-8, 0.5, 2.0, 8.0, 1e38, float("inf"), float("-inf"), float("nan"))


def with_crc(data: bytes) -> bytes:
    """`data` with its last 4 bytes replaced by the CRC-32 of the rest, as an honest writer would."""
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def forge(data: bytes, **fields: float) -> bytes:
    """A file whose header fields are set to `fields` and whose checksum is valid."""
    forged = bytearray(data)
    for name, value in fields.items():
        offset, fmt = FIELDS[name]
        fits = fmt == "<f" or 0 <= value < 1 << 8 * struct.calcsize(fmt)
        struct.pack_into(fmt, forged, offset, value if fits else int(value) % (1 << 8 * struct.calcsize(fmt)))
    return with_crc(bytes(forged))


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def coded(tiny: Codec) -> bytes:
    """100 ms of noise at 16 kHz, 4 stages."""
    wav = 0.1 * np.random.default_rng(3).standard_normal((1, 1600)).astype(np.float32)
    return compress(tiny, wav, 16000, 8.0)


# --- forged headers: a valid checksum over impossible fields ------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"sample_rate": 0}, "impossible .ndvq header (audio sample rate 0 Hz, not between 1000 and 768000)"),
        ({"length": 2**40}, "25 frames for 1099511627776 samples at 16000 Hz (expected 17179869184 to 17179869185)"),
        ({"hop_length": 0}, "impossible .ndvq header (hop length 0)"),
        ({"length": 160}, "25 frames for 160 samples at 16000 Hz (expected 3 to 3)"),
        ({"sample_rate": 8000}, "25 frames for 1600 samples at 8000 Hz (expected 50 to 51)"),
        ({"model_sample_rate": 999}, "model sample rate 999 Hz, not between 1000 and 768000"),
        ({"bandwidth": float("nan")}, "bandwidth nan kbps"),
        ({"bandwidth": 2.0}, "4 stages at 2 kbps (the rule gives 1)"),
        ({"stages": 2, "frames": 50}, "2 stages at 8 kbps (the rule gives 4)"),  # the same payload size
        ({"frames": 0}, "inconsistent .ndvq file (150 bytes, its header says 50)"),
        ({"channels": 0}, "inconsistent .ndvq file (150 bytes, its header says 46)"),
        ({"bits": 16}, "inconsistent .ndvq file (150 bytes, its header says 250)"),
    ],
)
def test_forged_header_is_refused_by_decompress_and_info(tmp_path, capsys, coded: bytes, fields, message) -> None:
    path = tmp_path / "forged.ndvq"
    path.write_bytes(forge(coded, **fields))
    for argv in (["decompress", path, tmp_path / "out.wav", "--model", "tiny"], ["info", path]):
        assert main([*map(str, argv)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"ndvq: error: {path}: ") and message in err[-1], err
        assert len([line for line in err if line.startswith("ndvq: error")]) == 1
    assert listing(tmp_path) == ["forged.ndvq"]


@pytest.mark.parametrize("scale", [float("nan"), 0.0, -1.0, float("inf"), 1e31])
def test_impossible_scales_are_refused(coded: bytes, scale: float) -> None:
    data = with_crc(coded[:42] + struct.pack("<f", scale) + coded[46:])
    with pytest.raises(NdvqError, match=r"x.ndvq: impossible .ndvq header \(scales .*, not each above 0 and at most"):
        bitstream.read(data, "x.ndvq")


def test_header_that_contradicts_its_model_is_refused(tiny: Codec, coded: bytes) -> None:
    header, codes = bitstream.read(coded)
    # A file that is self-consistent but claims 1024 codes (10 bits): the model has 256.
    lying = dataclasses.replace(header, bits=10, bandwidth=header.bandwidth * 10 / 8)
    with pytest.raises(NdvqError, match="impossible .ndvq header for its model .* 10 bits"):
        decompress(bitstream.write(lying, codes), tiny)


def test_set_padding_bits_are_refused() -> None:
    header = bitstream.Header(bytes(8), 16000, 64, 10, 1, 2.5, 16000, 1, 64 * 3, 3, (0.5,))
    data = bitstream.write(header, np.array([[[1, 2, 3]]]))  # 30 bits: 2 padding bits in the last byte
    assert bitstream.read(data)[0] == header
    with pytest.raises(NdvqError, match="bits set after the last code"):
        bitstream.read(with_crc(data[:-5] + bytes([data[-5] | 0x80]) + data[-4:]))


def test_too_short_and_out_of_range_audio_is_refused_when_encoding(tiny: Codec) -> None:
    with pytest.raises(NdvqError, match="too short"):
        compress(tiny, np.full((1, 2), 0.1, np.float32), 96000, 2.0)
    with pytest.raises(NdvqError, match="sample rate 800 Hz, not between 1000 and 768000"):
        compress(tiny, np.full((1, 800), 0.1, np.float32), 800, 2.0)
    with pytest.raises(NdvqError, match=r"too loud \(RMS 1e\+31, at most 1e\+30\)"):
        compress(tiny, np.full((1, 800), 1e31, np.float32), 16000, 2.0)


# --- the fuzz test: every mutated file is decoded correctly or refused with NdvqError --------------------


def _bases(tiny: Codec) -> list[bytes]:
    """Bit-packed files (format version 1) and entropy-coded ones (version 2; tiny has entropy tables)."""
    rng = np.random.default_rng(0)
    mono, stereo = (0.1 * rng.standard_normal((c, n)).astype(np.float32) for c, n in ((1, 300), (2, 900)))
    ten_bits = bitstream.Header(tiny.identity(), 16000, 64, 10, 3, 7.5, 22050, 3, 441, 5, (0.1, 0.2, 0.3))
    return [
        compress(tiny, mono, 16000, 8.0, entropy=False),
        compress(tiny, stereo, 44100, 2.0, entropy=False),
        bitstream.write(ten_bits, rng.integers(0, 1024, (3, 3, 5))),
        compress(tiny, mono, 16000, 8.0, entropy=True),
        compress(tiny, stereo, 44100, 2.0, entropy=True),
    ]


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random mutation of a header field, a scale, some bits, a range of bytes or the length."""
    data = bytearray(data)
    kind = rng.integers(6)
    if kind == 0:  # a field set to a hostile value, or nudged
        offset, fmt = list(FIELDS.values())[rng.integers(len(FIELDS))]
        (value,) = struct.unpack_from(fmt, data, offset)
        if fmt == "<f":
            value = HOSTILE_FLOATS[rng.integers(len(HOSTILE_FLOATS))] if rng.random() < 0.7 else value * 2
        else:
            candidates = (*HOSTILE_INTS, value - 1, value + 1, value * 2, value // 2)
            value = int(candidates[rng.integers(len(candidates))]) % (1 << 8 * struct.calcsize(fmt))
        struct.pack_into(fmt, data, offset, value)
    elif kind == 1:  # a scale
        offset = 42 + 4 * rng.integers(max(1, min(data[29], (len(data) - 46) // 4)))
        struct.pack_into("<f", data, min(offset, len(data) - 8), HOSTILE_FLOATS[rng.integers(len(HOSTILE_FLOATS))])
    elif kind == 2:  # bits flipped anywhere
        for position in rng.integers(len(data) * 8, size=rng.integers(1, 9)):
            data[position // 8] ^= 1 << position % 8
    elif kind == 3:  # random bytes over a range
        start = rng.integers(len(data))
        stop = min(len(data), start + rng.integers(1, 9))
        data[start:stop] = rng.integers(256, size=stop - start, dtype=np.uint8).tobytes()
    elif kind == 4:  # cut or extended
        data = data[: rng.integers(len(data))] if rng.random() < 0.5 else data + bytes(rng.integers(1, 9))
    else:  # the codes only: a valid file again once the checksum is recomputed
        start = 46 + 4 * (data[29] - 1) + rng.integers(max(1, len(data) - 50 - 4 * (data[29] - 1)))
        data[min(start, len(data) - 5)] = rng.integers(256)
    return bytes(data)


def test_fuzz_every_mutation_is_decoded_correctly_or_refused(monkeypatch) -> None:
    """20,000 seeded mutations of five files (two entropy-coded), half with the checksum recomputed. An
    accepted bit-packed file must be exactly what `write` makes of the header and codes read from it; every
    accepted file must decode to audio of the shape and rate its header gives; nothing else than NdvqError
    may be raised, and the memory numpy allocates (where a header's length of 2**40 asked for 4 TiB, or a
    tiny entropy-coded payload claimed millions of codes) stays under a megabyte."""
    tiny = Codec.from_preset("tiny")
    codes = [np.random.default_rng(i).integers(0, 256, (1, 4, 50)) for i in range(3)]
    tiny.set_entropy(EntropyModel.fit(codes, index_groups(tiny.num_codebooks, tiny.codebook_size)))
    identities = {flag: tiny.identity(flag) for flag in (False, True)}
    monkeypatch.setattr(tiny, "identity", lambda entropy=False: identities[entropy])  # hash the weights once
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny decodes gain nothing from threads
    rng = np.random.default_rng(20240)
    bases = _bases(tiny)
    outcomes = {"refused": 0, "accepted": 0, "decoded": 0, "entropy-coded": 0}
    decoded_headers: set[bitstream.Header] = set()
    tracemalloc.start()
    try:
        for case in range(20_000):
            data = _mutate(bases[case % len(bases)], rng)
            if len(data) >= 4 and rng.random() < 0.5:
                data = with_crc(data)
            try:
                header, codes = bitstream.read(data, "fuzz.ndvq", tiny.entropy)
            except NdvqError as error:
                assert str(error).startswith("fuzz.ndvq: ")
                outcomes["refused"] += 1
                continue
            outcomes["accepted"] += 1
            assert codes.shape == (header.channels, header.stages, header.frames)
            assert codes.min() >= 0 and codes.max() < 1 << header.bits
            if header.entropy_coded:  # a range coder's words are not canonical: other words, same codes
                outcomes["entropy-coded"] += 1
                assert bitstream.read(bitstream.write(header, codes, tiny.entropy), "", tiny.entropy)[1].tolist() == (
                    codes.tolist()
                )
            else:
                assert bitstream.write(header, codes) == data
            if header in decoded_headers and len(decoded_headers) >= 300:
                continue  # codes alone differ: a few hundred such decodes say all there is to say
            decoded_headers.add(header)
            try:
                wav, rate = decompress(data, tiny, "fuzz.ndvq")
            except NdvqError as error:
                assert str(error).startswith("fuzz.ndvq: ")
                continue
            outcomes["decoded"] += 1
            assert wav.shape == (header.channels, header.length) and rate == header.sample_rate
            assert wav.dtype == np.float32 and np.isfinite(wav).all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)
    assert peak < 1 << 20, peak
    assert outcomes["refused"] > 10_000 and outcomes["decoded"] >= 300 and outcomes["entropy-coded"] > 100, outcomes


# --- signals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_decode_leaves_nothing_behind(tmp_path, tiny: Codec, signum: int) -> None:
    length = 16000 * 3600  # an hour of codes (450 kB), decoded in tens of seconds: long enough to be stopped
    header = bitstream.Header(tiny.identity(), 16000, 64, 8, 1, 2.0, 16000, 1, length, length // 64, (0.1,))
    codes = np.random.default_rng(0).integers(0, 256, (1, 1, length // 64))
    (tmp_path / "long.ndvq").write_bytes(bitstream.write(header, codes))
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "ndvq", "decompress", tmp_path / "long.ndvq", out / "long.wav", "--model", "tiny"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "NDVQ_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 100_000 for p in out.glob(".long.*.tmp.wav")):  # decoding, mid-write
            assert process.poll() is None and time.monotonic() < deadline, "the decode ended before the signal"
            time.sleep(0.05)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == f"ndvq: stopped by {signal.Signals(signum).name}" and "Traceback" not in err
    assert listing(out) == []


# --- weights ----------------------------------------------------------------------------------------------


def _saved(tmp_path: Path, tiny: Codec) -> Path:
    tiny.save(tmp_path / "model")
    return tmp_path / "model"


def test_flipped_weights_are_refused_naming_the_file(tmp_path, capsys, tiny: Codec) -> None:
    model = _saved(tmp_path, tiny)
    weights = bytearray((model / "model.safetensors").read_bytes())
    middle = len(weights) // 2
    weights[middle : middle + 4096] = bytes(b ^ 0xFF for b in weights[middle : middle + 4096])
    (model / "model.safetensors").write_bytes(weights)
    with pytest.raises(NdvqError, match=f"^{model / 'model.safetensors'}: damaged or replaced weights"):
        Codec.load(model)
    (tmp_path / "a.wav").write_bytes(b"")
    assert main(["compress", str(tmp_path / "a.wav"), str(tmp_path / "a.ndvq"), "--model", str(model)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"ndvq: error: {model / 'model.safetensors'}: damaged or replaced weights "
        "(their SHA-256 is not the one in config.json)"
    )


def _rewrite_config(model: Path, change: Callable[[dict], None]) -> None:
    document = json.loads((model / "config.json").read_text())
    change(document)
    (model / "config.json").write_text(json.dumps(document))


def test_model_format_1_without_a_checksum_still_loads(tmp_path, tiny: Codec, caplog) -> None:
    model = _saved(tmp_path, tiny)
    _rewrite_config(model, lambda d: (d.update(version=1), d.pop("weights_sha256")))
    assert Codec.load(model).identity() == tiny.identity()
    assert "no checksum to verify (format version 1)" in caplog.text


@pytest.mark.parametrize("value", [None, "", "00" * 32 + "00", 42, "XY" * 32])
def test_missing_or_malformed_checksum_is_refused(tmp_path, tiny: Codec, value) -> None:
    model = _saved(tmp_path, tiny)
    _rewrite_config(model, lambda d: d.pop("weights_sha256") if value is None else d.update(weights_sha256=value))
    with pytest.raises(NdvqError, match=f"^{model / 'config.json'}: no valid weights_sha256"):
        Codec.load(model)


def test_weights_of_another_dtype_are_refused(tmp_path, tiny: Codec) -> None:
    halved = Codec(tiny.config).eval()
    halved.load_state_dict(tiny.state_dict())
    halved.decoder.half()
    model = _saved(tmp_path, halved)
    with pytest.raises(NdvqError, match="weights do not match the config"):
        Codec.load(model)


# --- output files -----------------------------------------------------------------------------------------


@pytest.fixture
def clip(tmp_path, speech) -> Path:
    wav, rate = speech
    sf.write(tmp_path / "clip.wav", wav[:, :4000].T, rate)
    return tmp_path / "clip.wav"


def test_outputs_get_the_mode_of_the_umask(tmp_path, clip) -> None:
    previous = os.umask(0o022)
    try:
        assert main(["compress", str(clip), str(tmp_path / "a.ndvq"), "--model", "tiny", "-b", "2"]) == 0
        assert main(["decompress", str(tmp_path / "a.ndvq"), str(tmp_path / "a.wav"), "--model", "tiny"]) == 0
        os.umask(0o027)
        assert main(["roundtrip", str(clip), str(tmp_path / "b.flac"), "--model", "tiny", "-b", "2"]) == 0
    finally:
        os.umask(previous)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("a.ndvq", "a.wav", "b.flac")}
    assert modes == {"a.ndvq": 0o644, "a.wav": 0o644, "b.flac": 0o640}


@pytest.mark.parametrize("command", ["compress", "decompress", "roundtrip"])
def test_output_that_is_a_directory_is_refused_before_encoding(tmp_path, capsys, clip, monkeypatch, command) -> None:
    source, options = clip, ["--model", "tiny", "-b", "2"]
    if command == "decompress":
        source, options = tmp_path / "clip.ndvq", ["--model", "tiny"]
        assert main(["compress", str(clip), str(source), *options, "-b", "2"]) == 0
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(compress_module, "_encode", lambda *args: pytest.fail("encoded"))
    monkeypatch.setattr(compress_module, "_decoded", lambda *args: pytest.fail("decoded"))
    before = listing(tmp_path)
    assert main([command, str(source), str(tmp_path / "taken"), *options]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"ndvq: error: {tmp_path / 'taken'}: is a directory (give an output file name)")
    assert listing(tmp_path) == before


def test_write_errors_name_the_output_not_the_temporary_file(tmp_path, capsys, clip, monkeypatch) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / "file" / "o.ndvq"
    assert main(["compress", str(clip), str(target), "--model", "tiny", "-b", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"ndvq: error: {target}: cannot create its folder (File exists: {tmp_path / 'file'})")

    def refuse(source, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(os, "replace", refuse)  # as a read-only folder, or a full disk, would
    for command, name in (("compress", "o.ndvq"), ("roundtrip", "o.wav")):
        assert main([command, str(clip), str(tmp_path / name), "--model", "tiny", "-b", "2"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"ndvq: error: {tmp_path / name}: cannot write (Permission denied)") and ".tmp" not in err
    assert listing(tmp_path) == ["clip.wav", "file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_names_the_output(tmp_path, capsys, clip) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    target = tmp_path / "ro" / "o.ndvq"
    assert main(["compress", str(clip), str(target), "--model", "tiny", "-b", "2"]) == 1
    assert capsys.readouterr().err.strip().endswith(f"ndvq: error: {target}: cannot write (Permission denied)")
