"""Entropy coding of codes [C, n_q, frames]: integer probability tables and constriction's range coder.

The model codes each code from a frequency table chosen by a context:
  - stage 1, frame 0: no context (the last table of the stage);
  - stage 1, frame t > 0: the group of stage 1's code at frame t - 1 (speech changes slowly);
  - stage s > 1: the group of stage s - 1's code at the same frame (what the residual depends on).
Groups (`groups[s]`, `GROUPS` of them) gather codes with nearby codebook vectors, so a table per group
can be estimated from little data. A stage whose contexts do not predict held-out codes falls back to one
table, or to uniform tables (exactly bit-packing's cost). A channel's stages are coded in order, frame by
frame, each code with the range coder's model of its table (built once per table and reused).

Every probability is an integer out of TOTAL = 2**PRECISION. constriction receives them as float64
ratios, which are exact, so the same integers give the same bits on every platform and device: no
floating-point result of a model (softmax, logits) ever decides a symbol.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
import math

import constriction
import numpy as np

from ndvq.errors import NdvqError

PRECISION = 16
TOTAL = 1 << PRECISION
GROUPS = 32
# Every table leaves at least 1/128 of its mass to the other symbols (fit mixes in 1/64 of uniform), so a
# code costs at least log2(128/127) bits and a payload of P bytes holds at most about 710 P codes.
MIN_OTHERS = TOTAL // 128
MAX_SYMBOLS_PER_BYTE = 800
# Rate-aware assignment's default weight is the tables' own from this many stages up and in proportion below:
# later stages correct what a rate-biased choice costs, and with few stages there is little after it
# (docs/ndvq-that-learns.md, session 30).
FULL_WEIGHT_STAGES = 12
UNIFORM_SHARE = 1 / 64
BACKOFF = 128.0  # frames' worth of a stage's overall frequencies added to each of its context's counts
HOLDOUT_EVERY = 5  # fit: one block in 5 is held out to choose each stage's model
HOLDOUT_BLOCK = 250  # frames per block (5 s at 50 Hz): held-out frames come in stretches, as new files do


def frequencies(counts: np.ndarray) -> np.ndarray:
    """Non-negative counts [..., K] -> integer frequencies [..., K], each at least 1, summing to TOTAL along
    the last axis (largest remainders get the rounding), with UNIFORM_SHARE of the mass spread evenly."""
    counts = np.asarray(counts, np.float64)
    size = counts.shape[-1]
    if not 2 <= size <= TOTAL // 2:
        raise ValueError(f"{size} symbols do not fit a table of {TOTAL}")
    total = counts.sum(axis=-1, keepdims=True)
    empirical = np.where(total > 0, counts / np.where(total > 0, total, 1), 1 / size)
    share = ((1 - UNIFORM_SHARE) * empirical + UNIFORM_SHARE / size) * (TOTAL - size)
    table = np.floor(share).astype(np.int64)
    missing = TOTAL - size - table.sum(axis=-1)
    order = np.argsort(-(share - table), axis=-1, kind="stable")
    table += np.argsort(order, axis=-1, kind="stable") < missing[..., None]
    return (table + 1).astype(np.int32)


def check_rate_weight(weight: float) -> None:
    """NdvqError unless `weight` is a usable rate weight (finite, at least 0)."""
    if not (math.isfinite(weight) and weight >= 0):
        raise NdvqError(f"rate weight: must be finite and at least 0, got {weight:g}")


def index_groups(stages: int, codebook_size: int) -> np.ndarray:
    """Groups by code index ([n_q, K] int32): for codes with no known geometry."""
    return np.tile((np.arange(codebook_size) * GROUPS // codebook_size).astype(np.int32), (stages, 1))


@dataclass(frozen=True)
class EntropyModel:
    tables: np.ndarray  # int32 [n_q, GROUPS + 1, K]: per stage, a table per context group, then "none"
    groups: np.ndarray  # int32 [n_q, K]: the group of each code of each stage, in [0, GROUPS)
    # Encoder side only: the weight of the log prior in rate-aware assignment (0: most likely code; see log_prior).
    rate_weight: float = 0.0
    # constriction's model of each (stage, context) table, built on first use: building one costs O(K), so
    # codes are coded one at a time with these instead of with a table row each.
    _models: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tables, groups = self.tables, self.groups
        if tables.dtype != np.int32 or groups.dtype != np.int32:
            raise ValueError("entropy tables must be int32 (integer probabilities)")
        if tables.ndim != 3 or tables.shape[1] != GROUPS + 1 or groups.shape != (tables.shape[0], tables.shape[2]):
            raise ValueError(f"entropy tables of shapes {tables.shape} and {groups.shape} do not match")
        if (tables < 1).any() or (tables.sum(axis=-1, dtype=np.int64) != TOTAL).any():
            raise ValueError(f"every table must be positive and sum to {TOTAL}")
        if (tables > TOTAL - MIN_OTHERS).any():
            raise ValueError(f"no code may have more than {TOTAL - MIN_OTHERS} / {TOTAL}")
        if groups.min() < 0 or groups.max() >= GROUPS:
            raise ValueError(f"groups must lie in [0, {GROUPS})")
        if not (np.isfinite(self.rate_weight) and self.rate_weight >= 0):
            raise ValueError(f"the rate weight must be finite and at least 0, got {self.rate_weight}")

    def __getstate__(self) -> dict:  # constriction's models do not pickle: copies rebuild them
        return {**self.__dict__, "_models": {}}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @property
    def stages(self) -> int:
        return self.tables.shape[0]

    def rate_weight_at(self, stages: int) -> float:
        """The default rate weight for coding `stages` stages: rate_weight x min(1, stages / FULL_WEIGHT_STAGES)."""
        return self.rate_weight * min(1.0, stages / FULL_WEIGHT_STAGES)

    @property
    def codebook_size(self) -> int:
        return self.tables.shape[2]

    def contexts(self, codes: np.ndarray, stage: int) -> np.ndarray:
        """The table index of each frame of one channel's `stage` (codes [n_q, frames]): [frames]."""
        frames = codes.shape[1]
        if stage > 0:
            return self.groups[stage - 1][codes[stage - 1]]
        previous = self.groups[0][codes[0, :-1]] if frames > 1 else np.zeros(0, np.int32)
        return np.concatenate([[GROUPS], previous]).astype(np.int64)

    @cached_property
    def log_prior(self) -> np.ndarray:
        """Natural-log probabilities [n_q, GROUPS + 1, K] (float32, computed once) for rate-aware assignment,
        which adds rate_weight x log_prior[s, context] to stage s's log-likelihoods. Stages after the first get
        their coder's row (the context is the same frame's code of the stage before); stage 1, whose context is
        its previous frame's code, gets the mean of its context rows in every row (its frames are assigned all
        at once)."""
        prior = self.tables.astype(np.float64) / TOTAL
        prior[0] = prior[0, :GROUPS].mean(axis=0)
        return np.log(prior).astype(np.float32)

    # --- coding ------------------------------------------------------------------------------------
    def encode(self, codes: np.ndarray) -> bytes:
        """codes [C, n_q, frames] (n_q <= stages) -> the range coder's words, little-endian bytes."""
        channels, n_q, frames = codes.shape
        if n_q > self.stages or (codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size)):
            raise ValueError(f"codes [.., {n_q}, ..] outside the entropy model's {self.stages} x {self.codebook_size}")
        encoder = constriction.stream.queue.RangeEncoder()
        for c in range(channels):
            for s in range(n_q):
                for context, symbol in zip(self.contexts(codes[c], s).tolist(), codes[c, s].tolist(), strict=True):
                    encoder.encode(symbol, self._model(s, context))
        return encoder.get_compressed().astype("<u4").tobytes()

    def decode(self, payload: bytes | memoryview, channels: int, n_q: int, frames: int) -> np.ndarray:
        """Inverse of encode: codes [C, n_q, frames] (int64), always in range; ValueError for words that no
        encoder could have written."""
        if n_q > self.stages:
            raise ValueError(f"{n_q} stages, the entropy model has {self.stages}")
        if len(payload) % 4:
            raise ValueError("an entropy-coded payload is a whole number of 32-bit words")
        words = np.frombuffer(payload, "<u4").astype(np.uint32)
        try:
            return self._decode(constriction.stream.queue.RangeDecoder(words), channels, n_q, frames)
        except (AssertionError, RuntimeError, ValueError) as error:  # constriction's "invalid compressed data"
            raise ValueError(f"invalid entropy-coded payload ({error})") from None

    def _decode(self, decoder, channels: int, n_q: int, frames: int) -> np.ndarray:
        codes = np.zeros((channels, n_q, frames), np.int64)
        for c in range(channels):
            context = GROUPS
            for t in range(frames):  # stage 1: each frame's context is the code just decoded
                codes[c, 0, t] = decoder.decode(self._model(0, context))
                context = int(self.groups[0][codes[c, 0, t]])
            for s in range(1, n_q):
                codes[c, s] = [
                    decoder.decode(self._model(s, context)) for context in self.contexts(codes[c], s).tolist()
                ]
        return codes

    def bits(self, codes: np.ndarray) -> np.ndarray:
        """Ideal code length in bits of codes [C, n_q, frames], per stage: [n_q] (the coder adds a few bits)."""
        channels, n_q, _ = codes.shape
        cost = np.log2(TOTAL) - np.log2(self.tables.astype(np.float64))
        return np.array(
            [sum(cost[s][self.contexts(codes[c], s), codes[c, s]].sum() for c in range(channels)) for s in range(n_q)]
        )

    def _model(self, stage: int, context: int):
        """constriction's categorical model of table `context` of `stage`: exact ratios of integers."""
        model = self._models.get((stage, context))
        if model is None:
            probabilities = self.tables[stage][context].astype(np.float64) / TOTAL
            model = self._models[stage, context] = constriction.stream.model.Categorical(probabilities, perfect=False)
        return model

    # --- fitting -----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, codes: Iterable[np.ndarray], groups: np.ndarray, select: bool = True) -> "EntropyModel":
        """Tables from training codes, each [C, n_q, frames] with n_q <= stages, for the code groups
        [stages, K] (for example from the codebook vectors; `index_groups` without them). Each context's
        counts are smoothed toward its stage's overall frequencies (BACKOFF frames' worth), those toward
        uniform (Krichevsky-Trofimov); stages never seen keep uniform tables.

        Each stage keeps whichever of three models codes held-out frames (every HOLDOUT_EVERY-th block of
        HOLDOUT_BLOCK frames) in the fewest bits: context tables, one table for the stage, or uniform (plain
        log2 K bits): a stage whose codes the tables cannot predict never costs more than bit-packing. Without
        `select`, every stage keeps its context tables, fitted on all frames (a prior for rate-aware assignment)."""
        stages, size = groups.shape
        groups = groups.astype(np.int32)
        counts = np.zeros((2, stages, GROUPS + 1, size))  # [fitting, held-out]
        model, seen = cls(frequencies(counts[0] + 1), groups), 0
        for item in codes:
            for c in range(item.shape[0]):
                frames = item.shape[2]
                held_out = (seen + np.arange(frames)) // HOLDOUT_BLOCK % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
                seen += frames
                for s in range(item.shape[1]):
                    np.add.at(counts, (held_out.astype(np.int64), s, model.contexts(item[c], s), item[c, s]), 1)
        candidates = _candidates(counts[0])
        held_out_bits = [(counts[1] * (PRECISION - np.log2(tables))).sum(axis=(1, 2)) for tables in candidates]
        choice = np.argmin(np.stack(held_out_bits), axis=0)  # [stages]; ties (no held-out frames) keep contexts
        if not select:
            choice[:] = 0
        final = np.stack(_candidates(counts.sum(axis=0)))
        return cls(final[choice, np.arange(stages)], groups)


def context_tables(counts: np.ndarray) -> np.ndarray:
    """Counts [..., contexts, K] -> integer tables [..., contexts, K]: each context's counts smoothed toward
    the frequencies of all its contexts together (BACKOFF frames' worth), those toward uniform (+0.5)."""
    overall = counts.sum(axis=-2, keepdims=True) + 0.5
    return frequencies(counts + BACKOFF * overall / overall.sum(axis=-1, keepdims=True))


def _candidates(counts: np.ndarray) -> list[np.ndarray]:
    """Counts [stages, GROUPS + 1, K] -> the tables of each stage's three models, each [stages, GROUPS + 1, K]:
    contexts, the stage's frequencies alone, uniform."""
    single = np.broadcast_to(frequencies(counts.sum(axis=1, keepdims=True) + 0.5), counts.shape)
    return [context_tables(counts), np.ascontiguousarray(single), frequencies(np.zeros(counts.shape))]
