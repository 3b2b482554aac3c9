"""ONNX export: onnxruntime gives the PyTorch codec's codes exactly and its audio within 1e-4."""

import json
from pathlib import Path
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ndvq import Codec, CodecConfig, NdvqError
from ndvq.cli import main
from ndvq.onnx_export import MANIFEST, MIN_FRAMES, OPSET, export_onnx
from ndvq.presets import PRESETS

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ndvq[onnx]')")


def variant(**changes) -> Codec:
    torch.manual_seed(1)
    return Codec(CodecConfig(**{**PRESETS["tiny"].to_dict(), **changes})).eval()


@pytest.fixture(scope="module", params=["tiny", "causal", "rvq", "istft", "istft-up2"])
def exported(request, tmp_path_factory) -> tuple[Codec, Path]:
    codec = {
        "tiny": lambda: Codec.from_preset("tiny"),
        "causal": lambda: variant(causal=True),
        "rvq": lambda: variant(quantizer="rvq"),
        "istft": lambda: variant(decoder="istft"),
        "istft-up2": lambda: variant(decoder="istft", decoder_upsample=2),
    }[request.param]()
    out = tmp_path_factory.mktemp(request.param)
    export_onnx(codec, out)
    return codec, out


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inputs(speech) -> list[torch.Tensor]:
    """The bundled clip [1, 1, T], random audio [3, 1, T] of a length that is not a multiple of the hop, and
    a short one."""
    generator = torch.Generator().manual_seed(2)
    noise = 0.1 * torch.randn(3, 1, 5001, generator=generator)
    return [torch.from_numpy(speech[0])[None], noise, noise[:1, :, : MIN_FRAMES * 64 + 1]]


def test_codes_identical_and_audio_close(exported, speech) -> None:
    codec, out = exported
    manifest = json.loads((out / MANIFEST).read_text())
    decoder = session(out / manifest["decoder"]["file"])
    for entry in manifest["encoders"]:
        encoder = session(out / entry["file"])
        for wav in inputs(speech):
            codes, scale = codec.encode(wav, entry["bandwidth"], chunk_seconds=None)
            audio = (F.pad(wav, (0, -wav.shape[-1] % codec.hop_length)) / scale).numpy()
            (onnx_codes,) = encoder.run(None, {"audio": audio})
            assert onnx_codes.dtype == np.int64 and onnx_codes.shape == (wav.shape[0], entry["n_q"], codes.shape[-1])
            assert np.array_equal(onnx_codes, codes.numpy()), f"{(onnx_codes == codes.numpy()).mean():.6f} equal"
            (decoded,) = decoder.run(None, {"codes": codes.numpy()})
            expected = codec.decode(codes, chunk_seconds=None).numpy()
            assert decoded.shape == expected.shape
            np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-4)


def test_decoder_takes_any_number_of_stages(exported) -> None:
    codec, out = exported
    decoder = session(out / "decoder.onnx")
    codes = torch.randint(codec.codebook_size, (2, codec.num_codebooks, 9))
    for n_q in range(1, codec.num_codebooks + 1):
        (decoded,) = decoder.run(None, {"codes": codes[:, :n_q].numpy()})
        expected = codec.decode(codes[:, :n_q], chunk_seconds=None).numpy()
        np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-4)


def test_graphs_have_plain_convolutions(exported) -> None:
    import onnx

    _, out = exported
    for path in out.glob("*.onnx"):
        kinds = {node.op_type for node in onnx.load(str(path)).graph.node}
        assert "Conv" in kinds and not kinds & {"ReduceL2", "Sqrt"}, kinds  # no weight norm left
        assert "Div" not in kinds or "Erf" in kinds, kinds  # a division only in GELU (x / sqrt 2, istft decoder)


def test_cli_export_onnx(tmp_path, capsys) -> None:
    code = main(["export-onnx", "tiny", str(tmp_path / "out"), "-b", "4", "8"])
    printed = capsys.readouterr().out.split()
    assert code == 0
    names = ["encoder-4kbps.onnx", "encoder-8kbps.onnx", "decoder.onnx", MANIFEST]
    assert printed == [str(tmp_path / "out" / name) for name in names]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["model_id"] == Codec.from_preset("tiny").identity().hex()
    assert (manifest["sample_rate"], manifest["hop_length"], manifest["opset"]) == (16000, 64, OPSET)
    assert manifest["encoders"] == [
        {"file": "encoder-4kbps.onnx", "bandwidth": 4.0, "n_q": 2},
        {"file": "encoder-8kbps.onnx", "bandwidth": 8.0, "n_q": 4},
    ]
    assert manifest["decoder"]["file"] == "decoder.onnx" and manifest["decoder"]["n_q"] == [1, 4]


def test_cli_refuses_an_unsupported_bitrate(tmp_path, capsys) -> None:
    code = main(["export-onnx", "tiny", str(tmp_path / "out"), "-b", "3"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ndvq: error")]
    assert code == 1 and len(errors) == 1 and "unsupported bitrate 3 kbps" in errors[0]
    assert not (tmp_path / "out").exists()


def test_missing_extra_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(NdvqError, match=r"pip install 'ndvq\[onnx\]'"):
        export_onnx(Codec.from_preset("tiny"), tmp_path)
