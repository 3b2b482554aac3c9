"""Entropy coding on real codes: bits actually written against nominal, per bitrate and per stage, the time it
adds to the codec's own encode and decode, and, with rate-aware assignment, what it costs in quality.

    python benchmarks/entropy.py --model speech-16k --fit /root/ndvq-data/demo/train.tsv \
        --measure /root/ndvq-data/demo/test.tsv [--fit-limit 400] [--rate-weight 0 30 50] [--model-tables]

For each --rate-weight W the tables are fitted as `ndvq fit-entropy --rate-weight W` fits them, on the codes of
--fit-limit --fit files taken at equal steps, then measured on --measure-limit files taken at equal steps through
the --measure list (use a split with other voices) through `ndvq.compress(..., entropy=True)` with the one-pass
encoder (refine_steps=0, which the tables are fitted on), at the weight
compress applies by default ("applied": W from 12 stages up, in proportion below, EntropyModel.rate_weight_at).
With --model-tables nothing is fitted: the model's own tables code at each W as given (`--rate-weight W`).
Bits are those of the payload, without the header. "time added" is the extra time of the entropy-coded round
trip (rate-aware assignment included) over the plain one, each file's round trips alternated and the faster of
two taken. With a weight above 0 the decoded audio differs from the plain codec's: mel distance and PESQ-wb of
both against the input are given (mean over the files).
"""

import argparse
import platform
import time

import numpy as np
import soundfile as sf
import torch

from ndvq import Codec, bitstream, compress, decompress
from ndvq.entropy_fit import fit_entropy
from ndvq.eval.metrics import score
from ndvq.tokens import source_files, spread

METRICS = ("mel_distance", "pesq_wb")


def timed_round_trip(codec: Codec, wav: np.ndarray, rate: int, bandwidth: float, weight: float | None):
    """(.ndvq bytes, decoded audio [C, T], seconds for both); weight None: bit-packed."""
    begin = time.perf_counter()
    data = compress(codec, wav, rate, bandwidth, entropy=weight is not None, rate_weight=weight, refine_steps=0)
    decoded, _ = decompress(data, codec)
    return data, decoded, time.perf_counter() - begin


def mean_scores(scores: list) -> dict[str, float]:
    return {name: float(np.mean([s.values[name] for s in scores if name in s.values])) for name in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--fit", required=True, help="training audio: folder or manifest")
    parser.add_argument("--measure", required=True, help="held-out audio: folder or manifest")
    parser.add_argument("--fit-limit", type=int, default=400)
    parser.add_argument("--measure-limit", type=int, default=60)
    parser.add_argument("-b", "--bandwidth", type=float, nargs="+", default=[1.5, 3.0, 6.0])
    parser.add_argument("--rate-weight", type=float, nargs="+", default=[0.0], help="weights to measure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-stage", action="store_true", help="one table per stage, no contexts (comparison)")
    parser.add_argument("--model-tables", action="store_true", help="the model's own tables at each weight, no fit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    entries = spread(source_files(args.measure), args.measure_limit)
    audio = [sf.read(entry.path, dtype="float32", always_2d=True) for entry in entries]
    audio = [(wav.T.copy(), rate) for wav, rate in audio]
    seconds = sum(wav.shape[0] * wav.shape[1] / rate for wav, rate in audio)
    kind = "one table per stage" if args.per_stage else "context tables"
    if args.model_tables:
        if codec.entropy is None:
            parser.error(f"--model-tables: {args.model} has no entropy tables")
        kind = f"its own tables (fitted for weight {codec.entropy.rate_weight:g})"
    print(f"machine: {platform.machine()}, {args.threads} threads; model {args.model}; {kind}")
    print(f"fitted on {args.fit} (--fit-limit {args.fit_limit}); measured on {len(entries)} files of {args.measure}\n")

    timed_round_trip(codec, *audio[0], max(args.bandwidth), None)  # warm-up
    plain = {}  # bandwidth -> mean scores of the plain codec
    for bandwidth in args.bandwidth:
        runs = [timed_round_trip(codec, wav, rate, bandwidth, None) for wav, rate in audio]
        quality = [
            score(wav, decoded, rate, METRICS, aligned=True)
            for (wav, rate), (_, decoded, _) in zip(audio, runs, strict=True)
        ]
        plain[bandwidth] = mean_scores(quality)

    print(
        "| weight | applied | kbps | entropy-coded kbps | fewer bits | time added | mel distance (plain) "
        "| PESQ-wb (plain) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    notes = []
    for weight in args.rate_weight:
        start = time.perf_counter()
        if args.model_tables:
            tables = codec.entropy
        else:
            tables = fit_entropy(codec, args.fit, args.fit_limit, contexts=not args.per_stage, rate_weight=weight)[0]
        fit_seconds = time.perf_counter() - start
        codec.set_entropy(tables)
        for bandwidth in args.bandwidth:
            applied = weight if args.model_tables else tables.rate_weight_at(codec.stages(bandwidth))
            bits, elapsed, plain_seconds, quality = 0, 0.0, 0.0, []
            stage_bits = np.zeros(codec.stages(bandwidth))
            for wav, rate in audio:  # plain and entropy-coded alternately, twice, the faster of each: same load
                runs = [timed_round_trip(codec, wav, rate, bandwidth, w) for w in (None, applied) * 2]
                plain_seconds += min(runs[0][2], runs[2][2])
                data, decoded, took = runs[1][0], runs[1][1], min(runs[1][2], runs[3][2])
                header, codes = bitstream.read(data, entropy=tables)
                bits += 8 * (len(data) - bitstream.header_size(header.channels, True))
                stage_bits += tables.bits(codes)
                elapsed += took
                if applied:
                    quality.append(score(wav, decoded, rate, METRICS, aligned=True))
            plain_quality = plain[bandwidth]
            actual, nominal = bits / seconds / 1000, codec.bitrate(codec.stages(bandwidth))
            coded = mean_scores(quality) if applied else plain_quality
            print(
                f"| {weight:g} | {applied:g} | {bandwidth:g} | {actual:.3f} | {100 * (1 - actual / nominal):.1f}% | "
                f"{100 * (elapsed / plain_seconds - 1):.1f}% | {coded['mel_distance']:.3f} "
                f"({plain_quality['mel_distance']:.3f}) | {coded['pesq_wb']:.3f} ({plain_quality['pesq_wb']:.3f}) |",
                flush=True,
            )
        per_code = ", ".join(f"{b / seconds / codec.frame_rate:.2f}" for b in stage_bits)
        notes.append(
            f"weight {weight:g}: "
            + ("the model's tables" if args.model_tables else f"fitted in {fit_seconds:.0f} s")
            + f"; bits per code by stage, {bandwidth:g} kbps: {per_code}"
        )
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
