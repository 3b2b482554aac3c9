"""How each voice of a corpus was recorded: DC offset, low and high frequencies, level, per voice.

    python benchmarks/voice_spectra.py MANIFEST [MANIFEST ...]

For every file of each manifest (read with ndvq.audio.read_audio, mixed to mono): its mean over its RMS (the DC
offset), the share of its energy under 100 Hz and above 4 kHz (power spectrum of the whole file), and its RMS in
dBFS. Printed per voice (the first folder below the one the files share, as benchmarks/paired.py --by-folder),
the means over its files: what separates the voices a model was trained on from those it is tested on.
"""

import argparse
import os

import numpy as np
from paired import by_folder  # benchmarks/paired.py, beside this script

from ndvq.audio import read_audio
from ndvq.manifest import read_manifest

COLUMNS = ("DC / RMS", "< 100 Hz", "> 4 kHz", "RMS dBFS")


def describe(path: str) -> tuple[float, float, float, float]:
    """One file -> (|mean| / RMS, energy share under 100 Hz, energy share above 4 kHz, RMS in dBFS)."""
    wav, rate = read_audio(path)
    mono = wav.mean(axis=0).astype(np.float64)
    rms = np.sqrt(np.mean(np.square(mono))) + 1e-12
    power = np.abs(np.fft.rfft(mono)) ** 2
    frequencies = np.fft.rfftfreq(len(mono), 1 / rate)
    total = power.sum() + 1e-30
    low, high = power[frequencies < 100].sum() / total, power[frequencies >= 4000].sum() / total
    return abs(mono.mean()) / rms, low, high, 20 * np.log10(rms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+")
    args = parser.parse_args()
    print(f"{'manifest':<12} {'voice':<28} {'files':>5} " + " ".join(f"{c:>9}" for c in COLUMNS))
    for manifest in args.manifests:
        _, by_voice = by_folder({str(path): describe(str(path)) for path, _ in read_manifest(manifest)})
        for voice, rows in sorted(by_voice.items()):
            means = np.mean(rows, axis=0)
            figures = f"{means[0]:9.3f} {means[1]:9.3f} {means[2]:9.4f} {means[3]:9.1f}"
            print(f"{os.path.basename(manifest):<12} {voice:<28} {len(rows):>5} {figures}")


if __name__ == "__main__":
    main()
