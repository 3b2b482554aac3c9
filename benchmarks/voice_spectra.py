"""How each voice of a corpus was recorded: DC offset, low and high frequencies, level, per voice; and, with
--model, the same of the codec's decodes.

    python benchmarks/voice_spectra.py MANIFEST [MANIFEST ...] [--model M ...] [-b 6] [--every 1]

For every --every-th file of each manifest (read with ndvq.audio.read_audio, mixed to mono): its mean over its RMS
(the DC offset, its magnitude), the share of its energy under 100 Hz and above 4 kHz (power spectrum of the whole file),
and its RMS in dBFS. Printed per voice (the first folder below the one the files share, as benchmarks/paired.py
--by-folder), the means over its files: what separates the voices a model was trained on from those it is tested
on. Each --model (a name or an export directory) adds a row per voice for its decodes, each file compressed at -b
kbps as `ndvq compress` does by default and decompressed: whether the codec keeps a voice's DC offset and rumble.
"""

import argparse
import os

import numpy as np
from paired import by_folder  # benchmarks/paired.py, beside this script

from ndvq import Codec, compress, decompress
from ndvq.audio import read_audio
from ndvq.manifest import read_manifest

COLUMNS = ("DC / RMS", "< 100 Hz", "> 4 kHz", "RMS dBFS")


def describe(mono: np.ndarray, rate: int) -> tuple[float, float, float, float]:
    """One signal [T] -> (|mean| / RMS, energy share under 100 Hz, energy share above 4 kHz, RMS in dBFS)."""
    mono = mono.astype(np.float64)
    rms = np.sqrt(np.mean(np.square(mono))) + 1e-12
    power = np.abs(np.fft.rfft(mono)) ** 2
    frequencies = np.fft.rfftfreq(len(mono), 1 / rate)
    total = power.sum() + 1e-30
    low, high = power[frequencies < 100].sum() / total, power[frequencies >= 4000].sum() / total
    return abs(mono.mean()) / rms, low, high, 20 * np.log10(rms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--model", action="append", default=[], help="also describe this model's decodes")
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0)
    parser.add_argument("--every", type=int, default=1, help="every N-th file of each manifest")
    args = parser.parse_args()
    codecs = {name: Codec.load(name).eval() for name in args.model}
    print(f"{'manifest':<12} {'voice':<28} {'signal':<24} {'files':>5} " + " ".join(f"{c:>9}" for c in COLUMNS))
    for manifest in args.manifests:
        rows: dict[str, dict[str, tuple[float, ...]]] = {"input": {}, **{name: {} for name in codecs}}
        for path, _ in read_manifest(manifest)[:: args.every]:
            wav, rate = read_audio(path)
            rows["input"][str(path)] = describe(wav.mean(axis=0), rate)
            for name, codec in codecs.items():
                decoded, decoded_rate = decompress(compress(codec, wav, rate, args.bandwidth), codec)
                rows[name][str(path)] = describe(decoded.mean(axis=0)[: wav.shape[1]], decoded_rate)
        by_signal = {signal: by_folder(by_file)[1] for signal, by_file in rows.items()}
        label = os.path.basename(manifest)
        for voice in sorted(by_signal["input"]):
            for signal, by_voice in by_signal.items():
                means = np.mean(by_voice[voice], axis=0)
                figures = f"{means[0]:9.3f} {means[1]:9.3f} {means[2]:9.4f} {means[3]:9.1f}"
                name = os.path.basename(os.path.normpath(signal))
                print(f"{label:<12} {voice:<28} {name:<24} {len(by_voice[voice]):>5} {figures}")


if __name__ == "__main__":
    main()
