"""Encoder-side refinement: a latent that decodes closer to the input, the same decoder and bitstream."""

import csv

import numpy as np
import pytest
import soundfile as sf
import torch

import ndvq
from ndvq import Codec, NdvqError, refine
from ndvq.cli import DEFAULT_MODEL, main
from ndvq.eval.metrics import score
from ndvq.refine import VERSION as REFINE_VERSION
from ndvq.refine import RefinementObjective, refine_latent


def test_refinement_lowers_the_objective_and_leaves_the_model_alone(tiny: Codec, speech) -> None:
    wav = torch.from_numpy(speech[0][0])[None, None, :4000]
    weights = {name: tensor.clone() for name, tensor in tiny.state_dict().items()}
    objective = RefinementObjective(tiny.sample_rate)
    latent, scale = tiny.latent(wav)
    target = tiny._pad(wav / scale)

    def synthesise(z: torch.Tensor) -> torch.Tensor:
        quantized = tiny.quantizer.decode(tiny.quantizer.encode(z, 4))
        return tiny.decoder(z + (quantized - z).detach())

    with torch.no_grad():
        before = float(objective(synthesise(latent), target))
        refined = refine_latent(latent, target, synthesise, tiny.sample_rate, steps=20)
        after = float(objective(synthesise(refined), target))
    assert after < before
    assert refined.shape == latent.shape and not refined.requires_grad
    assert all(torch.equal(tensor, weights[name]) for name, tensor in tiny.state_dict().items())
    assert all(parameter.grad is None for parameter in tiny.parameters())


def test_zero_steps_is_the_plain_encoder_and_refined_codes_decode_as_any(tiny: Codec, speech) -> None:
    wav = torch.from_numpy(speech[0][0])[None, None, :8000]
    weights = {name: tensor.clone() for name, tensor in tiny.state_dict().items()}
    plain, scale = tiny.encode(wav, 8.0)
    assert torch.equal(tiny.encode(wav, 8.0, refine_steps=0)[0], plain)
    refined, refined_scale = tiny.encode(wav, 8.0, refine_steps=5)
    assert refined.shape == plain.shape and refined.dtype == plain.dtype and torch.equal(refined_scale, scale)
    assert not torch.equal(refined, plain)  # the steps moved the latent across code boundaries
    assert tiny.decode(refined, scale).shape == tiny.decode(plain, scale).shape
    assert all(torch.equal(tensor, weights[name]) for name, tensor in tiny.state_dict().items())
    assert all(parameter.grad is None for parameter in tiny.parameters())


def test_refinement_runs_in_inference_mode(tiny: Codec, speech) -> None:
    wav = torch.from_numpy(speech[0][0])[None, None, :4000]
    with torch.inference_mode():
        codes, _ = tiny.encode(wav, 8.0, refine_steps=3)
    assert torch.equal(codes, tiny.encode(wav, 8.0, refine_steps=3)[0])


def test_a_very_short_input_is_refined_too(tiny: Codec) -> None:
    wav = torch.randn(1, 1, 100) * 0.1  # under the objective's longest window
    codes, _ = tiny.encode(wav, 2.0, refine_steps=2)
    assert codes.shape == (1, tiny.stages(2.0), -(-100 // tiny.hop_length))


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_bad_step_counts_are_refused(tiny: Codec, steps) -> None:
    with pytest.raises(NdvqError, match="refine steps"):
        tiny.encode(torch.zeros(1, 1, 320), 2.0, refine_steps=steps)


def test_refinement_improves_the_shipped_model_on_speech(speech) -> None:
    """On the bundled clip's first 1.5 s at 6 kbps, through the file format: better by every measure below."""
    codec = Codec.load(DEFAULT_MODEL)
    wav, rate = speech
    values = {}
    for steps in (0, 4, 30):
        data = ndvq.compress(codec, wav, rate, 6.0, refine_steps=steps)
        decoded, _ = ndvq.decompress(data, codec)
        values[steps] = score(wav, decoded, rate, ("pesq_wb", "stoi", "mel_distance"), aligned=True).values
    for steps in (4, 30):  # a few steps already gain (session 32's learning rate)
        assert values[steps]["pesq_wb"] > values[0]["pesq_wb"] + 0.05
        assert values[steps]["mel_distance"] < values[0]["mel_distance"]
        assert values[steps]["stoi"] > values[0]["stoi"] - 0.005


def test_a_step_moves_each_item_by_the_learning_rate_along_its_gradient() -> None:
    """Normalised gradient descent: per item, a step of RMS lr along -gradient, whatever the gradient's size."""
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(3, 8, 5, generator=generator)
    gradient = torch.randn(3, 8, 5, generator=generator) * torch.tensor([1e-6, 1.0, 1e3])[:, None, None]
    gradient[2] = 0.0  # an item with nothing to gain stays where it is
    before = latent.clone()
    refine.descend(latent, gradient, 0.1)
    moved = before - latent
    assert torch.allclose(moved[:2].square().mean(dim=(1, 2)).sqrt(), torch.tensor([0.1, 0.1]))
    for item in range(2):  # along the gradient
        assert torch.allclose(moved[item] / moved[item].norm(), gradient[item] / gradient[item].norm(), atol=1e-6)
    assert torch.equal(latent[2], before[2])


def test_entropy_coded_refinement_decodes_better_for_a_few_more_bits(speech) -> None:
    """Refined codes entropy-code with the model's tables like any: the file decodes, scores higher than the
    unrefined one, and stays well under the bit-packed size."""
    codec = Codec.load(DEFAULT_MODEL)
    wav, rate = speech
    files = {steps: ndvq.compress(codec, wav, rate, 6.0, entropy=True, refine_steps=steps) for steps in (0, 4)}
    pesq = {}
    for steps, data in files.items():
        decoded, _ = ndvq.decompress(data, codec)
        pesq[steps] = score(wav, decoded, rate, ("pesq_wb",), aligned=True).values["pesq_wb"]
    assert pesq[4] > pesq[0] + 0.05
    assert len(files[0]) < len(files[4]) < 0.75 * len(ndvq.compress(codec, wav, rate, 6.0, entropy=False))


def test_files_are_refined_by_default_and_refine_0_is_the_one_pass_encoder(tmp_path, speech) -> None:
    """ndvq.compress and `ndvq compress` refine DEFAULT_STEPS steps unless told; 0 writes Codec.encode's codes."""
    source = tmp_path / "in.wav"
    sf.write(source, speech[0][0, :8000], speech[1], subtype="FLOAT")
    codec, tiny = Codec.from_preset("tiny"), ["--model", "tiny", "-b", "8"]
    wav, rate = speech[0][:, :8000], speech[1]
    default, one_pass = ndvq.compress(codec, wav, rate, 8.0), ndvq.compress(codec, wav, rate, 8.0, refine_steps=0)
    assert refine.DEFAULT_STEPS > 0
    assert default == ndvq.compress(codec, wav, rate, 8.0, refine_steps=refine.DEFAULT_STEPS) != one_pass
    plain, _ = codec.encode(torch.from_numpy(wav)[:, None], 8.0)
    assert np.array_equal(ndvq.bitstream.read(one_pass)[1], plain.numpy())
    assert main(["compress", str(source), str(tmp_path / "default.ndvq"), *tiny]) == 0
    assert main(["compress", str(source), str(tmp_path / "one-pass.ndvq"), *tiny, "--refine", "0"]) == 0
    assert (tmp_path / "default.ndvq").read_bytes() == default
    assert (tmp_path / "one-pass.ndvq").read_bytes() == one_pass
    assert main(["roundtrip", str(source), str(tmp_path / "default.wav"), *tiny]) == 0
    decoded = sf.read(tmp_path / "default.wav", always_2d=True, dtype="float32")[0].T
    assert np.allclose(decoded, ndvq.decompress(default, codec)[0], atol=1e-6)
    assert not np.allclose(decoded, ndvq.decompress(one_pass, codec)[0], atol=1e-6)


def test_the_command_line_refines_and_checks_its_arguments(tmp_path, speech, capsys) -> None:
    source = tmp_path / "in.wav"
    sf.write(source, speech[0][0, :8000], speech[1], subtype="FLOAT")
    codec, tiny = Codec.from_preset("tiny"), ["--model", "tiny", "-b", "8"]
    assert main(["compress", str(source), str(tmp_path / "out.ndvq"), *tiny, "--refine", "5"]) == 0
    refined = ndvq.compress(codec, speech[0][:, :8000], speech[1], 8.0, refine_steps=5)
    one_pass = ndvq.compress(codec, speech[0][:, :8000], speech[1], 8.0, refine_steps=0)
    assert (tmp_path / "out.ndvq").read_bytes() == refined != one_pass
    assert main(["roundtrip", str(source), str(tmp_path / "out.wav"), *tiny, "--refine", "5"]) == 0
    decoded, _ = ndvq.decompress(refined, codec)
    assert np.allclose(sf.read(tmp_path / "out.wav", always_2d=True)[0].T, decoded, atol=1e-6)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(source), str(tmp_path / "bad.ndvq"), *tiny, "--refine", "-1"])
    assert exit_info.value.code != 0
    assert "argument --refine: must be at least 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "bad.ndvq").exists()
    evaluate = ["eval", str(source), "--out", str(tmp_path / "eval"), "--model", "t=tiny", "-b", "8"]
    assert main([*evaluate, "--refine", "x=5"]) != 0
    assert "--refine x=5: no model labelled 'x' (models: t)" in capsys.readouterr().err
    assert main([*evaluate, "--refine", "t=-2"]) != 0
    assert "--refine t=-2: STEPS must be at least 0, got -2" in capsys.readouterr().err
    assert main([*evaluate, "--model", "r=tiny", "--refine", "r=5", "--metrics", "mel_distance"]) == 0
    rows = {row["codec"]: row for row in csv.DictReader(open(tmp_path / "eval" / "per_utterance.csv"))}
    assert rows["r"]["system"] == rows["t"]["system"] + f"-refine5v{REFINE_VERSION}"
    assert float(rows["r"]["mel_distance"]) != float(rows["t"]["mel_distance"])
