"""The file encoder's time with the refinement's mel loss at all 7 windows and at its 5 longest (the default since
session 43), alternated in one process so that the machine's drift falls on both alike.

    python benchmarks/refine_scales.py [--runs 12] [--threads 2] [-b 6]

Compresses the bundled clip (10.51 s) as `ndvq compress` does with the shipped model (3 steps of refinement,
entropy-coded) and prints, per variant, the median, least and greatest seconds and the median speed in seconds of
audio per second.
"""

import argparse
import statistics
import tempfile
import time

import soundfile
import torch

from ndvq import Codec
from ndvq.compress import compress_file
from ndvq.modules.distances import MEL_SCALES
import ndvq.refine

CLIP = "examples/speech_en_16k.flac"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load("speech-16k")
    seconds = soundfile.info(CLIP).duration
    variants = {"7 windows (n_fft 32 .. 2048)": MEL_SCALES, "5 windows (n_fft 128 .. 2048)": MEL_SCALES[2:]}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as folder:
        target = f"{folder}/clip.ndvq"
        for run in range(-1, args.runs):  # run -1 warms up each variant, untimed
            order = list(variants.items())
            for name, scales in order if run % 2 == 0 else order[::-1]:
                ndvq.refine.REFINE_MEL_SCALES = scales  # read when each encode builds its objective
                assert len(ndvq.refine.RefinementObjective(codec.sample_rate).mel.mels) == len(scales)
                start = time.perf_counter()
                compress_file(codec, CLIP, target, bandwidth=args.bandwidth)
                if run >= 0:
                    times[name].append(time.perf_counter() - start)
    print(f"compress {CLIP} at {args.bandwidth:g} kbps, {args.threads} thread(s), {args.runs} runs each, seconds:")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:30s} median {median:.3f}  least {min(values):.3f}  greatest {max(values):.3f}"
            f"  ({seconds / median:.1f}x real time)"
        )


if __name__ == "__main__":
    main()
