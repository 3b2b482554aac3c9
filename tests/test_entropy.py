"""Entropy-coded bitstreams: integer tables, bit-exact round trips, tables tied to their model."""

import copy
import json
from pathlib import Path
import pickle
import tempfile

import numpy as np
import pytest
import safetensors.torch
import soundfile as sf
import torch

from ndvq import Codec, NdvqError, bitstream, compress, decompress
from ndvq.cli import main
from ndvq.entropy import GROUPS, MIN_OTHERS, TOTAL, EntropyModel, frequencies, index_groups
from ndvq.entropy_fit import fit_entropy


def structured(rng: np.random.Generator, shape: tuple[int, int, int], size: int) -> np.ndarray:
    """Codes [C, n_q, frames] with the dependencies the model uses: stage 1 a slow random walk over the
    codes, each later stage near a fixed offset of the stage before (index groups see both)."""
    channels, n_q, frames = shape
    codes = np.empty(shape, np.int64)
    codes[:, 0] = np.cumsum(rng.integers(-8, 9, (channels, frames)), axis=1) % size
    for s in range(1, n_q):
        codes[:, s] = (codes[:, s - 1] + 97 * s + rng.integers(-16, 17, (channels, frames))) % size
    return codes


@pytest.fixture(scope="module")
def fitted() -> Codec:
    """tiny with tables fitted on its own one-pass codes of speech-like noise (as ndvq fit-entropy fits them)."""
    codec = Codec.from_preset("tiny")
    rng = np.random.default_rng(0)
    codes = [
        bitstream.read(
            compress(codec, 0.1 * rng.standard_normal((1, 8000)).astype(np.float32), 16000, 8.0, refine_steps=0)
        )[1]
    ]
    codec.set_entropy(EntropyModel.fit(codes, index_groups(codec.num_codebooks, codec.codebook_size)))
    return codec


def test_tables_are_integers_summing_to_the_total() -> None:
    table = frequencies(np.array([[0.0, 0.0, 5.0, 1e9], [1.0, 1.0, 1.0, 1.0]]))
    assert table.dtype == np.int32 and (table >= 1).all() and (table.sum(axis=1) == TOTAL).all()
    assert table.max() <= TOTAL - MIN_OTHERS  # no code is nearly free: bounds the codes a payload can hold
    tables, groups = frequencies(np.ones((2, GROUPS + 1, 8))), index_groups(2, 8)
    with pytest.raises(ValueError, match="int32"):
        EntropyModel(tables.astype(np.float64), groups)
    with pytest.raises(ValueError, match="sum to"):
        EntropyModel(tables + 1, groups)
    with pytest.raises(ValueError, match="groups must lie"):
        EntropyModel(tables, groups + GROUPS)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 2), (2, 12, 500), (3, 24, 37)])
def test_round_trip_is_bit_exact_and_pays_on_structured_codes(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    tables = EntropyModel.fit([structured(rng, (1, 24, 4000), 1024)], index_groups(24, 1024))
    codes = structured(np.random.default_rng(sum(shape) + 1), shape, 1024)
    payload = tables.encode(codes)
    assert np.array_equal(tables.decode(payload, *shape), codes)
    if codes.size > 1000:
        assert len(payload) * 8 < 0.9 * codes.size * 10  # fewer bits than 10 per code
        assert abs(len(payload) * 8 - tables.bits(codes).sum()) < 0.01 * len(payload) * 8 + 64


def test_stages_the_tables_cannot_predict_cost_no_more_than_bit_packing() -> None:
    """Stage 1 structured, stages 2-3 uniform noise: fitted contexts would overfit the noise and cost more
    than 10 bits per code on new codes; the held-out choice falls back to plain 10 bits for those stages."""
    rng = np.random.default_rng(3)

    def codes(frames: int) -> np.ndarray:
        out = rng.integers(0, 1024, (1, 3, frames))
        out[:, 0] = structured(rng, (1, 1, frames), 1024)[:, 0]
        return out

    tables = EntropyModel.fit([codes(3000) for _ in range(4)], index_groups(3, 1024))
    bits = tables.bits(fresh := codes(5000)) / fresh.shape[2]
    assert bits[0] < 8.0 and np.allclose(bits[1:], 10.0)
    assert np.array_equal(tables.decode(tables.encode(fresh), 1, 3, 5000), fresh)


def test_uniform_random_codes_round_trip(fitted: Codec) -> None:
    codes = np.random.default_rng(5).integers(0, 256, (2, 4, 300))
    payload = fitted.entropy.encode(codes)
    assert np.array_equal(fitted.entropy.decode(payload, 2, 4, 300), codes)
    # A model that has coded (and cached its coder's models) still copies and pickles, and codes the same.
    copied = pickle.loads(pickle.dumps(copy.deepcopy(fitted.entropy)))
    assert copied.encode(codes) == payload


def test_the_default_coding_is_never_larger_than_bit_packing(fitted: Codec, speech, monkeypatch) -> None:
    """By default the codes are entropy-coded, unless bit-packing them takes fewer bytes (as with many steps
    of refinement); asked for, entropy coding is kept whatever its size."""
    wav, rate = speech
    default = compress(fitted, wav, rate, 8.0)
    assert default == compress(fitted, wav, rate, 8.0, entropy=True) and default[4] == 2
    codes = bitstream.read(default, entropy=fitted.entropy)[1]
    encode = EntropyModel.encode
    monkeypatch.setattr(EntropyModel, "encode", lambda self, c: encode(self, c) + bytes(10_000))  # expensive
    packed, asked = compress(fitted, wav, rate, 8.0), compress(fitted, wav, rate, 8.0, entropy=True)
    assert packed[4] == 1 and len(packed) < len(asked) and asked[4] == 2
    header, packed_codes = bitstream.read(packed)
    assert np.array_equal(packed_codes, codes) and header.model_id == fitted.identity()
    assert np.array_equal(decompress(packed, fitted)[0], decompress(default, fitted)[0])


@pytest.mark.parametrize("bandwidth", [2.0, 4.0, 8.0])
def test_entropy_coded_file_decodes_to_the_same_audio(fitted: Codec, speech, bandwidth: float) -> None:
    wav, rate = speech
    plain, coded = (compress(fitted, wav, rate, bandwidth, entropy=flag) for flag in (False, True))
    assert plain[4] == 1 and coded[4] == 2  # format versions
    assert np.array_equal(bitstream.read(plain)[1], bitstream.read(coded, entropy=fitted.entropy)[1])
    assert np.array_equal(decompress(plain, fitted)[0], decompress(coded, fitted)[0])


@pytest.fixture(scope="module")
def rate_fitted(speech) -> Codec:
    """tiny, its codebooks initialised on the bundled clip's latents, with tables fitted for rate-aware
    assignment at weight 30 on a second of it."""
    wav, rate = speech
    codec = Codec.from_preset("tiny")
    whole, _ = sf.read(Path(__file__).parent.parent / "examples" / "speech_en_16k.flac", dtype="float32")
    with torch.no_grad():
        codec.quantizer.initialise(codec.latent(torch.from_numpy(whole)[None, None])[0])
    with tempfile.TemporaryDirectory() as folder:
        for i in range(2):
            sf.write(Path(folder) / f"{i}.wav", wav[:, i * 8000 : (i + 1) * 8000].T, rate)
        tables, files, _ = fit_entropy(codec, folder, rate_weight=30.0)
    assert files == 2 and tables.rate_weight == 30.0
    codec.set_entropy(tables)
    return codec


def test_rate_aware_assignment_trades_bits_for_fidelity(rate_fitted: Codec, speech) -> None:
    """The higher the weight, the fewer the bits the tables give the codes; weight 0 is plain assignment; the
    file decodes like any other (the decoder does not change)."""
    wav, rate = speech
    codec, entropy = rate_fitted, rate_fitted.entropy
    plain = bitstream.read(compress(codec, wav, rate, 8.0, entropy=False, refine_steps=0))[1]  # one pass throughout
    bits = []
    for weight in (0.0, 3.0, 10.0, 300.0):
        data = compress(codec, wav, rate, 8.0, entropy=True, rate_weight=weight, refine_steps=0)
        codes = bitstream.read(data, entropy=entropy)[1]
        if weight == 0:
            assert np.array_equal(codes, plain)
        bits.append(entropy.bits(codes).sum())
        expected = codec.decode(torch.from_numpy(codes), torch.tensor(bitstream.read(data, entropy=entropy)[0].scales))
        decoded = decompress(data, codec)[0]
        assert np.allclose(decoded, expected[0].numpy()[:, : wav.shape[1]], atol=1e-4)
    assert bits[0] > bits[1] > bits[2] > bits[3]
    # --entropy without a weight uses the tables' own (30) from 12 stages up, in proportion below: tiny codes
    # 8 kbps in 4 stages, so its default file is the weight-10 one.
    assert codec.stages(8.0) == 4 and entropy.rate_weight_at(4) == 10.0 and entropy.rate_weight_at(24) == 30.0
    assert compress(codec, wav, rate, 8.0, entropy=True) == compress(
        codec, wav, rate, 8.0, entropy=True, rate_weight=10.0
    )
    with pytest.raises(NdvqError, match="needs the model's entropy tables"):
        compress(Codec.from_preset("tiny"), wav, rate, 8.0, rate_weight=10.0)


def test_rate_weight_is_saved_with_the_tables(tmp_path: Path, rate_fitted: Codec) -> None:
    rate_fitted.save(tmp_path / "model")
    assert Codec.load(tmp_path / "model").entropy.rate_weight == 30.0
    config = tmp_path / "model" / "config.json"
    document = json.loads(config.read_text())
    document["entropy_rate_weight"] = "30"
    config.write_text(json.dumps(document))
    with pytest.raises(NdvqError, match="entropy_rate_weight must be a finite number"):
        Codec.load(tmp_path / "model")
    document["entropy_rate_weight"] = 10**400  # JSON allows it; float() would overflow
    config.write_text(json.dumps(document))
    with pytest.raises(NdvqError, match="entropy_rate_weight must be a finite number"):
        Codec.load(tmp_path / "model")
    document["entropy_rate_weight"] = -1.0
    config.write_text(json.dumps(document))
    with pytest.raises(NdvqError, match="not valid entropy tables"):
        Codec.load(tmp_path / "model")


def test_tables_belong_to_their_model(fitted: Codec, speech) -> None:
    wav, rate = speech
    coded, plain = compress(fitted, wav, rate, 8.0, entropy=True), compress(fitted, wav, rate, 8.0, entropy=False)
    other = Codec.from_preset("tiny")  # the same weights, other tables
    codes = np.random.default_rng(9).integers(0, 256, (1, 4, 100))
    other.set_entropy(EntropyModel.fit([codes], index_groups(other.num_codebooks, other.codebook_size)))
    with pytest.raises(NdvqError, match="made by another model"):
        decompress(coded, other)
    with pytest.raises(NdvqError, match="entropy-coded, and this model has no entropy tables"):
        decompress(coded, Codec.from_preset("tiny"))
    # Plain (version 1) files do not depend on the tables: fitting them leaves those files valid.
    assert np.array_equal(decompress(plain, other)[0], decompress(plain, Codec.from_preset("tiny"))[0])


def test_tables_are_saved_checked_and_integer_on_disk(tmp_path: Path, fitted: Codec) -> None:
    fitted.save(tmp_path / "model")
    loaded = Codec.load(tmp_path / "model")
    assert loaded.identity(True) == fitted.identity(True) and loaded.identity() == fitted.identity()
    stored = safetensors.torch.load_file(tmp_path / "model" / "entropy.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.int32}
    # A float table slipped in (with a matching checksum) is refused.
    floats = {name: t.to(torch.float32) for name, t in stored.items()}
    safetensors.torch.save_file(floats, tmp_path / "model" / "entropy.safetensors")
    config = tmp_path / "model" / "config.json"
    import hashlib

    document = json.loads(config.read_text())
    document["entropy_sha256"] = hashlib.sha256((tmp_path / "model" / "entropy.safetensors").read_bytes()).hexdigest()
    config.write_text(json.dumps(document))
    with pytest.raises(NdvqError, match="not valid entropy tables"):
        Codec.load(tmp_path / "model")


def test_cli_fit_compress_info_decompress(tmp_path: Path, capsys, speech, rate_fitted: Codec) -> None:
    wav, rate = speech
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        sf.write(corpus / f"{i}.wav", wav[:, i * 6000 : (i + 1) * 6000].T, rate)
    (corpus / "broken.wav").write_bytes(b"RIFF")
    assert main(["fit-entropy", "tiny", str(corpus)]) == 1
    assert "not a model directory; give --out" in capsys.readouterr().err
    assert main(["fit-entropy", "tiny", str(corpus), "--out", str(tmp_path / "model")]) == 0
    out, err = capsys.readouterr()
    assert "fitted on 3 files" in out and "skipped broken.wav" in err
    clip = corpus / "0.wav"
    model = str(tmp_path / "model")
    assert main(["compress", str(clip), str(tmp_path / "a.ndvq"), "-b", "8", "--model", model, "--entropy"]) == 0
    assert main(["compress", str(clip), str(tmp_path / "b.ndvq"), "-b", "8", "--model", model, "--no-entropy"]) == 0
    assert main(["compress", str(clip), str(tmp_path / "default.ndvq"), "-b", "8", "--model", model]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.ndvq")]) == 0
    assert ".ndvq version 2 (entropy-coded codes)" in capsys.readouterr().out
    # A model with tables entropy-codes by default; --no-entropy bit-packs (version 1).
    assert (tmp_path / "default.ndvq").read_bytes() == (tmp_path / "a.ndvq").read_bytes()
    assert (tmp_path / "b.ndvq").read_bytes()[4] == 1
    for name in ("a", "b"):
        assert (
            main(["decompress", str(tmp_path / f"{name}.ndvq"), str(tmp_path / f"{name}.wav"), "--model", model]) == 0
        )
    assert np.array_equal(sf.read(tmp_path / "a.wav")[0], sf.read(tmp_path / "b.wav")[0])
    assert main(["compress", str(clip), str(tmp_path / "c.ndvq"), "--model", "tiny", "-b", "8", "--entropy"]) == 1
    assert "has no entropy tables" in capsys.readouterr().err and not (tmp_path / "c.ndvq").exists()
    compress_args = ["compress", str(clip), str(tmp_path / "d.ndvq"), "-b", "8", "--model", model]
    assert main([*compress_args, "--no-entropy", "--rate-weight", "30"]) == 1
    assert "--rate-weight: only when entropy-coding" in capsys.readouterr().err
    assert main([*compress_args[:-1], "tiny", "--rate-weight", "30"]) == 1  # no tables
    assert "--rate-weight: only when entropy-coding" in capsys.readouterr().err
    assert main([*compress_args, "--entropy", "--rate-weight", "-1"]) == 1
    assert "must be finite and at least 0" in capsys.readouterr().err and not (tmp_path / "d.ndvq").exists()
    # Fitted for a weight: compress --entropy uses it, and writes fewer bytes than the most likely codes.
    rate_fitted.save(tmp_path / "rated")  # codebooks initialised on speech: its codes vary
    model = str(tmp_path / "rated")
    compress_args[-1] = model
    assert main(["fit-entropy", model, str(corpus), "--rate-weight", "100"]) == 0
    assert json.loads((tmp_path / "rated" / "config.json").read_text())["entropy_rate_weight"] == 100.0
    assert main([*compress_args, "--entropy"]) == 0
    assert (
        main([*compress_args[:2], str(tmp_path / "e.ndvq"), *compress_args[3:], "--entropy", "--rate-weight", "0"]) == 0
    )
    assert (tmp_path / "d.ndvq").stat().st_size < (tmp_path / "e.ndvq").stat().st_size


def test_version_1_bytes_are_unchanged() -> None:
    """A bit-packed file as format version 1 has always written it: the same bytes, read the same."""
    golden = bytes.fromhex(
        "4e445651010001020304050607803e00004000080200008040803e000001c000000000000000030000000000803e00"
        "010203040549ab39d5"
    )
    header = bitstream.Header(bytes(range(8)), 16000, 64, 8, 2, 4.0, 16000, 1, 64 * 3, 3, (0.25,))
    assert bitstream.write(header, np.arange(6).reshape(1, 2, 3)) == golden
    read, codes = bitstream.read(golden)
    assert read == header and not read.entropy_coded and codes.tolist() == [[[0, 1, 2], [3, 4, 5]]]
