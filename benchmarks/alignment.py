"""The delay each codec's decodes are found at, by the waveform cross-correlation's peak (how `ndvq eval`
aligned every decode before 2026-11-30) and by `ndvq.eval.metrics.delay` (log-mel envelopes, then the
waveform's correlation magnitude within 1 ms), in samples at 16 kHz.

    python benchmarks/alignment.py MANIFEST_OR_FOLDER [--model speech-16k] [--files 10]

A codec whose decodes keep one delay has one true lag; a method that scatters over tens of milliseconds
is not finding it. NDVQ decodes are aligned by construction (their true lag is 0).
"""

import argparse
from pathlib import Path

import numpy as np

from ndvq.audio import read_audio
from ndvq.eval.compare import reference_files
from ndvq.eval.metrics import RATE, cross_correlation, delay, prepare
from ndvq.eval.systems import Codec2System, NdvqSystem, OpusSystem
from ndvq.tokens import spread

MAX_LAG = int(0.1 * RATE)


def waveform_peak(reference: np.ndarray, degraded: np.ndarray) -> int:
    """The lag (|lag| <= 100 ms) of the largest (signed) waveform cross-correlation: the former rule."""
    lags = np.arange(-MAX_LAG, MAX_LAG + 1)
    return int(lags[np.argmax(cross_correlation(reference, degraded, lags))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a manifest (.tsv) or a folder of audio files")
    parser.add_argument("--model", default="speech-16k")
    parser.add_argument("--files", type=int, default=10, help="files taken at equal steps through the data")
    args = parser.parse_args()
    files = spread(reference_files(args.data), args.files)
    systems = [(NdvqSystem("ndvq", args.model), "1.5"), (OpusSystem(), "6")]
    systems += [(Codec2System(), "3200"), (Codec2System(), "700C")]
    print(f"{len(files)} files; lag of the decode in samples at 16 kHz (positive: the decode is late)")
    print(f"{'codec':>8} {'kbps':>5}  {'waveform peak (former)':>36}  {'delay (now)':>36}")
    for system, bitrate in systems:
        former, now = [], []
        for path in files:
            wav, rate = read_audio(path)
            reference, decoded = prepare(wav, system.code(wav, rate, bitrate).audio, rate, aligned=True)
            former.append(waveform_peak(reference, decoded))
            now.append(delay(reference, decoded, MAX_LAG))
        cells = [f"median {np.median(x):6.0f}, range {min(x):5d} .. {max(x):5d}" for x in (former, now)]
        print(f"{system.label:>8} {bitrate:>5}  {cells[0]:>36}  {cells[1]:>36}")


if __name__ == "__main__":
    main()
