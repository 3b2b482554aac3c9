"""Corpus tokenization speed: hours of audio tokenized per hour with 1 and 2 worker processes.

    python benchmarks/tokenize_corpus.py [--files 6] [--seconds 8] [--model speech-16k] [--bandwidth 6] [--threads 2]

The corpus is a temporary folder of FLAC files cut from the bundled speech clip (each from its own offset,
lengths spread around --seconds). Each run tokenizes it from scratch (`ndvq.tokens.tokenize`, as
`ndvq tokenize` does) into its own directory: 1 worker with --threads threads, 2 workers with half each,
and 1 worker with 1 thread; all must give identical codes. Rates include loading the model (with 2
workers, also starting them and loading it in each). Codes are computed on the CPU (as `ndvq compress`
computes them), so a GPU, if present, is not used. About a minute with the defaults on 2 cores shared
with training runs, where 2 threads in one process are far slower than 2 processes of 1 thread.
"""

import argparse
import os
from pathlib import Path
import platform
import tempfile

import numpy as np
import soundfile as sf
import torch

from ndvq import tokens
from ndvq.audio import read_audio

CLIP = Path(__file__).parent.parent / "examples" / "speech_en_16k.flac"


def make_corpus(folder: Path, files: int, seconds: float) -> float:
    """`files` FLAC files of about `seconds` each (0.5x to 1.5x), the clip looped from different offsets.
    Returns the total seconds of audio."""
    clip, rate = read_audio(CLIP)
    total = 0.0
    for i in range(files):
        length = int(seconds * rate * (0.5 + i / max(1, files - 1)))
        start = i * clip.shape[1] // files
        wav = np.take(clip[0], np.arange(start, start + length), mode="wrap")
        sf.write(folder / f"utt{i:03d}.flac", wav, rate)
        total += length / rate
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="mean seconds per file")
    parser.add_argument("--model", default="speech-16k", help="model directory, shipped model or preset")
    parser.add_argument("--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--batch-seconds", type=float, default=10.0, help="seconds of audio per shard")
    parser.add_argument("--threads", type=int, default=2, help="threads in all, shared by the workers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    gpu = f" (GPU {torch.cuda.get_device_name(0)} present, not used)" if torch.cuda.is_available() else ""
    print(f"device: CPU, {args.threads} threads{gpu}")
    with tempfile.TemporaryDirectory(prefix="ndvq-tokenize-") as directory:
        corpus = Path(directory) / "corpus"
        corpus.mkdir()
        seconds = make_corpus(corpus, args.files, args.seconds)
        print(f"corpus: {args.files} files, {seconds:.1f} s; model {args.model} at {args.bandwidth:g} kbps")
        runs = [(1, args.threads), (2, args.threads)] + ([(1, 1)] if args.threads > 1 else [])
        results = []
        for workers, threads in runs:
            torch.set_num_threads(threads)  # in all: each of 2 workers gets half
            out = Path(directory) / f"tokens-{len(results)}"
            summary = tokens.tokenize(
                args.model, corpus, out, args.bandwidth, batch_seconds=args.batch_seconds, workers=workers
            )
            results.append({path: np.array(codes) for path, codes in tokens.load(out)})
            print(
                f"workers {workers}, {threads} thread{'s' if threads > 1 else ''} in all: "
                f"{summary.coded_seconds:.1f} s of audio in {summary.wall_seconds:.1f} s = "
                f"{summary.rate:.2f} hours of audio per hour ({summary.shards} shards)"
            )
        same = all(r.keys() == results[0].keys() for r in results)
        same = same and all(np.array_equal(r[p], results[0][p]) for r in results for p in r)
        print(f"codes identical in every run: {same}")


if __name__ == "__main__":
    main()
