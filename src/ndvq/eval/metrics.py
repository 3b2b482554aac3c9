"""Quality metrics on reference/decoded pairs of mono signals, each in its standard form.

Every metric runs at 16 kHz (signals are resampled with soxr), after alignment and length matching.
A metric that fails on a pair is reported as an error string, never replaced by a value.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
import warnings

import numpy as np
import torch

from ndvq.audio import mono_at
from ndvq.modules.spectral import LogMagnitude, LogMel, spectral_distance

RATE = 16000
METRICS_VERSION = 3  # of the metrics' definitions, kept in cached eval rows: rows of another version are redone
VISQOL_MAPPER = "polynomial (visqol-python speech mode, use_lattice_model=False)"
# name -> (higher is better, description)
METRICS: dict[str, tuple[bool, str]] = {
    "pesq_wb": (True, "PESQ wide-band, ITU-T P.862.2, MOS-LQO"),
    "pesq_nb": (True, "PESQ narrow-band, ITU-T P.862, MOS-LQO"),
    "stoi": (True, "STOI (Taal et al. 2011), 0 to 1"),
    "visqol": (True, f"ViSQOL v3 speech mode, MOS-LQO, mapper: {VISQOL_MAPPER}"),
    "mel_distance": (False, "mean L1 of log10 mel (64 bins) over n_fft 32..2048, hop n_fft/4"),
    "stft_distance": (False, "mean L1 of log10 |STFT| over windows 2048 and 512, hop window/4"),
    "si_sdr": (True, "scale-invariant SDR, dB"),
}


@dataclass
class Scores:
    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def delay(reference: np.ndarray, degraded: np.ndarray, max_lag: int, hop: int = 16, seconds: float = 30.0) -> int:
    """The delay of `degraded` behind `reference` (1-D, 16 kHz), |delay| <= max_lag samples, from their
    first `seconds` (the codecs searched for keep one delay).

    Coarse, to `hop` samples: the shift minimising the L1 distance of the log-mel spectrograms (n_fft 512,
    hop `hop`), which holds for codecs whose waveform does not follow the input's (Codec2's synthetic
    phase, a neural decoder's own phase), where the waveform cross-correlation peaks at arbitrary lags;
    ties (silence) go to the smallest shift. Fine, within +-hop of it: the peak of the waveform
    cross-correlation's magnitude.
    """
    reference, degraded = reference[: int(seconds * RATE)], degraded[: int(seconds * RATE)]
    if min(len(reference), len(degraded)) < 512:  # too short for the spectral search
        return 0
    envelope = LogMel(RATE, 512, 64, hop)
    mels = [envelope(torch.from_numpy(x)[None, None])[0] for x in (reference, degraded)]  # [64, frames]
    frames = min(m.shape[-1] for m in mels)
    reference_mel, degraded_mel = (m[:, :frames] for m in mels)
    limit = min(max_lag // hop, frames // 2)  # at least half the frames overlap
    steps = sorted(range(-limit, limit + 1), key=abs)  # the first of equal distances is the smallest shift
    distances = torch.stack(
        [
            (reference_mel[:, : frames - k] - degraded_mel[:, k:]).abs().mean()
            if k >= 0
            else (reference_mel[:, -k:] - degraded_mel[:, : frames + k]).abs().mean()
            for k in steps
        ]
    )
    coarse = steps[int(torch.argmin(distances))] * hop
    lags = np.arange(max(coarse - hop, -max_lag), min(coarse + hop, max_lag) + 1)
    magnitude = np.abs(cross_correlation(reference, degraded, lags))
    if not magnitude.max() > 0:  # no waveform to refine on
        return coarse
    return int(lags[np.argmax(magnitude)])


def cross_correlation(reference: np.ndarray, degraded: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """sum_t degraded[t + lag] * reference[t] at each lag in `lags` (samples, positive: degraded late), by FFT."""
    size = 1 << int(np.ceil(np.log2(len(reference) + len(degraded))))
    correlation = np.fft.irfft(np.fft.rfft(degraded, size) * np.conj(np.fft.rfft(reference, size)), size)
    return correlation[lags % size]


def align(reference: np.ndarray, degraded: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Advance `degraded` by `lag` samples (delay it when negative), then cut both to their common length."""
    if lag > 0:
        degraded = degraded[lag:]
    elif lag < 0:
        degraded = np.concatenate([np.zeros(-lag, degraded.dtype), degraded])
    length = min(len(reference), len(degraded))
    return reference[:length], degraded[:length]


def si_sdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-10) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019), zero-mean signals.

    Energies are regularised by `eps`, so identical signals give a large finite value, not infinity.
    """
    reference = reference.astype(np.float64) - reference.mean()
    estimate = estimate.astype(np.float64) - estimate.mean()
    target = (np.dot(estimate, reference) + eps) / (np.dot(reference, reference) + eps) * reference
    noise = estimate - target
    return float(10 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


_MEL = [LogMel(RATE, 2**i) for i in range(5, 12)]
_STFT = [LogMagnitude(2048), LogMagnitude(512)]


def _distance(transforms: list[torch.nn.Module]) -> Callable[[np.ndarray, np.ndarray], float]:
    def distance(reference: np.ndarray, estimate: np.ndarray) -> float:
        return spectral_distance(
            transforms, torch.from_numpy(estimate)[None, None], torch.from_numpy(reference)[None, None]
        )

    return distance


def _pesq(mode: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(reference: np.ndarray, estimate: np.ndarray) -> float:
        from pesq import pesq

        return float(pesq(RATE, reference, estimate, mode))

    return score


def _stoi(reference: np.ndarray, estimate: np.ndarray) -> float:
    from pystoi import stoi

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Not enough STFT frames")
        value = float(stoi(reference, estimate, RATE, extended=False))
    # pystoi answers exactly 1e-5 (and warns) when fewer than 30 frames are left: a failure, not a score
    if value == 1e-5:
        raise ValueError("under 30 STOI frames (about 0.4 s) of speech above its 40 dB silence threshold")
    return value


_VISQOL = None


def _visqol(reference: np.ndarray, estimate: np.ndarray) -> float:
    global _VISQOL
    if _VISQOL is None:
        from visqol import VisqolApi

        _VISQOL = VisqolApi()
        _VISQOL.create(mode="speech", use_lattice_model=False)
    return float(_VISQOL.measure_from_arrays(reference.astype(np.float64), estimate.astype(np.float64), RATE).moslqo)


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pesq_wb": _pesq("wb"),
    "pesq_nb": _pesq("nb"),
    "stoi": _stoi,
    "visqol": _visqol,
    "mel_distance": _distance(_MEL),
    "stft_distance": _distance(_STFT),
    "si_sdr": si_sdr,
}


def prepare(
    reference: np.ndarray, estimate: np.ndarray, rate: int, aligned: bool = False, max_lag_seconds: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Mono 1-D float32 at 16 kHz, length-matched, and, unless `aligned`, delay-compensated (`delay`)."""
    reference, estimate = (mono_at(np.atleast_2d(x), rate, RATE) for x in (reference, estimate))
    lag = 0 if aligned else delay(reference, estimate, int(max_lag_seconds * RATE))
    return align(reference, estimate, lag)


def score(
    reference: np.ndarray,
    estimate: np.ndarray,
    rate: int,
    metrics: tuple[str, ...] = tuple(METRICS),
    aligned: bool = False,
) -> Scores:
    """Score `estimate` against `reference` ([T] or [C, T] at `rate` Hz) with each named metric.

    `aligned`: the estimate is sample-aligned with the reference by construction (an NDVQ decode), so no
    delay is searched for, which could only add error."""
    reference, estimate = prepare(reference, estimate, rate, aligned)
    scores = Scores()
    for name in metrics:
        try:
            value = SCORERS[name](reference, estimate)
            if not np.isfinite(value):
                raise ValueError(f"non-finite result {value}")
            scores.values[name] = value
        except Exception as error:  # noqa: BLE001 - any failure of a third-party metric is reported, not raised
            scores.errors[name] = f"{type(error).__name__}: {error}".strip()
    return scores
