import numpy as np
import pytest

from ndvq.eval.metrics import METRICS, align, score, si_sdr

BEST = {"pesq_wb": 4.5, "pesq_nb": 4.4, "stoi": 0.999, "visqol": 4.9, "mel_distance": 0.0, "stft_distance": 0.0}


@pytest.fixture(scope="module")
def pair(speech) -> tuple[np.ndarray, np.ndarray]:
    wav, _ = speech
    reference = wav[0]
    degraded = reference + 0.03 * np.random.default_rng(0).standard_normal(reference.shape).astype(np.float32)
    return reference, degraded


def test_identical_signals_score_best(pair) -> None:
    reference, _ = pair
    scores = score(reference, reference, 16000)
    assert scores.errors == {}
    for name, best in BEST.items():
        higher_is_better = METRICS[name][0]
        value = scores.values[name]
        assert value >= best if higher_is_better else value == pytest.approx(best, abs=1e-6), (name, value)
    assert scores.values["si_sdr"] > 60


def test_degraded_copy_scores_worse(pair) -> None:
    reference, degraded = pair
    clean, noisy = score(reference, reference, 16000), score(reference, degraded, 16000)
    assert noisy.errors == {}
    for name, (higher_is_better, _) in METRICS.items():
        assert (noisy.values[name] < clean.values[name]) == higher_is_better, name


def test_si_sdr_is_scale_invariant(pair) -> None:
    reference, degraded = pair
    assert si_sdr(reference, 0.3 * degraded) == pytest.approx(si_sdr(reference, degraded), abs=1e-6)
    assert si_sdr(reference, 4.0 * reference) > 60


def test_alignment_and_resampling(pair) -> None:
    reference, degraded = pair
    delayed = np.concatenate([np.zeros(123, np.float32), degraded])
    a, b = align(reference, delayed, 400)
    assert len(a) == len(b) == len(reference) and np.array_equal(b, degraded)
    shifted = score(reference, delayed, 16000, ("si_sdr",)).values["si_sdr"]
    assert shifted == pytest.approx(si_sdr(reference, degraded), abs=1e-6)
    import soxr

    at_48k = score(soxr.resample(reference, 16000, 48000), soxr.resample(reference, 16000, 48000), 48000, ("stoi",))
    assert at_48k.values["stoi"] > 0.99


def test_failures_are_reported_not_replaced() -> None:
    silence = np.zeros(16000, np.float32)
    scores = score(silence, silence, 16000, ("pesq_wb", "si_sdr"))
    assert "pesq_wb" not in scores.values and "NoUtterancesError" in scores.errors["pesq_wb"]


def test_stoi_fails_on_too_little_speech(pair) -> None:
    reference, degraded = pair  # 0.3 s: fewer than STOI's 30 frames of 12.8 ms, where pystoi answers 1e-5
    scores = score(reference[:4800], degraded[:4800], 16000, ("stoi",))
    assert "stoi" not in scores.values and "under 384 ms of speech" in scores.errors["stoi"]
