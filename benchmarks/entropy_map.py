"""Rate-aware assignment, an experiment: would NDVQ's codes compress better if the encoder picked, per
frame, the code maximising log-likelihood + WEIGHT x log prior (the stage's code frequencies on the
training codes, natural log) instead of the likelihood alone? The decoder is unchanged; only the encoder's
choice moves toward frequent codes, trading quality for entropy.

    python benchmarks/entropy_map.py --model speech-16k --fit /root/ndvq-data/demo/train.tsv \
        --measure /root/ndvq-data/demo/test.tsv [-b 1.5] [--weights 0 10 30 100]

For each weight: the priors come from the plain codes of --fit-limit training files; one table per stage
is then fitted on the training codes made at that weight, and bits per code are measured with it on
--measure-limit held-out files (no contexts: the context tables of `ndvq fit-entropy` would save more),
with the mel distance and PESQ-wb of their decoded audio.
"""

import argparse
from contextlib import contextmanager
import platform

import numpy as np
import soundfile as sf
import torch

import ndvq
from ndvq import Codec, bitstream
from ndvq.eval.metrics import score
from ndvq.tokens import source_files, spread


@contextmanager
def rate_aware(codec: Codec, log_prior: np.ndarray, weight: float):
    """Within the block, stage i assigns argmax(log-likelihood + weight x log_prior[i]) (NDVQ only)."""
    books = list(codec.quantizer.codebooks)[: len(log_prior)]
    for book, prior in zip(books, torch.from_numpy(log_prior).float(), strict=True):
        book.encode = lambda x, book=book, prior=prior: (book.log_likelihood(x) + weight * prior).argmax(dim=1)
    try:
        yield
    finally:
        for book in books:
            del book.encode  # back to the class's method


def run(codec: Codec, entries, bandwidth: float, quality: bool) -> tuple[np.ndarray, list[dict]]:
    """Codes [n_q, all frames] of the files, and their decoded audio's scores if `quality`."""
    codes, scores = [], []
    for entry in entries:
        wav, rate = sf.read(entry.path, dtype="float32", always_2d=True)
        data = ndvq.compress(codec, wav.T.copy(), rate, bandwidth)
        codes.append(bitstream.read(data)[1][0])
        if quality:
            decoded, _ = ndvq.decompress(data, codec)
            scores.append(score(wav.T, decoded, rate, ("mel_distance", "pesq_wb")).values)
    return np.concatenate(codes, axis=1), scores


def frequencies(codes: np.ndarray, size: int) -> np.ndarray:
    counts = np.stack([np.bincount(stage, minlength=size) + 0.5 for stage in codes])
    return counts / counts.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--fit", required=True, help="training audio: folder or manifest")
    parser.add_argument("--measure", required=True, help="held-out audio: folder or manifest")
    parser.add_argument("--fit-limit", type=int, default=200)
    parser.add_argument("--measure-limit", type=int, default=60)
    parser.add_argument("-b", "--bandwidth", type=float, default=1.5)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    if codec.config.quantizer != "ndvq":
        raise SystemExit("error: rate-aware assignment needs an NDVQ model (likelihoods)")
    fit, measure = (
        spread(source_files(args.fit), args.fit_limit),
        spread(source_files(args.measure), args.measure_limit),
    )
    size, nominal = codec.codebook_size, np.log2(codec.codebook_size)
    log_prior = np.log(frequencies(run(codec, fit, args.bandwidth, False)[0], size))
    print(f"machine: {platform.machine()}, {args.threads} threads; model {args.model} at {args.bandwidth:g} kbps")
    print(f"priors and tables from {len(fit)} files of {args.fit}; measured on {len(measure)} of {args.measure}\n")
    print(
        "| weight | bits per code by stage | fewer bits than nominal | mel distance | PESQ-wb |\n|---|---|---|---|---|"
    )
    for weight in args.weights:
        with rate_aware(codec, log_prior, weight):
            table = frequencies(run(codec, fit, args.bandwidth, False)[0], size)
            codes, scores = run(codec, measure, args.bandwidth, True)
        bits = np.array([-np.log2(table[s][codes[s]]).mean() for s in range(len(codes))])
        mel = np.mean([s["mel_distance"] for s in scores])
        pesq = np.mean([s["pesq_wb"] for s in scores if "pesq_wb" in s])
        stages = ", ".join(f"{b:.2f}" for b in bits)
        print(f"| {weight:g} | {stages} | {1 - bits.sum() / (len(bits) * nominal):.1%} | {mel:.3f} | {pesq:.3f} |")


if __name__ == "__main__":
    main()
