"""How far can table contexts go on a model's codes? Held-out bits per code, per stage, for several
contexts, each fitted as `ndvq fit-entropy` fits its tables (same backoff and uniform share).

    python benchmarks/entropy_contexts.py --model speech-16k \
        --fit /root/ndvq-data/demo/train.tsv --measure /root/ndvq-data/demo/test.tsv

Contexts: none (one table per stage); the previous frame's code of the same stage, through 32 groups of
nearby codebook vectors or exactly (1,024 tables); the same frame's code of the previous stage (32
groups); both, through 8 groups each. The last lines give the saving per bitrate if every stage used its
best context, an upper bound for tables of this kind (the shipped coder uses the second and fourth).
"""

import argparse

import numpy as np
import torch

from ndvq import Codec
from ndvq.entropy import PRECISION, context_tables
from ndvq.entropy_fit import code_groups, corpus_codes
from ndvq.tokens import source_files, spread


def contexts(codes: np.ndarray, stage: int, fine: np.ndarray, coarse: np.ndarray) -> dict[str, np.ndarray]:
    """Context index of every frame of `stage` (codes [n_q, frames]) under each candidate: name -> [frames]."""
    previous = np.concatenate([[0], codes[stage, :-1]])  # frame 0 shares context 0: rare enough not to matter
    out = {"none": np.zeros_like(previous), "previous frame": fine[stage][previous], "previous frame, exact": previous}
    if stage > 0:
        out["previous stage"] = fine[stage - 1][codes[stage - 1]]
        out["both, 8 x 8"] = coarse[stage - 1][codes[stage - 1]] * 8 + coarse[stage][previous]
    return out


def held_out_bits(train: list[np.ndarray], test: list[np.ndarray], stage: int, groups, size: int) -> dict:
    """Bits per code of `stage` on the test codes under each context, tables fitted on the train codes."""
    fitted = {}
    for codes in train:
        for name, context in contexts(codes, stage, *groups).items():
            counts = fitted.setdefault(name, np.zeros((size, size)))
            np.add.at(counts, (context, codes[stage]), 1)
    cost = {name: PRECISION - np.log2(context_tables(counts)) for name, counts in fitted.items()}
    total = dict.fromkeys(cost, 0.0)
    for codes in test:
        for name, context in contexts(codes, stage, *groups).items():
            total[name] += cost[name][context, codes[stage]].sum()
    return {name: bits / sum(c.shape[1] for c in test) for name, bits in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--fit", required=True, help="training audio: folder or manifest")
    parser.add_argument("--measure", required=True, help="held-out audio: folder or manifest")
    parser.add_argument("--fit-limit", type=int, default=400)
    parser.add_argument("--measure-limit", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    failures: list[tuple[str, str]] = []
    train, test = (
        [c[0] for c in corpus_codes(codec, spread(source_files(source), limit), failures)]
        for source, limit in ((args.fit, args.fit_limit), (args.measure, args.measure_limit))
    )
    groups = (code_groups(codec), code_groups(codec, 8))
    nominal = np.log2(codec.codebook_size)
    print(f"model {args.model}: {len(train)} fitting files, {len(test)} held-out files, {len(failures)} failed")
    print(f"held-out bits per code (nominal {nominal:.0f})\n")
    rows = [held_out_bits(train, test, s, groups, codec.codebook_size) for s in range(codec.num_codebooks)]
    names = list(rows[-1])
    print("| stage | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    for stage, row in enumerate(rows, 1):
        print(f"| {stage} | " + " | ".join(f"{row[n]:.2f}" if n in row else "" for n in names) + " |")
    best = np.array([min(row.values()) for row in rows])
    print()
    for bandwidth in (1.5, 3.0, 6.0):
        saving = 1 - best[: codec.stages(bandwidth)].sum() / (codec.stages(bandwidth) * nominal)
        print(f"best context per stage at {bandwidth:g} kbps: {saving:.1%} fewer bits")


if __name__ == "__main__":
    main()
