"""The decoder's level error, and the level of what `ndvq compress` writes, per voice of a manifest.

    python benchmarks/level.py MANIFEST [--model speech-16k] [-b 6] [--refine 3] [--threads 2]

Each file is compressed as `ndvq compress` does by default and decompressed. "decoder" is the decoder's own
level against the input, which the file's scale corrects (README, Level): 20 log10(input RMS / stored scale) dB,
for mono files (the first channel's scale); "decoded" is the decode's RMS against the input's, in dB. "loud" and
"quiet": the decode at the decoder's own level against the input, in dB, averaged over the mel bins (n_fft 512,
hop 128, 64 bands; bins within 80 dB of the file's loudest) among the input's loudest tenth and its quietest half.
Files are grouped by their first folder below the folder all of them share (a voice, for `ndvq data demo`'s
manifests); each line gives the mean over a group's files, with the smallest and largest for the levels.
"""

import argparse
from collections import defaultdict
import os
from pathlib import Path

import numpy as np
import torch

from ndvq import Codec, bitstream, compress, decompress
from ndvq.audio import read_audio
from ndvq.manifest import read_manifest
from ndvq.modules.spectral import magnitude, mel_filterbank

MEL_FFT = 512


def rms(wav: np.ndarray) -> float:
    """RMS of wav (any shape), in float64."""
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))


def mel_power(wav: np.ndarray) -> np.ndarray:
    """Mel-band power of wav [T] at 16 kHz, every (band, frame): [bins]."""
    window = torch.hann_window(MEL_FFT)
    spectrum = magnitude(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None], window)
    return (mel_filterbank(16000, MEL_FFT, 64) @ spectrum.pow(2)).flatten().double().numpy()


def dynamics(reference: np.ndarray, decoded: np.ndarray) -> tuple[float, float]:
    """The decode against the reference [T] in dB, mean over the reference's loudest tenth of mel bins and over
    its quietest half (bins within 80 dB of the loudest)."""
    power, other = mel_power(reference), mel_power(decoded)
    kept = power > power.max() * 1e-8
    level = 10 * np.log10(power[kept])
    difference = 10 * np.log10(other[kept] + 1e-20) - level
    half, tenth = np.quantile(level, [0.5, 0.9])
    return float(difference[level > tenth].mean()), float(difference[level <= half].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest (path<TAB>seconds)")
    parser.add_argument("--model", default="speech-16k", help="shipped model name or model directory")
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--refine", type=int, default=None, help="refinement steps (default: compress's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    paths = [path for path, _ in read_manifest(args.manifest)]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    levels: dict[str, list[tuple[float, float]]] = defaultdict(list)
    options = {} if args.refine is None else {"refine_steps": args.refine}
    for path in paths:
        wav, rate = read_audio(path)
        data = compress(codec, wav, rate, args.bandwidth, **options)
        header = bitstream.read_header(data)
        decoded, _ = decompress(data, codec)
        decoder = 20 * np.log10(rms(wav) / header.scales[0])
        group = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else root.name
        own = decoded[0] * rms(wav) / header.scales[0]  # at the decoder's own level (rate: the model's 16 kHz)
        loud, quiet = dynamics(wav[0], own) if rate == 16000 else (np.nan, np.nan)
        levels[group].append((decoder, 20 * np.log10(rms(decoded) / rms(wav)), loud, quiet))
    print(f"{args.model}, {args.bandwidth:g} kbps, {len(paths)} files; dB: mean (smallest .. largest)")
    print(f"{'group':24s} {'files':>5s}  {'decoder':>22s}  {'decoded':>22s}  {'loud':>6s}  {'quiet':>6s}")
    for group, values in sorted(levels.items()):
        columns = np.asarray(values).T
        cells = [f"{c.mean():+6.2f} ({c.min():+6.2f} .. {c.max():+6.2f})" for c in columns[:2]]
        print(
            f"{group:24s} {len(values):5d}  {cells[0]:>22s}  {cells[1]:>22s}  {columns[2].mean():+6.2f}  "
            f"{columns[3].mean():+6.2f}"
        )
    every = np.concatenate([np.asarray(values) for values in levels.values()])
    print(
        f"{'all':24s} {len(every):5d}  {every[:, 0].mean():+22.2f}  {every[:, 1].mean():+22.2f}  "
        f"{np.nanmean(every[:, 2]):+6.2f}  {np.nanmean(every[:, 3]):+6.2f}"
    )


if __name__ == "__main__":
    main()
