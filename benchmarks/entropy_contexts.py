"""How far can table contexts go on a model's codes? Held-out bits per code, per stage, for several
contexts, each fitted as `ndvq fit-entropy` fits its tables (same backoff and uniform share).

    python benchmarks/entropy_contexts.py --model speech-16k \
        --fit /root/ndvq-data/demo/train.tsv --measure /root/ndvq-data/demo/test.tsv

Contexts: none (one table per stage); the previous frame's code of the same stage, through 32 groups of
nearby codebook vectors or exactly (1,024 tables); the same frame's code of the previous stage (32
groups); both, through 8 groups each. The last lines give the saving per bitrate if every stage used its
best context, an upper bound for tables of this kind (the shipped coder uses the second and fourth).

`--network` adds a learned context: per stage, a small network (embeddings of every code the decoder
already has when codes are sent frame by frame, stage by stage: the previous frame's codes of all stages
and this frame's earlier stages; one hidden layer of 256) trained on the fitting files' codes, stopped
where a tenth of them held aside scores best, and measured on the held-out files. It bounds what a tiny
network context model could save; it is not bit-exact across platforms, so the coder does not use it.
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

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


def network_inputs(codes: list[np.ndarray], stage: int, stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [frames, stages + stage] codes, target [frames]) of `stage`: the previous frame's codes of the
    first `stages` stages (zeros before the first frame) and this frame's codes of the stages before."""
    contexts, targets = [], []
    for c in codes:
        previous = np.concatenate([np.zeros((stages, 1), c.dtype), c[:stages, :-1]], axis=1)
        contexts.append(np.concatenate([previous, c[:stage]]).T)
        targets.append(c[stage])
    return torch.from_numpy(np.concatenate(contexts)).long(), torch.from_numpy(np.concatenate(targets)).long()


class ContextNetwork(torch.nn.Module):
    """Logits [frames, size] of a code from its context codes [frames, inputs]: summed embeddings, one hidden layer."""

    def __init__(self, inputs: int, size: int, width: int = 256) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(inputs * size, width)
        self.register_buffer("offset", torch.arange(inputs) * size)
        self.out = torch.nn.Sequential(
            torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, size)
        )

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(context + self.offset).sum(1))


def network_bits(train: list[np.ndarray], test: list[np.ndarray], stage: int, stages: int, size: int) -> float:
    """Held-out bits per code of `stage` under a ContextNetwork fitted on 90% of `train`, stopped at the
    epoch where the other 10% scores best."""
    torch.manual_seed(stage)
    split = max(1, len(train) // 10)
    fit, check, measure = (network_inputs(part, stage, stages) for part in (train[split:], train[:split], test))
    net = ContextNetwork(fit[0].shape[1], size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)

    def bits(data: tuple[torch.Tensor, torch.Tensor]) -> float:
        with torch.no_grad():
            return F.cross_entropy(net(data[0]), data[1]).item() / np.log(2)

    best, best_state = bits(check), {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(20):
        for batch in torch.randperm(len(fit[1])).split(256):
            loss = F.cross_entropy(net(fit[0][batch]), fit[1][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = bits(check)
        if score >= best:
            break
        best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return bits(measure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--fit", required=True, help="training audio: folder or manifest")
    parser.add_argument("--measure", required=True, help="held-out audio: folder or manifest")
    parser.add_argument("--fit-limit", type=int, default=400)
    parser.add_argument("--measure-limit", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--network", action="store_true", help="also measure a learned context (slow: minutes per stage)"
    )
    parser.add_argument("--stages", type=int, default=0, help="measure the first N stages only (0: all)")
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
    stages = args.stages or codec.num_codebooks
    rows = [held_out_bits(train, test, s, groups, codec.codebook_size) for s in range(stages)]
    if args.network:
        for s, row in enumerate(rows):
            row["network"] = network_bits(train, test, s, stages, codec.codebook_size)
    names = list(rows[-1])
    print("| stage | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    for stage, row in enumerate(rows, 1):
        print(f"| {stage} | " + " | ".join(f"{row[n]:.2f}" if n in row else "" for n in names) + " |")
    print()
    tables = np.array([min(v for n, v in row.items() if n != "network") for row in rows])
    lines = {"best table context per stage": tables}
    if args.network:
        lines["learned context (network)"] = np.array([row["network"] for row in rows])
        lines["best of both per stage"] = np.array([min(row.values()) for row in rows])
    for name, cost in lines.items():
        for bandwidth in (b for b in (1.5, 3.0, 6.0) if codec.stages(b) <= stages):
            n = codec.stages(bandwidth)
            print(f"{name} at {bandwidth:g} kbps: {1 - cost[:n].sum() / (n * nominal):.1%} fewer bits")


if __name__ == "__main__":
    main()
