"""`ndvq eval`: the comparison table and its cache, codebook usage, robustness."""

import csv
import json
import math
from pathlib import Path
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from ndvq import Codec, CodecConfig
from ndvq.cli import main
from ndvq.eval.experiments import robustness, usage_statistics
from ndvq.presets import PRESETS


@pytest.fixture(scope="module")
def references(tmp_path_factory, speech) -> Path:
    wav, rate = speech
    folder = tmp_path_factory.mktemp("refs")
    for i in range(3):
        sf.write(folder / f"u{i}.wav", wav[0, i * 8000 : (i + 1) * 8000], rate)
    return folder


def trained_tiny(folder: Path, quantizer: str, seed: int) -> Path:
    """A tiny model whose codebooks were initialised by k-means on speech (one training-mode pass)."""
    torch.manual_seed(seed)
    codec = Codec(CodecConfig(**{**PRESETS["tiny"].to_dict(), "quantizer": quantizer})).train()
    wav, _ = sf.read(Path(__file__).parent.parent / "examples" / "speech_en_16k.flac", dtype="float32")
    codec(torch.from_numpy(wav[:64000]).reshape(4, 1, -1), n_q=4)
    codec.eval().save(folder / quantizer)
    return folder / quantizer


def test_eval_table_csv_json_and_cache(tmp_path, references, capsys) -> None:
    ndvq, rvq = trained_tiny(tmp_path, "ndvq", 1), trained_tiny(tmp_path, "rvq", 2)
    baseline = ["--codec2", "3200"] if shutil.which("c2enc") else ["--opus", "6"] if shutil.which("opusenc") else []
    if not baseline:
        pytest.skip("neither codec2 nor opus-tools is installed (CI installs both)")
    argv = ["eval", str(references), "--out", str(tmp_path / "out"), "--model", f"nd={ndvq}", "--model", f"rv={rvq}"]
    argv += ["-b", "2", "8", "--metrics", "mel_distance", "si_sdr", *baseline]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]
    assert [(e["codec"], e["bitrate"]) for e in summary] == [
        (baseline[0][2:], baseline[1]),
        ("nd", "2"),
        ("nd", "8"),
        ("rv", "2"),
        ("rv", "8"),
    ]
    assert all(e["items"] == 3 and e["mel_distance"] is not None and e["si_sdr_ci95"] is not None for e in summary)
    nd2 = next(e for e in summary if e["codec"] == "nd" and e["bitrate"] == "2")
    assert nd2["measured_kbps"] == pytest.approx((125 + 50) * 8 / 0.5 / 1000)  # 125 codes + the 50-byte header
    rows = list(csv.DictReader(open(tmp_path / "out" / "per_utterance.csv")))
    assert len(rows) == 15 and {r["codec"] for r in rows} == {"nd", "rv", baseline[0][2:]}
    assert "| nd | 2 |" in out and "mel_distance ↓" in (tmp_path / "out" / "summary.md").read_text()
    assert len(list((tmp_path / "out" / "cache").rglob("*.json"))) == 15

    cached = (tmp_path / "out" / "summary.json").read_text()
    for path in (tmp_path / "out" / "cache" / "nd").rglob("*.json"):  # a cached row is reused as is
        row = json.loads(path.read_text())
        path.write_text(json.dumps({**row, "si_sdr": 99.0}))
    assert main(argv) == 0
    again = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]
    assert next(e for e in again if e["codec"] == "nd")["si_sdr"] == 99.0
    assert cached != (tmp_path / "out" / "summary.json").read_text()

    for path in (tmp_path / "out" / "cache" / "nd").rglob("*.json"):  # made under other metric definitions
        row = json.loads(path.read_text())
        path.write_text(json.dumps({**row, "metrics_version": row["metrics_version"] - 1}))
    assert main(argv) == 0
    redone = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]
    assert json.loads(cached)["summary"] == redone

    # Other weights under the same label, or a metric not cached: those rows are redone, not reused.
    argv[argv.index(f"nd={ndvq}")] = f"nd={rvq}"
    argv.insert(argv.index("si_sdr") + 1, "stft_distance")
    assert main(argv) == 0
    redone = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]
    scores = {(e["codec"], e["bitrate"]): (e["si_sdr"], e["stft_distance"]) for e in redone}
    assert scores["nd", "2"] == scores["rv", "2"] and scores["nd", "8"] == scores["rv", "8"]
    assert all(e["stft_distance"] is not None for e in redone)

    # A label's cache copied under another label is reused there, its rows filed under the new label.
    shutil.copytree(tmp_path / "out" / "cache" / "rv", tmp_path / "out" / "cache" / "twin")
    for path in (tmp_path / "out" / "cache" / "twin").rglob("*.json"):  # marked, to see that it is reused
        path.write_text(json.dumps({**json.loads(path.read_text()), "si_sdr": 42.0}))
    assert main([*argv, "--model", f"twin={rvq}"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]
    assert all(e["items"] == 3 for e in summary)
    assert [e["si_sdr"] for e in summary if e["codec"] == "twin"] == [42.0, 42.0]


def test_usage_statistics_on_hand_made_codes() -> None:
    counts = torch.zeros(2, 8, dtype=torch.long)
    counts[0, :4] = 5  # four codes used equally: 2 bits, 4 unused
    counts[1, 0] = 7  # one code: 0 bits, 7 unused
    stats = usage_statistics(counts)
    assert stats[0]["entropy_bits"] == pytest.approx(2.0) and stats[0]["unused"] == 4
    assert stats[0]["perplexity"] == pytest.approx(4.0) and stats[0]["max_bits"] == 3
    assert stats[1]["entropy_bits"] == pytest.approx(0.0) and stats[1]["unused"] == 7


def test_usage_command(tmp_path, references, capsys) -> None:
    model = trained_tiny(tmp_path, "ndvq", 1)
    assert (
        main(["eval", str(references), "--out", str(tmp_path / "out"), "--model", str(model), "-b", "4", "--usage"])
        == 0
    )
    document = json.loads((tmp_path / "out" / "usage.json").read_text())
    stages = document["models"]["ndvq"]
    assert [s["stage"] for s in stages] == [1, 2] and all(0 <= s["entropy_bits"] <= 8 for s in stages)
    assert stages[0]["entropy_bits"] > 3 and stages[0]["unused"] < 200  # k-means spread stage 1 over the codes
    assert (tmp_path / "out" / "usage.png").stat().st_size > 1000


def test_code_changes_rise_as_snr_falls(tmp_path, references) -> None:
    models = [("nd", str(trained_tiny(tmp_path, "ndvq", 1))), ("rv", str(trained_tiny(tmp_path, "rvq", 2)))]
    files = sorted(references.iterdir())
    robustness(models, files, tmp_path / "out", 8.0, latent_snrs=(80.0, 20.0, 0.0), input_snrs=(80.0, 0.0))
    results = json.loads((tmp_path / "out" / "robustness.json").read_text())["models"]
    for label in ("nd", "rv"):
        rate = {name: value["change_rate_mean"] for name, value in results[label].items()}
        # Near zero, not zero: float32 distances between near-duplicate k-means centroids can flip a few codes.
        assert rate["latent 80 dB"] < 0.1 and rate["white 80 dB"] < 0.1
        assert rate["latent 80 dB"] <= rate["latent 20 dB"] < rate["latent 0 dB"]
        assert rate["white 80 dB"] < rate["white 0 dB"] and rate["babble 80 dB"] < rate["babble 0 dB"]
        assert len(results[label]["latent 0 dB"]["change_rate_per_stage"]) == 4
        assert not math.isnan(results[label]["latent 0 dB"]["mel_distance_drop"])
    assert (tmp_path / "out" / "robustness.png").is_file()
    assert np.isfinite(results["nd"]["white 0 dB"]["stoi_drop"])


def test_entropy_coded_models_are_scored_on_their_actual_bytes(tmp_path, references, capsys) -> None:
    """--entropy-model: the files are entropy-coded (the tables' rate weight included), so the measured bitrate
    is what compress --entropy writes; a model without tables is refused on one line."""
    model = trained_tiny(tmp_path, "ndvq", 1)
    assert main(["fit-entropy", str(model), str(references), "--rate-weight", "30"]) == 0
    argv = ["eval", str(references), "--out", str(tmp_path / "out"), "--model", f"plain={model}"]
    argv += ["--entropy-model", f"coded={model}", "-b", "8", "--metrics", "mel_distance"]
    assert main(argv) == 0
    summary = {e["codec"]: e for e in json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]}
    assert summary["coded"]["measured_kbps"] < 0.9 * summary["plain"]["measured_kbps"]
    assert summary["coded"]["mel_distance"] != summary["plain"]["mel_distance"]  # rate-aware: other codes
    capsys.readouterr()
    argv = ["eval", str(references), "--out", str(tmp_path / "out2"), "--entropy-model", "tiny", "-b", "8"]
    assert main(argv) == 1
    assert "no entropy tables" in capsys.readouterr().err
    # The same directory plain and entropy-coded needs two labels (one would share results and cache).
    argv = ["eval", str(references), "--out", str(tmp_path / "out3"), "--model", str(model)]
    assert main([*argv, "--entropy-model", str(model), "-b", "8"]) == 1
    assert "two systems are labelled 'ndvq'" in capsys.readouterr().err
