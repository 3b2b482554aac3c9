import json
from pathlib import Path
import re

import pytest
import torch

from ndvq import Codec, CodecConfig, NdvqError
from ndvq.modules.conv import reflect_pad
from ndvq.modules.istft import ISTFTDecoder, overlap_add
from ndvq.presets import PRESETS

# Every bandwidth of every preset: (kbps, stages, nominal kbps), from the spec's rule n_q = floor(kbps / per stage).
EXPECTED = {
    "paper-24k": {1.0: 1, 1.5: 2, 3.0: 4, 4.5: 6, 6.0: 8, 9.0: 12, 12.0: 16, 16.0: 21, 24.0: 32},
    "speech-16k-large": {1.0: 2, 1.5: 3, 3.0: 6, 4.5: 9, 6.0: 12, 9.0: 18, 12.0: 24, 16.0: 32, 24.0: 48},
    "speech-16k-small": {1.0: 2, 1.5: 3, 3.0: 6, 6.0: 12, 12.0: 24},
    "speech-16k-small-causal": {1.0: 2, 1.5: 3, 3.0: 6, 6.0: 12, 12.0: 24},
    "speech-16k-small-istft": {1.0: 2, 1.5: 3, 3.0: 6, 6.0: 12, 12.0: 24},
    "tiny": {2.0: 1, 4.0: 2, 8.0: 4},
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_bandwidth_of_every_preset(name: str) -> None:
    codec = Codec.from_preset(name)
    per_stage = 0.75 if name == "paper-24k" else 2.0 if name == "tiny" else 0.5
    assert set(codec.bandwidths) == set(EXPECTED[name])
    wav = 0.1 * torch.randn(1, 1, codec.hop_length * 3 - 5)
    for bandwidth, stages in EXPECTED[name].items():
        assert codec.stages(bandwidth) == stages
        assert codec.bitrate(stages) == pytest.approx(stages * per_stage)
        assert codec.bitrate(stages) <= bandwidth + 1e-9
        if name != "tiny" and bandwidth not in (1.5, max(EXPECTED[name])):
            continue  # running the big models once at both ends is enough
        codes, scale = codec.encode(wav, bandwidth)
        assert codes.shape == (1, stages, 3) and scale.shape == (1, 1, 1)
        assert int(codes.max()) < codec.codebook_size


def test_paper_preset_is_the_paper_model() -> None:
    config = PRESETS["paper-24k"]
    assert (config.sample_rate, config.strides, config.dimension) == (24000, (2, 4, 5, 8), 128)
    assert (config.codebook_size, config.num_codebooks, config.frame_rate) == (1024, 32, 75.0)
    assert not config.causal and config.quantizer == "ndvq" and config.ndvq_loss == "paper"


def test_unknown_bitrate_is_rejected(tiny: Codec) -> None:
    with pytest.raises(NdvqError, match="unsupported bitrate 3 kbps"):
        tiny.stages(3.0)


def test_decode_restores_length_and_scale(tiny: Codec) -> None:
    wav = 0.3 * torch.randn(2, 1, 1000)
    codes, scale = tiny.encode(wav, 8.0)
    assert codes.shape == (2, 4, 16)  # ceil(1000 / 64)
    torch.testing.assert_close(scale[:, 0, 0], wav.pow(2).mean((1, 2)).sqrt() + 1e-8)
    assert tiny.decode(codes, scale).shape == (2, 1, 16 * 64)


def test_forward_trains_and_reconstructs_shape(tiny: Codec) -> None:
    codec = Codec(tiny.config).train()
    out = codec(0.1 * torch.randn(2, 1, 777), n_q=2)
    assert out.wav.shape == (2, 1, 777) and out.codes.shape == (2, 2, 13)
    sum(out.losses.values()).backward()
    assert codec.encoder[0].conv.parametrizations.weight.original1.grad is not None


def test_save_and_load_round_trip(tmp_path, tiny: Codec) -> None:
    codec = Codec(tiny.config).train()
    codec(0.1 * torch.randn(2, 1, 4000), n_q=4)  # k-means initialisation
    codec.save(tmp_path / "model")
    loaded = Codec.load(tmp_path / "model")
    assert loaded.config == codec.config and not loaded.training
    assert all(book.initialised for book in loaded.quantizer.codebooks)
    assert loaded.identity() == codec.identity()
    wav = 0.1 * torch.randn(1, 1, 3000)
    assert torch.equal(loaded.encode(wav, 8.0)[0], codec.eval().encode(wav, 8.0)[0])
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]


def test_preset_weights_are_reproducible() -> None:
    assert Codec.from_preset("tiny").identity() == Codec.from_preset("tiny").identity()


def test_identity_changes_with_weights(tiny: Codec) -> None:
    torch.manual_seed(123)
    other = Codec(tiny.config)
    assert other.identity() != tiny.identity()


def test_identity_follows_weights_changed_in_place() -> None:
    """identity() reuses its last digest; a training step or a load must still change it."""
    codec, reference = Codec.from_preset("tiny"), Codec.from_preset("tiny")
    before = codec.identity()
    with torch.no_grad():
        next(codec.decoder.parameters()).add_(1e-3)  # what an optimiser step does
    changed = codec.identity()
    assert changed != before
    codec.load_state_dict(reference.state_dict())
    assert codec.identity() == before == reference.identity()
    sums = codec.quantizer.codebooks[0].sums
    sums.data = sums.data + 1  # new memory, twice: the second may reuse the block of the tensor hashed last
    sums.data = sums.data + 1
    assert codec.identity() not in (before, changed)


@pytest.mark.parametrize(
    "break_model, message",
    [
        (lambda d: (d / "config.json").write_text("{not json"), "cannot read model config"),
        (lambda d: (d / "config.json").write_text('{"format": "other"}'), "not an ndvq model config"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04pickle"), "damaged or replaced weights"),
        (lambda d: _unchecked(d).joinpath("model.safetensors").write_bytes(b"\x80\x04pickle"), "cannot read weights"),
        (lambda d: (d / "model.safetensors").unlink(), "cannot read weights"),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({"format": "ndvq-model", "version": 1, "config": {"n_filters": 8, **_tiny_rest()}})
            ),
            "weights do not match the config",
        ),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({"format": "ndvq-model", "version": 1, "config": {"colour": "red"}})
            ),
            "unknown config keys",
        ),
    ],
)
def test_invalid_model_directory_is_rejected(tmp_path, tiny: Codec, break_model, message: str) -> None:
    tiny.save(tmp_path)
    break_model(tmp_path)
    with pytest.raises(NdvqError, match=message):
        Codec.load(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strides": [0]}, "strides[0] must be a positive integer"),
        ({"sample_rate": 0}, "sample_rate must be a positive integer"),
        ({"n_filters": -1}, "n_filters must be a positive integer"),
        ({"dimension": 0}, "dimension must be a positive integer"),
        ({"lstm_layers": -1}, "lstm_layers must be a non-negative integer"),
        ({"bandwidths": [0]}, "bandwidths must be positive numbers"),
    ],
)
def test_impossible_config_values_are_refused_naming_the_file(tmp_path, tiny: Codec, change, message: str) -> None:
    tiny.save(tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    document["config"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(NdvqError, match=f"{tmp_path}.*invalid config: {re.escape(message)}"):
        Codec.load(tmp_path)


def test_a_failed_save_leaves_the_model_directory_as_it_was(tmp_path, tiny: Codec, monkeypatch) -> None:
    tiny.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    torch.manual_seed(5)
    other = Codec(tiny.config)
    writes = []

    def write_bytes_then_fail(self: Path, content: bytes) -> int:
        writes.append(self)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        return original(self, content)

    original = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", write_bytes_then_fail)
    with pytest.raises(OSError):
        other.save(tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing replaced, no temporary file
    assert Codec.load(tmp_path).identity() == tiny.identity()


def _unchecked(model: Path) -> Path:
    """The model directory, its config rewritten as format version 1: no checksum of the weights."""
    document = json.loads((model / "config.json").read_text())
    document.pop("weights_sha256")
    (model / "config.json").write_text(json.dumps({**document, "version": 1}))
    return model


def _tiny_rest() -> dict:
    config = PRESETS["tiny"].to_dict()
    config.pop("n_filters")
    return config


def test_unknown_model_source_is_rejected(tmp_path) -> None:
    with pytest.raises(NdvqError, match="not a model directory, shipped model or preset"):
        Codec.load(tmp_path / "missing")


def _causal_tiny() -> Codec:
    torch.manual_seed(1)
    return Codec(CodecConfig(**{**PRESETS["tiny"].to_dict(), "causal": True})).eval()


def test_causal_model_does_not_look_ahead() -> None:
    codec = _causal_tiny()
    wav = 0.1 * torch.randn(1, 1, 64 * 20)
    changed = wav.clone()
    changed[..., 64 * 12 :] += 0.5
    z, z_changed = codec.encoder(wav), codec.encoder(changed)
    torch.testing.assert_close(z[..., :12], z_changed[..., :12], rtol=0, atol=0)
    assert not torch.allclose(z[..., 12:], z_changed[..., 12:])


@pytest.mark.parametrize("chunk_seconds", [0.256, 0.5])
def test_causal_chunked_equals_whole(chunk_seconds: float) -> None:
    codec = _causal_tiny()
    wav = 0.1 * torch.randn(2, 1, 16000 * 3 + 17)
    codes, scale = codec.encode(wav, 8.0, chunk_seconds=None)
    chunked_codes, chunked_scale = codec.encode(wav, 8.0, chunk_seconds=chunk_seconds)
    assert torch.equal(chunked_codes, codes) and torch.equal(chunked_scale, scale)
    whole = codec.decode(codes, scale, chunk_seconds=None)
    chunked = codec.decode(codes, scale, chunk_seconds=chunk_seconds)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_non_causal_chunked_stays_close_to_whole(tiny: Codec) -> None:
    wav = 0.1 * torch.randn(1, 1, 16000 * 4)
    codes, scale = tiny.encode(wav, 8.0, chunk_seconds=None)
    chunked_codes, _ = tiny.encode(wav, 8.0, chunk_seconds=1.0)
    assert chunked_codes.shape == codes.shape
    assert (chunked_codes == codes).float().mean() > 0.95
    whole = tiny.decode(codes, scale, chunk_seconds=None)
    chunked = tiny.decode(codes, scale, chunk_seconds=1.0)
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().max() < 1e-3 * whole.abs().max()


@pytest.mark.parametrize(("left", "right", "length"), [(3, 3, 10), (6, 0, 7), (0, 2, 3), (1, 1, 2)])
def test_reflect_pad_equals_torch_in_values_and_gradients(left: int, right: int, length: int) -> None:
    x = torch.randn(2, 3, length, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, length + left + right, dtype=torch.float64)
    ours = reflect_pad(x, left, right)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    theirs = torch.nn.functional.pad(x, (left, right), mode="reflect")
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    assert torch.equal(ours, theirs)
    assert torch.allclose(grad_ours, grad_theirs)


def test_overlap_add_inverts_windowed_framing() -> None:
    n_fft, hop, count = 64, 16, 20
    wav = torch.randn(2, count * hop, dtype=torch.float64)
    start = (n_fft - hop) // 2
    window = torch.hann_window(n_fft, dtype=torch.float64)
    padded = torch.nn.functional.pad(wav, (start, n_fft))
    frames = padded.unfold(-1, n_fft, hop)[:, :count].transpose(1, 2) * window[:, None]  # frame f: [f hop - start, ...)
    torch.testing.assert_close(overlap_add(frames, window, hop), wav)


@pytest.mark.parametrize("upsample", [1, 2])
def test_istft_decoder_codes_and_trains(upsample: int) -> None:
    torch.manual_seed(0)
    config = {**PRESETS["tiny"].to_dict(), "decoder": "istft", "decoder_upsample": upsample}
    codec = Codec(CodecConfig(**config)).train()
    assert isinstance(codec.decoder, ISTFTDecoder)
    assert codec.decoder.synthesis.hop_length == 64 // upsample  # blocks at 250 Hz times upsample
    out = codec(0.1 * torch.randn(2, 1, 777), n_q=2)
    assert out.wav.shape == (2, 1, 777) and out.codes.shape == (2, 2, 13)
    (out.wav.pow(2).mean() + sum(out.losses.values())).backward()
    assert codec.decoder.head.weight.grad is not None
    assert codec.encoder[0].conv.parametrizations.weight.original1.grad is not None
    codec.eval()
    wav = 0.1 * torch.randn(1, 1, 16000 * 3)
    codes, scale = codec.encode(wav, 8.0, chunk_seconds=None)
    whole = codec.decode(codes, scale, chunk_seconds=None)
    chunked = codec.decode(codes, scale, chunk_seconds=1.0)  # windows with context, as for SEANet
    assert whole.shape == (1, 1, 16000 * 3) and (chunked - whole).abs().max() < 1e-3 * whole.abs().max()


def test_decoder_choice_is_checked_and_keeps_earlier_fingerprints() -> None:
    with pytest.raises(ValueError, match="decoder must be one of"):
        CodecConfig(decoder="vocos")
    with pytest.raises(ValueError, match="istft decoder is non-causal"):
        CodecConfig(decoder="istft", causal=True)
    # The field came after models had shipped: at its default it stays out of the fingerprint.
    assert "decoder" not in CodecConfig().identity_dict()
    assert CodecConfig(decoder="istft").identity_dict()["decoder"] == "istft"
    assert "decoder_upsample" not in CodecConfig(decoder="istft").identity_dict()
    assert CodecConfig(decoder="istft", decoder_upsample=2).identity_dict()["decoder_upsample"] == 2
    with pytest.raises(ValueError, match="decoder_upsample=2 needs decoder istft"):
        CodecConfig(decoder_upsample=2)
    with pytest.raises(ValueError, match="hop \\(320\\) it divides"):
        CodecConfig(sample_rate=16000, decoder="istft", decoder_upsample=3)
    assert "decoder_layers" not in CodecConfig(decoder="istft").identity_dict()
    assert CodecConfig(decoder="istft", decoder_layers=12).identity_dict()["decoder_layers"] == 12
    with pytest.raises(ValueError, match="decoder_layers=12 needs decoder istft"):
        CodecConfig(decoder_layers=12)
    with pytest.raises(ValueError, match="decoder_layers must be a positive integer"):
        CodecConfig(decoder="istft", decoder_layers=0)
