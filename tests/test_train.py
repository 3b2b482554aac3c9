"""Training: learning, distributed consistency, exact resume, failure handling, export."""

import json
import math
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ndvq import Codec, NdvqError
from ndvq.cli import main
from ndvq.train.config import load_config
from ndvq.train.trainer import Trainer, export, learning_rate

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture
def corpus(tmp_path, speech) -> Path:
    """A training folder: two short real speech clips."""
    wav, rate = speech
    folder = tmp_path / "corpus"
    folder.mkdir()
    sf.write(folder / "a.wav", wav[0, :12000], rate)
    sf.write(folder / "b.flac", wav[0, 12000:24000], rate)
    return folder


def tiny_config(corpus: Path, *overrides: str):
    return load_config(CONFIGS / "tiny.yaml", [f"data.train={corpus}", f"data.valid={corpus}", *overrides])


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"g.{k}": v for k, v in trainer.codec.state_dict().items()}
    state.update({f"d.{k}": v for k, v in trainer.discriminator.state_dict().items()})
    return state


@pytest.mark.parametrize("quantizer", ["ndvq", "rvq"])
def test_tiny_model_overfits_one_clip(tmp_path, speech, quantizer: str) -> None:
    wav, rate = speech
    (tmp_path / "one").mkdir()
    sf.write(tmp_path / "one" / "clip.wav", wav[0, 4000:8000], rate)
    config = tiny_config(
        tmp_path / "one",
        f"quantizer={quantizer}",
        "steps=40",
        "data.segment_seconds=0.25",
        "data.min_seconds=0.1",
        "discriminator.start_step=1000",
        "optim.lr=3e-3",
        "valid_every=1000",
        "checkpoint_every=1000",
    )
    trainer = Trainer(config, tmp_path / "run")
    clip = torch.from_numpy(wav[:, 4000:8000])[None]

    def distance() -> float:
        trainer.codec.eval()
        with torch.no_grad():
            value = trainer.mel_loss.distance(trainer.codec(clip, 4).wav, clip)
        trainer.codec.train()
        return value

    before = distance()
    trainer.fit()
    after = distance()
    assert after < 0.6 * before, (before, after)


def test_run_writes_checkpoints_metrics_and_exports(tmp_path, corpus, capsys, caplog) -> None:
    with caplog.at_level("INFO", logger="ndvq"):
        Trainer(tiny_config(corpus), tmp_path / "run").fit()
    # Not on a terminal: no progress bar, a line per log period and per validation instead.
    assert "\r" not in capsys.readouterr().err
    messages = "\n".join(caplog.messages)
    assert re.search(r"^step 6/8: mel [\d.]+, total [\d.]+, [\d.]+ steps/s, [\d.]+ CPU hours$", messages, re.MULTILINE)
    assert re.search(r"^step 8: validation at 4 kbps: mel_distance [\d.]+, pesq_wb [\d.]+", messages, re.MULTILINE)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["latest", "step-00000004", "step-00000008"]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    for key in ("mel", "adversarial", "discriminator", "usage/entropy_bits_stage1", "valid/mel_distance_8kbps"):
        assert f'"{key}"' in metrics
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "model")]) == 0
    model = Codec.load(tmp_path / "model")
    assert model.config.quantizer == "ndvq"
    source = corpus / "a.wav"
    assert (
        main(["roundtrip", str(source), str(tmp_path / "out.wav"), "--model", str(tmp_path / "model"), "-b", "8"]) == 0
    )
    assert "untrained" not in capsys.readouterr().err
    # A fresh run warm-starts from the export: same weights at step 0, codebooks not re-initialised.
    warm = Trainer(tiny_config(corpus, f"init_from={tmp_path / 'model'}"), tmp_path / "warm")
    assert warm.step == 0 and all(
        torch.equal(a, b) for a, b in zip(weights_of(warm.codec), weights_of(model), strict=True)
    )
    assert warm.codec.quantizer.initialised
    with pytest.raises(NdvqError, match="architecture differs"):
        Trainer(tiny_config(corpus, f"init_from={tmp_path / 'model'}", "codec={n_filters: 8}"), tmp_path / "other")
    # An earlier kept checkpoint exports by its step; a step not kept is refused, naming the kept ones.
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "model-4"), "--step", "4"]) == 0
    earlier = Codec.load(tmp_path / "model-4")
    assert not all(torch.equal(a, b) for a, b in zip(weights_of(earlier), weights_of(model), strict=True))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "model-5"), "--step", "5"]) != 0
    assert "no checkpoint of step 5 (kept: 4, 8)" in capsys.readouterr().err
    assert not (tmp_path / "model-5").exists()


def test_warm_start_deepens_an_istft_decoder_as_the_same_function(tmp_path, corpus) -> None:
    istft = "codec={decoder: istft, decoder_layers: 2}"
    source = Trainer(tiny_config(corpus, istft), tmp_path / "source").codec.eval()
    for block in source.decoder.blocks:  # non-zero layer scales: a real function to preserve
        torch.nn.init.normal_(block.gamma, std=0.5)
    source.save(tmp_path / "model")
    deeper = Trainer(
        tiny_config(corpus, f"init_from={tmp_path / 'model'}", "codec={decoder: istft, decoder_layers: 4}"),
        tmp_path / "deeper",
    ).codec.eval()
    assert len(deeper.decoder.blocks) == 4
    latent = torch.randn(1, source.config.dimension, 20)
    with torch.no_grad():
        torch.testing.assert_close(deeper.decoder(latent), source.decoder(latent))
    assert all(torch.count_nonzero(block.project.weight) == 0 for block in deeper.decoder.blocks[2:])
    deeper.decoder(latent).square().mean().backward()  # and the new blocks learn from the first step
    assert all(torch.count_nonzero(block.project.weight.grad) > 0 for block in deeper.decoder.blocks[2:])
    # Shallower, or deeper and otherwise different, is another architecture.
    for overrides in (
        "codec={decoder: istft, decoder_layers: 1}",
        "codec={decoder: istft, decoder_layers: 4, n_filters: 8}",
    ):
        with pytest.raises(NdvqError, match="architecture differs"):
            Trainer(tiny_config(corpus, f"init_from={tmp_path / 'model'}", overrides), tmp_path / "other")


def test_on_a_terminal_log_lines_print_above_the_progress_bar(tmp_path, corpus, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    arguments = [f"data.train={corpus}", f"data.valid={corpus}", "steps=4"]
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--run-dir", str(tmp_path / "run"), *arguments]) == 0
    err = capsys.readouterr().err
    assert "4/4" in err and "step/s" in err  # the bar
    assert "ndvq: initialising 4 codebooks" in err and "ndvq: step 4: validation at 4 kbps" in err
    assert not re.search(r"[^\r\n]ndvq: ", err)  # each log line starts a line, never glued to the bar
    assert "step 2/4: mel" not in err  # no per-period lines beside the bar


def weights_of(codec: Codec) -> list[torch.Tensor]:
    return [t for _, t in sorted(codec.state_dict().items())]


def test_resume_continues_exactly(tmp_path, corpus) -> None:
    overrides = ("steps=8", "checkpoint_every=4", "data.num_workers=1", "discriminator.start_step=2")
    straight = Trainer(tiny_config(corpus, *overrides), tmp_path / "straight")
    straight.fit()
    Trainer(tiny_config(corpus, *overrides[1:], "steps=4"), tmp_path / "stopped").fit()
    resumed = Trainer(tiny_config(corpus, *overrides), tmp_path / "stopped", resume=True)
    assert resumed.step == 4
    resumed.fit()
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_balanced_sampling_draws_folders_alike_and_resumes_exactly(tmp_path, speech) -> None:
    wav, rate = speech
    for name, count in (("many", 6), ("few", 1)):
        (tmp_path / "corpus" / name).mkdir(parents=True)
        for i in range(count):
            sf.write(tmp_path / "corpus" / name / f"{i}.wav", wav[0, 2000 * i : 2000 * i + 10000], rate)
    corpus = tmp_path / "corpus"
    overrides = ("data.balance=1", "steps=6", "checkpoint_every=3", "data.num_workers=1", "data.batch_size=2")
    trainer = Trainer(tiny_config(corpus, *overrides), tmp_path / "straight")
    few = [i for i, (path, _) in enumerate(trainer.dataset.files) if "few" in path]
    draws = [item for epoch in range(200) for item in trainer._epoch_indices(epoch)]
    assert all(isinstance(item, tuple) for item in draws) and len(draws) == 200 * 7
    assert 0.45 < sum(item[0] in few for item in draws) / len(draws) < 0.55  # 1 file of 7, drawn half the time
    assert trainer._epoch_indices(3) == trainer._epoch_indices(3)
    trainer.fit()
    Trainer(tiny_config(corpus, *overrides[:-2], "steps=3", *overrides[-2:]), tmp_path / "cut").fit()
    resumed = Trainer(tiny_config(corpus, *overrides), tmp_path / "cut", resume=True)
    resumed.fit()
    a, b = weights(trainer), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_finetune_trains_one_part_against_the_fixed_rest_quantizing_as_at_inference(tmp_path, corpus, part) -> None:
    Trainer(tiny_config(corpus, "steps=4"), tmp_path / "base").fit()
    export(tmp_path / "base", tmp_path / "model")
    base = Codec.load(tmp_path / "model")
    overrides = (f"init_from={tmp_path / 'model'}", f"finetune=[{part}]", "steps=4", "checkpoint_every=2")
    tuned = Trainer(tiny_config(corpus, *overrides, "discriminator.start_step=2"), tmp_path / "tuned")
    assert not tuned.codec.quantizer.training
    # In inference mode the quantizer outputs means: a training step decodes as the exported model does.
    wav = tuned.valid_batch
    bandwidth = tuned.codec.bandwidths[0]
    with torch.no_grad():
        expected = base.eval()(wav, base.stages(bandwidth)).wav
        torch.testing.assert_close(tuned.codec(wav, tuned.codec.stages(bandwidth)).wav, expected)
    tuned.fit()
    assert not tuned.codec.quantizer.training and tuned.codec.encoder.training  # validation kept the modes
    for name, module in (("encoder", "encoder"), ("quantizer", "quantizer"), ("decoder", "decoder")):
        before, after = getattr(base, module).state_dict(), getattr(tuned.codec, module).state_dict()
        unchanged = all(torch.equal(before[k], after[k]) for k in before)
        assert unchanged == (name != part), name  # codebooks and their EMA statistics included
    # Resume continues exactly.
    Trainer(tiny_config(corpus, *overrides[:-1], "steps=2", "discriminator.start_step=2"), tmp_path / "cut").fit()
    resumed = Trainer(tiny_config(corpus, *overrides, "discriminator.start_step=2"), tmp_path / "cut", resume=True)
    resumed.fit()
    a, b = weights(tuned), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_dir_and_resume_are_checked(tmp_path, corpus) -> None:
    (tmp_path / "afile").write_text("notes")
    with pytest.raises(NdvqError, match="afile: is a file, not a run directory"):
        Trainer(tiny_config(corpus), tmp_path / "afile")
    with pytest.raises(NdvqError, match="no checkpoint to resume from"):
        Trainer(tiny_config(corpus), tmp_path / "run", resume=True)
    Trainer(tiny_config(corpus, "steps=4"), tmp_path / "run").fit()
    with pytest.raises(NdvqError, match="already holds a run"):
        Trainer(tiny_config(corpus), tmp_path / "run")
    with pytest.raises(NdvqError, match="config differs from the run's in quantizer"):
        Trainer(tiny_config(corpus, "quantizer=rvq"), tmp_path / "run", resume=True)


def test_cpu_budget_stops_with_a_checkpoint_and_resumes_with_a_larger_one(tmp_path, corpus) -> None:
    trainer = Trainer(tiny_config(corpus, "cpu_hours=1e-9", "log_every=2", "steps=8"), tmp_path / "run")
    trainer.fit()
    assert trainer.step == 2
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    resumed = Trainer(tiny_config(corpus, "cpu_hours=0", "log_every=2", "steps=8"), tmp_path / "run", resume=True)
    resumed.fit()
    assert resumed.step == 8


def test_a_run_validates_at_its_last_step(tmp_path, corpus) -> None:
    """The last step is validated even off the `valid_every` grid, so every run's log ends on its final quality."""
    Trainer(tiny_config(corpus, "steps=6", "valid_every=4", "checkpoint_every=4"), tmp_path / "run").fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "valid/mel_distance_8kbps" in line] == [4, 6]


def test_learning_rate_warms_up_holds_and_cools_down_to_zero(corpus) -> None:
    config = tiny_config(corpus, "optim.lr=1.0", "optim.warmup_steps=4", "steps=20", "cooldown_steps=10")
    rates = [learning_rate(config, step) for step in range(20)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0] and rates[4:11] == [1.0] * 7
    assert rates[11:] == pytest.approx([0.9 - 0.1 * i for i in range(9)])  # the last step trains at 1/10
    assert learning_rate(tiny_config(corpus, "optim.lr=1.0", "steps=20"), 19) == 1.0  # no cool-down


def test_a_run_cools_down_from_a_checkpoint(tmp_path, corpus) -> None:
    """Resuming with new `steps` and `cooldown_steps` branches a cool-down off a constant-rate run."""
    Trainer(tiny_config(corpus, "steps=4", "optim.warmup_steps=1"), tmp_path / "run").fit()
    cooled = Trainer(
        tiny_config(corpus, "steps=8", "cooldown_steps=4", "optim.warmup_steps=1"), tmp_path / "run", resume=True
    )
    cooled.fit()
    assert cooled.step == 8 and cooled.optimizer.param_groups[0]["lr"] == pytest.approx(cooled.config.optim.lr / 4)


def test_resume_of_a_checkpoint_older_than_a_config_field(tmp_path, corpus) -> None:
    """A checkpoint written before a field (or a field of a section) existed resumes when it keeps its default."""
    Trainer(tiny_config(corpus, "steps=4"), tmp_path / "run").fit()
    state = tmp_path / "run" / "checkpoints" / "step-00000004" / "state.json"
    skeleton = json.loads(state.read_text())
    config = dict(skeleton["__dict__"])["config"]
    config["__dict__"] = [item for item in config["__dict__"] if item[0] != "init_from"]
    loss = dict(config["__dict__"])["loss"]  # and one inside a section
    loss["__dict__"] = [item for item in loss["__dict__"] if item[0] != "mel_bins"]
    state.write_text(json.dumps(skeleton))
    assert Trainer(tiny_config(corpus, "steps=4"), tmp_path / "run", resume=True).step == 4
    with pytest.raises(NdvqError, match="config differs from the run's in init_from"):
        Trainer(tiny_config(corpus, "steps=4", f"init_from={corpus}"), tmp_path / "run", resume=True)
    # A checkpoint whose two files disagree is refused with its path, not a KeyError.
    state.write_text(state.read_text().replace('"state.generator.', '"state.missing.', 1))
    with pytest.raises(NdvqError, match="step-00000004: state.json and state.safetensors do not match"):
        Trainer(tiny_config(corpus, "steps=4"), tmp_path / "run", resume=True)


def test_resume_compares_the_codec_as_built(tmp_path, corpus) -> None:
    """A change of the codec, through its overrides or its preset, is refused with the override that undoes
    it; writing the same codec another way resumes."""
    Trainer(tiny_config(corpus, "steps=4"), tmp_path / "run").fit()
    with pytest.raises(NdvqError, match=r'codec differs in ndvq_residual .*codec=\{ndvq_residual: "sample"\}'):
        Trainer(tiny_config(corpus, "steps=4", "codec={ndvq_residual: mean}"), tmp_path / "run", resume=True)
    same = Trainer(tiny_config(corpus, "steps=4", "codec={ndvq_residual: sample}"), tmp_path / "run", resume=True)
    assert same.step == 4
    # An RVQ run does not depend on NDVQ's fields: a preset change of those alone resumes.
    Trainer(tiny_config(corpus, "steps=4", "quantizer=rvq"), tmp_path / "rvq").fit()
    moved = tiny_config(corpus, "steps=4", "quantizer=rvq", "codec={ndvq_residual: mean}")
    rvq = Trainer(moved, tmp_path / "rvq", resume=True)
    assert rvq.step == 4


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, corpus, monkeypatch) -> None:
    trainer = Trainer(tiny_config(corpus, "checkpoint_every=2"), tmp_path / "run")
    mel = trainer.mel_loss.forward

    def poisoned(estimate, target):
        value = mel(estimate, target)
        return value * float("nan") if trainer.step == 3 else value

    monkeypatch.setattr(trainer.mel_loss, "forward", poisoned)
    with pytest.raises(NdvqError, match=r"non-finite loss \(mel\) at step 3; stopped, the last good checkpoint is"):
        trainer.fit()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    model = export(tmp_path / "run", tmp_path / "model")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


def test_mel_bins_set_the_training_loss_not_the_validation_metric(tmp_path, corpus) -> None:
    trainer = Trainer(tiny_config(corpus, "loss.mel_bins=[5, 10, 20, 40, 80, 160, 320]"), tmp_path / "run")
    assert trainer.mel_loss.mels[-1].filters.shape[0] == 320
    assert trainer.mel_metric.mels[-1].filters.shape[0] == 64


def test_balancer_option_trains(tmp_path, corpus) -> None:
    trainer = Trainer(tiny_config(corpus, "loss.balancer=true", "steps=6"), tmp_path / "run")
    trainer.fit()
    assert set(trainer.balancer.averages) == {"waveform", "mel", "adversarial", "feature"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["colour=red"], "unknown config key colour"),
        (["data.batch=3"], "unknown config key data.batch"),
        (["steps=many"], "steps: expected int"),
        (["quantizer=pq"], "quantizer: must be one of ndvq, rvq"),
        (["bandwidths=[3.0]"], r"bandwidths: \[3.0\] are not bitrates"),
        (["nokey"], "expected key=value"),
        (["steps=4", "cooldown_steps=5"], "cooldown_steps: must be between 0 and steps"),
        (["loss.mel_bins=[64, 64]"], r"loss.mel_bins: expected 7 positive bin counts"),
        (["loss.phase=1", "loss.balancer=true"], "loss.phase: not combined with loss.balancer"),
        (["loss.stoi=1", "loss.balancer=true"], "loss.stoi: not combined with loss.balancer"),
        (["loss.convergence=1", "loss.balancer=true"], "loss.convergence: not combined with loss.balancer"),
        (["loss.pesq=1", "loss.balancer=true"], "loss.pesq: not combined with loss.balancer"),
        (["data.speed=0.5"], r"data.speed \(speed perturbation\): must be in \[0, 0.5\), got 0.5"),
        (["data.equaliser=41"], r"data.equaliser \(random EQ, dB\): must be in \[0, 40\], got 41"),
        (["data.dc_offset=-0.1"], r"data.dc_offset \(a constant, times the crop's RMS\): must be in \[0, 1\]"),
        (["data.balance=2"], r"data.balance \(sampling by folder\): must be in \[0, 1\], got 2"),
        (["optim.betas=[0.9]"], "optim.betas: expected a list of 2 values, got 1"),
        (["loss.balancer_weights=[1.0]"], "loss.balancer_weights: expected a list of 4 values, got 1"),
        (["optim.lr=-1"], "optim.lr: must be positive, got -1.0"),
        (["optim.betas=[0.9, 1.0]"], r"optim.betas: must be in \[0, 1\), got \[0.9, 1.0\]"),
        (["data.batch_size=0"], "data.batch_size: must be at least 1, got 0"),
        (["data.num_workers=-1"], "data.num_workers: must be at least 0, got -1"),
        (["discriminator.filters=0"], "discriminator.filters: must be at least 1, got 0"),
        (["finetune=[quantizer]", "init_from=x"], r"finetune: expected distinct parts among encoder, decoder"),
        (["finetune=[encoder, encoder]", "init_from=x"], r"finetune: expected distinct parts"),
        (["finetune=[encoder]"], r"finetune: needs a trained model to start from \(init_from\)"),
    ],
)
def test_config_errors(tmp_path, corpus, overrides: list[str], message: str) -> None:
    with pytest.raises(NdvqError, match=message):
        tiny_config(corpus, *overrides).validate()


def test_train_command_reports_config_errors(tmp_path, capsys) -> None:
    code = main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--run-dir", str(tmp_path / "r"), "steps=x"])
    assert code == 1 and capsys.readouterr().err.strip() == "ndvq: error: steps: expected int, got 'x'"


@pytest.mark.parametrize(
    "text, message",
    [("colour: red\n", "unknown config key colour"), ("optim:\n  lr: fast\n", "optim.lr: expected float")],
)
def test_config_file_errors_name_the_file(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(NdvqError, match=f"^{path}: {message}"):
        load_config(path, ["steps=3"])


def _two_rank_worker(rank: int, init_file: str, corpus: str, run_dir: str, result: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    trainer = Trainer(tiny_config(Path(corpus), "steps=4", "discriminator.start_step=1"), run_dir)
    trainer.fit()
    gathered = [None, None]
    dist.all_gather_object(gathered, weights(trainer))
    if rank == 0:
        a, b = gathered
        Path(result).write_text("same" if all(torch.equal(a[k], b[k]) for k in a) else "different")
    dist.destroy_process_group()


def test_two_gloo_ranks_keep_identical_weights(tmp_path, corpus) -> None:
    result = tmp_path / "result"
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(corpus), str(tmp_path / "run"), str(result)), nprocs=2)
    assert result.read_text() == "same"
    assert (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir()


def test_mel_filterbank_and_losses() -> None:
    from ndvq.modules.distances import MultiScaleMelLoss
    from ndvq.modules.spectral import mel_filterbank
    from ndvq.train.discriminator import MultiScaleSTFTDiscriminator
    from ndvq.train.losses import feature_matching_loss

    bank = mel_filterbank(16000, 1024, 64)
    assert bank.shape == (64, 513) and (bank >= 0).all() and (bank.max(1).values > 0.5).all()
    x = 0.1 * torch.randn(2, 1, 4000)
    loss = MultiScaleMelLoss(16000)
    assert loss(x, x).item() == 0.0 and loss(x, 0.5 * x).item() > 0.0
    fine = MultiScaleMelLoss(16000, (5, 10, 20, 40, 80, 160, 320))
    assert [mel.filters.shape[0] for mel in fine.mels] == [5, 10, 20, 40, 80, 160, 320]
    assert fine(x, 0.5 * x).item() != loss(x, 0.5 * x).item()
    long_windows = MultiScaleMelLoss(16000, scales=(128, 256, 512, 1024, 2048))  # the refinement's
    assert [mel.window.shape[0] for mel in long_windows.mels] == [128, 256, 512, 1024, 2048]
    y = 0.5 * x
    per_scale = [torch.nn.functional.l1_loss(m(y), m(x)) + torch.nn.functional.mse_loss(m(y), m(x)) for m in loss.mels]
    torch.testing.assert_close(long_windows(y, x), sum(per_scale[2:]) / 5)
    discriminator = MultiScaleSTFTDiscriminator((256, 128), filters=8)
    logits, features = discriminator(x)
    assert len(logits) == 2 and len(features[0]) == 5
    assert feature_matching_loss(features, features).item() == 0.0
    assert feature_matching_loss(features, discriminator(x + 0.1 * torch.randn_like(x))[1]).item() > 0.0


VOICED_SAMPLES = 8000  # 0.5 s at 16 kHz


def voiced(phases: torch.Tensor) -> torch.Tensor:
    """0.5 s of a voice at 150 Hz and its harmonics 2 to 29 (amplitude 1 / k) at 16 kHz, harmonic k at phase
    phases[k - 1] (phases [29, VOICED_SAMPLES], or [29, 1] for constant phases): [1, 1, VOICED_SAMPLES]."""
    t = torch.arange(VOICED_SAMPLES) / 16000
    harmonics = [torch.sin(2 * math.pi * 150 * k * t + phases[k - 1]) / k for k in range(1, 30)]
    return 0.05 * sum(harmonics).reshape(1, 1, -1)


def test_phase_loss_grows_with_phase_jitter() -> None:
    from ndvq.modules.distances import PhaseDerivativeLoss

    torch.manual_seed(0)

    def jittered(size: float) -> torch.Tensor:  # each harmonic's phase a random walk: a rough, hoarse voice
        return voiced(torch.cumsum(size * torch.randn(29, VOICED_SAMPLES), dim=-1))

    x, phase = voiced(torch.zeros(29, VOICED_SAMPLES)), PhaseDerivativeLoss()
    losses = [phase(estimate, x).item() for estimate in (x, jittered(0.01), jittered(0.03), 0.05 * torch.randn_like(x))]
    assert losses[0] < 1e-4 < losses[1] < losses[2] < losses[3] <= 2
    silent = torch.zeros_like(x, requires_grad=True)  # unit phasors stay smooth at zero magnitude
    phase(silent, x).backward()
    assert torch.isfinite(silent.grad).all()


def test_low_phase_loss_sees_the_phase_under_its_cutoff_only() -> None:
    from ndvq.modules.distances import LowPhaseLoss

    torch.manual_seed(0)

    def shifted(low: float = 0.0, high: float = 0.0) -> torch.Tensor:  # harmonics 1 to 6 by low, 7 up by high (rad)
        return voiced(torch.tensor([low] * 6 + [high] * 23)[:, None])

    x, loss = shifted(), LowPhaseLoss(16000)  # cutoff 1 kHz: harmonics 1 (150 Hz) to 6 (900 Hz)
    assert loss(x, x).item() < 1e-6
    assert loss(0.3 * x, x).item() < 1e-6  # the phase, not the level
    assert loss(shifted(high=2.0), x).item() < 0.05  # harmonics 7 and up shifted: hardly seen
    assert loss(shifted(low=2.0), x).item() == pytest.approx(1 - math.cos(2.0), abs=0.1)  # harmonics 1 to 6
    assert 0.8 < loss(0.05 * torch.randn_like(x), x).item() < 1.2  # unrelated phases
    silent = torch.zeros_like(x, requires_grad=True)  # no phase at all: as unrelated, not free
    value = loss(silent, x)
    assert value.item() == pytest.approx(1.0, abs=0.01)
    value.backward()
    assert torch.isfinite(silent.grad).all()


def pulsing_voice(seconds: float) -> torch.Tensor:
    """A voice at 150 Hz (28 harmonics) at 16 kHz, its loudness rising and falling 4 times a second: [1, 1, T]."""
    t = torch.arange(round(seconds * 16000)) / 16000
    voice = sum(torch.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 30)) * torch.sin(2 * math.pi * 4 * t) ** 2
    return (0.05 * voice).reshape(1, 1, -1)


def test_spectral_convergence_counts_the_loud_bins() -> None:
    from ndvq.modules.distances import MultiScaleMelLoss, SpectralConvergenceLoss

    torch.manual_seed(0)
    x, convergence = pulsing_voice(0.5), SpectralConvergenceLoss()
    assert convergence(x, x).item() < 1e-6
    # a decode 3 dB quieter misses 1 - 10 ** (-3 / 20) of every magnitude
    assert convergence(10 ** (-3 / 20) * x, x).item() == pytest.approx(1 - 10 ** (-3 / 20), rel=1e-4)
    # noise 40 dB under the voice: the log-mel loss counts it in every quiet bin, this loss hardly at all
    noisy = x + 0.01 * x.pow(2).mean().sqrt() * torch.randn_like(x)
    mel = MultiScaleMelLoss(16000)
    assert convergence(noisy, x).item() < 0.1 * convergence(0.7 * x, x).item()
    assert mel(noisy, x).item() > mel(0.7 * x, x).item()


def test_intelligibility_loss_follows_pystoi() -> None:
    from pystoi import stoi

    from ndvq.modules.distances import IntelligibilityLoss, third_octave_bands

    torch.manual_seed(0)
    x = pulsing_voice(1.5)
    loss = IntelligibilityLoss(16000)
    assert loss(x, x).item() < 1e-4
    scores = []
    for snr_db in (20, 5, -5):
        noise = torch.randn_like(x)
        y = x + noise * x.norm() / noise.norm() * 10 ** (-snr_db / 20)
        scores.append((1 - loss(y, x).item(), stoi(x.flatten().numpy(), y.flatten().numpy(), 16000)))
    assert scores[0][0] > scores[1][0] > scores[2][0]
    assert all(abs(ours - reference) < 0.05 for ours, reference in scores), scores
    # the band matrix is STOI's: 15 one-third octaves from 150 Hz, bins 141 Hz .. 4.27 kHz
    bands = third_octave_bands(16000, 1024)
    assert bands.shape == (15, 513) and bands[0].nonzero().min() == 9 and bands[-1].nonzero().max() == 273
    silent = torch.zeros_like(x, requires_grad=True)
    loss(silent, x).backward()
    assert torch.isfinite(silent.grad).all()
    assert loss(x, torch.zeros_like(x)).item() == 0.0  # a silent target is skipped, not scored 0
    # a pause at -100 dBFS is skipped too: it adds nothing to a batch's loss and gets no gradient
    dither, estimate = 1e-5 * torch.randn_like(x), torch.randn_like(x).requires_grad_(True)
    noisy = x + 0.1 * torch.randn_like(x)
    assert loss(torch.cat([noisy, estimate]), torch.cat([x, dither])).item() == pytest.approx(loss(noisy, x).item())
    loss(estimate, dither).backward()
    assert estimate.grad.abs().max() == 0


def test_disturbance_loss_ranks_noise_as_pesq_and_ignores_level() -> None:
    from pesq import pesq

    from ndvq.modules.distances import DisturbanceLoss

    torch.manual_seed(0)
    x = pulsing_voice(2.0)
    loss = DisturbanceLoss(16000)
    assert loss(x, x).item() < 1e-4
    assert loss(0.5 * x, x).item() < 1e-4  # levels are aligned, as PESQ does
    losses, scores = [], []
    for snr_db in (30, 15, 0):
        noise = torch.randn_like(x)
        y = x + noise * x.norm() / noise.norm() * 10 ** (-snr_db / 20)
        losses.append(loss(y, x).item())
        scores.append(pesq(16000, x.flatten().numpy(), y.flatten().numpy(), "wb"))
    assert losses[0] < losses[1] < losses[2] and scores[0] > scores[1] > scores[2], (losses, scores)
    # nor does its gradient push a decode's level (which would make a decoder trained on it quieter and quieter)
    gain = torch.ones((), requires_grad=True)
    loss(gain * y, x).backward()
    assert abs(gain.grad.item()) < 1e-3 * losses[2]
    # a crop of silence stays silence (the level floor): faint noise in it costs little, and gradients stay finite
    quiet = 1e-6 * torch.randn_like(x)
    assert loss(quiet + 1e-5 * torch.randn_like(x), quiet).item() < losses[0]
    silent = torch.zeros_like(x, requires_grad=True)
    loss(silent, x).backward()
    assert torch.isfinite(silent.grad).all()
    assert loss(torch.zeros_like(x), torch.zeros_like(x)).item() < 1e-4


@pytest.mark.parametrize(
    "name, weight, largest",
    [("pesq", 1, math.inf), ("convergence", 1, math.inf), ("stoi", 0.01, 2), ("phase", 0.5, 2), ("low_phase", 1, 2)],
)
def test_optional_loss_weight_adds_its_loss_to_training(tmp_path, corpus, name, weight, largest) -> None:
    trainer = Trainer(tiny_config(corpus, f"loss.{name}={weight}"), tmp_path / "run")
    metrics, _ = trainer.train_step(next(trainer._batches()))
    assert 0 < metrics[name] <= largest
    plain = Trainer(tiny_config(corpus), tmp_path / "plain")
    assert name not in plain.train_step(next(plain._batches()))[0]


SCRIPTS = Path(__file__).parent.parent / "scripts"
RECIPE_ENVIRONMENT = {**os.environ, "NDVQ": str(Path(sys.executable).parent / "ndvq"), "NDVQ_THREADS": "1"}


def recipe_overrides(corpus: Path) -> list[str]:
    """The recipe scripts' keys for seconds-long stages: the tiny preset on the two-clip corpus."""
    return [
        "model=tiny",
        f"data.train={corpus}",
        f"data.valid={corpus}",
        "data.segment_seconds=0.25",
        "data.batch_size=2",
        "optim.warmup_steps=1",
    ]


def test_timed_recipe_runs_its_nine_stages_in_its_budget(tmp_path, corpus) -> None:
    """scripts/timed_recipe.sh on the tiny preset: stage A stops at its time, B to I take the recipe's keys and
    step counts from A's speed, and each stage exports a model."""
    root = tmp_path / "recipe"
    overrides = [*recipe_overrides(corpus), "checkpoint_every=2"]
    budget = 80  # seconds: stage A has 20%, start-up included, enough for a checkpoint on a loaded machine
    script = SCRIPTS / "timed_recipe.sh"
    result = subprocess.run(
        ["bash", str(script), str(root), str(budget), *overrides],
        env=RECIPE_ENVIRONMENT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(
        r"stage a: (\d+) steps in (\d+) s; stages b to i: (\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+) steps",
        result.stdout,
    )
    steps_a, elapsed, *later_steps = map(int, found.groups())
    assert elapsed >= budget * 20 // 100
    shares = (18, 5, 12, 9, 7, 7, 7, 6)
    assert later_steps == [max(steps_a * budget * share // 100 // elapsed, 1) for share in shares]
    b, c, d, e, f, g, h, i = (load_config(root / stage / "config.yaml") for stage in "bcdefghi")
    stages = (b, c, d, e, f, g, h, i)
    assert [stage.init_from for stage in stages] == [str(root / f"export-{stage}") for stage in "abcdefgh"]
    assert [stage.steps for stage in stages] == later_steps
    assert (b.cooldown_steps, b.optim.lr, b.loss.waveform, b.loss.stoi) == (later_steps[0] * 7 // 17, 3e-4, 0, 0)
    assert (c.cooldown_steps, c.loss.stoi, c.data.speed, c.data.batch_size, c.loss.pesq) == (
        later_steps[1] // 2,
        0.05,
        0.1,
        2,
        0,
    )
    assert (e.cooldown_steps, e.loss.stoi, e.data.speed, e.loss.pesq) == (later_steps[3] // 2, 0.05, 0.1, 1)
    assert (h.cooldown_steps, h.loss.pesq, h.finetune) == (later_steps[6] // 2, 1, ("encoder", "decoder"))
    assert (i.cooldown_steps, i.finetune, h.data.equaliser, i.data.equaliser) == (
        later_steps[7] // 2,
        ("encoder", "decoder"),
        0,
        10,
    )
    assert Codec.load(root / "export-i").config == Codec.load(root / "export-a").config
    # A budget that is not a whole number of seconds is refused before anything runs.
    refused = subprocess.run(["bash", str(script), str(tmp_path / "other"), "1.5"], capture_output=True, text=True)
    assert refused.returncode == 2 and "SECONDS: a whole number" in refused.stderr
    assert not (tmp_path / "other").exists()


def test_recipe_runs_its_stages_and_resumes_after_a_crash(tmp_path, corpus) -> None:
    """scripts/recipe.sh on the tiny preset: nine stages with the recipe's keys, each from the last one's export;
    run again after a crash in an export, it resumes the stage from its checkpoint and goes on."""
    root = tmp_path / "recipe"
    script = [str(SCRIPTS / "recipe.sh"), str(root), *recipe_overrides(corpus)]
    recipe = {**RECIPE_ENVIRONMENT, "RECIPE_STEPS": "3 17 4 2 2 2 2 2 2"}
    result = subprocess.run(["bash", *script], env=recipe, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    a, b, c, d, e, f, g, h, i = (load_config(root / stage / "config.yaml") for stage in "abcdefghi")
    assert (a.steps, a.cooldown_steps, a.init_from, a.optim.lr) == (3, 0, "", 1e-3)
    assert (b.steps, b.cooldown_steps, b.init_from, b.optim.lr, b.loss.waveform) == (
        17,
        7,
        str(root / "export-a"),
        3e-4,
        0,
    )
    assert (c.steps, c.cooldown_steps, c.init_from, c.loss.stoi, c.data.speed, c.loss.pesq) == (
        4,
        2,
        str(root / "export-b"),
        0.05,
        0.1,
        0,
    )
    stages = ((d, "export-c"), (e, "export-d"), (f, "export-e"), (g, "export-f"), (h, "export-g"), (i, "export-h"))
    for stage, previous in stages:
        assert (stage.steps, stage.cooldown_steps, stage.init_from, stage.optim.lr) == (
            2,
            1,
            str(root / previous),
            3e-4,
        )
        assert (stage.loss.waveform, stage.loss.stoi, stage.data.speed, stage.loss.pesq) == (0, 0.05, 0.1, 1)
    assert (d.finetune, e.finetune) == ((), ())
    assert f.finetune == g.finetune == h.finetune == i.finetune == ("encoder", "decoder")
    assert (h.data.equaliser, i.data.equaliser) == (0, 10)  # stage I alone equalises its crops at random
    finished = Codec.load(root / "export-i").state_dict()
    quantizer = {k: v for k, v in Codec.load(root / "export-e").state_dict().items() if k.startswith("quantizer.")}
    assert all(torch.equal(finished[k], v) for k, v in quantizer.items())  # F to I leave the codebooks as E's

    # A crash after stage D's last step, in its export (a model directory without its files): the rerun resumes
    # D (nothing left to train), exports it and trains E to I again from it; the stages before are not touched.
    shutil.rmtree(root / "export-d")
    (root / "export-d").mkdir()
    for later in "efghi":
        shutil.rmtree(root / f"export-{later}")
        shutil.rmtree(root / later)
    c_log = (root / "c.log").read_text()
    result = subprocess.run(["bash", *script], env=recipe, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stage c: exported already" in result.stdout and "stage d: 2 steps (resuming)" in result.stdout
    assert "resumed" in (root / "d.log").read_text() and (root / "c.log").read_text() == c_log
    again = Codec.load(root / "export-i").state_dict()
    assert all(torch.equal(finished[k], again[k]) for k in finished)  # the same model: resume is exact

    # A trained model put in as stage C's export starts the recipe at stage D: stages A to C are skipped.
    other = tmp_path / "from-c"
    other.mkdir()
    (other / "export-c").symlink_to(root / "export-c")
    result = subprocess.run(
        ["bash", str(SCRIPTS / "recipe.sh"), str(other), *script[2:]], env=recipe, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any((other / stage).exists() for stage in "abc") and (other / "export-i" / "config.json").is_file()

    for steps in ("3 17 4 2 2 2 2 2", "3 17 4 0 2 2 2 2 2"):  # too few stages; a stage of no steps
        environment = {**RECIPE_ENVIRONMENT, "RECIPE_STEPS": steps}
        refused = subprocess.run(["bash", *script], env=environment, capture_output=True, text=True)
        assert refused.returncode == 2 and "whole numbers of steps" in refused.stderr
