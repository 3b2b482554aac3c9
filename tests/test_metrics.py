import numpy as np
import pytest

from ndvq.eval.metrics import METRICS, align, delay, score, si_sdr

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
    assert delay(reference, delayed, 400) == 123
    a, b = align(reference, delayed, 123)
    assert len(a) == len(b) == len(reference) and np.array_equal(b, degraded)
    shifted = score(reference, delayed, 16000, ("si_sdr",)).values["si_sdr"]
    assert shifted == pytest.approx(si_sdr(reference, degraded), abs=1e-6)
    # told the decode is aligned (an NDVQ decode), nothing is searched for
    assert score(reference, delayed, 16000, ("si_sdr",), aligned=True).values["si_sdr"] < shifted - 10
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
    assert "stoi" not in scores.values and "under 30 STOI frames" in scores.errors["stoi"]


def test_delay_is_found_where_the_waveforms_do_not_correlate(pair) -> None:
    # A decode with its own phase (as a parametric or a neural decoder writes): the same magnitudes in 8 ms
    # frames, each STFT bin's phase random, 200 samples late. The waveform cross-correlation peaks at an
    # arbitrary lag (here 42); the spectral envelopes still line up within a millisecond of 200.
    reference, _ = pair
    import torch

    torch.manual_seed(0)
    window = torch.hann_window(128)
    spectrum = torch.stft(torch.from_numpy(reference), 128, 32, window=window, return_complex=True)
    phases = torch.polar(torch.ones(spectrum.shape), 2 * torch.pi * torch.rand(spectrum.shape))
    scrambled = torch.istft(spectrum.abs() * phases, 128, 32, window=window, length=len(reference)).numpy()
    late = np.concatenate([np.zeros(200, np.float32), scrambled])
    assert abs(delay(reference, late, 1600) - 200) <= 16
    flipped = np.concatenate([np.zeros(200, np.float32), -reference])  # polarity inverted
    assert delay(reference, flipped, 1600) == 200
    silence = np.zeros(16000, np.float32)  # nothing to align on: no shift, never beyond max_lag
    assert delay(silence, silence, 1600) == 0
