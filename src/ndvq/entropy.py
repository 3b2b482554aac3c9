"""Entropy coding of codes [C, n_q, frames]: integer probability tables and constriction's range coder.

The model, per stage s, with tables fitted on training codes (`fit`):
  - frame 0: the code, from the frequency table `symbols[s]`;
  - frame t > 0: a flag, "the same code as at frame t - 1", with probability `repeat[s, r] / TOTAL`,
    where r is the previous stage's flag at frame t (r = 0 for the first stage); when the flag is 0,
    the code, from `symbols[s]`.
Each channel's stages are coded in order, each over all its frames at once, so decoding is vectorised:
a stage's flags depend only on the previous stage's flags.

Every probability is an integer out of TOTAL = 2**PRECISION. constriction receives them as float64
ratios, which are exact, so the same integers give the same bits on every platform and device: no
floating-point result of the model (softmax, logits) ever decides a symbol.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import constriction
import numpy as np

PRECISION = 16
TOTAL = 1 << PRECISION
# A flag's "changed" probability is kept at least 1/64, so a flag costs at least log2(64/63) bits and a
# payload of P bytes holds at most about 352 P flags: the bound that keeps hostile files small in memory.
MIN_CHANGE = TOTAL // 64
MAX_SYMBOLS_PER_BYTE = 400
FLAG_MODEL = constriction.stream.model.Categorical(perfect=False)  # probabilities given per flag


def frequencies(counts: np.ndarray) -> np.ndarray:
    """Non-negative counts [..., K] -> integer frequencies [..., K], each at least 1, summing to TOTAL along
    the last axis (largest remainders get the rounding)."""
    counts = np.asarray(counts, np.float64)
    size = counts.shape[-1]
    if size > TOTAL:
        raise ValueError(f"{size} symbols do not fit a table of {TOTAL}")
    spare = TOTAL - size  # each symbol gets 1, the rest shares `spare` in proportion to the counts
    total = counts.sum(axis=-1, keepdims=True)
    share = np.where(total > 0, counts / np.where(total > 0, total, 1), 1 / size) * spare
    table = np.floor(share).astype(np.int64)
    missing = spare - table.sum(axis=-1)
    order = np.argsort(-(share - table), axis=-1, kind="stable")
    ranks = np.argsort(order, axis=-1, kind="stable")
    table += ranks < missing[..., None]
    return (table + 1).astype(np.int32)


@dataclass(frozen=True)
class EntropyModel:
    symbols: np.ndarray  # int32 [n_q, K], each row sums to TOTAL
    repeat: np.ndarray  # int32 [n_q, 2]: TOTAL x P(same code as the previous frame | previous stage's flag)

    def __post_init__(self) -> None:
        symbols, repeat = self.symbols, self.repeat
        if symbols.dtype != np.int32 or repeat.dtype != np.int32:
            raise ValueError("entropy tables must be int32 (integer probabilities)")
        if symbols.ndim != 2 or repeat.shape != (symbols.shape[0], 2):
            raise ValueError(f"entropy tables of shapes {symbols.shape} and {repeat.shape} do not match")
        if (symbols < 1).any() or (symbols.sum(axis=1, dtype=np.int64) != TOTAL).any():
            raise ValueError(f"every symbol table must be positive and sum to {TOTAL}")
        if (repeat < 1).any() or (repeat > TOTAL - MIN_CHANGE).any():
            raise ValueError(f"repeat probabilities must lie in [1, {TOTAL - MIN_CHANGE}] / {TOTAL}")

    @property
    def stages(self) -> int:
        return self.symbols.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.symbols.shape[1]

    # --- coding ------------------------------------------------------------------------------------
    def encode(self, codes: np.ndarray) -> bytes:
        """codes [C, n_q, frames] (n_q <= stages) -> the range coder's words, little-endian bytes."""
        channels, n_q, frames = codes.shape
        if n_q > self.stages or (codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size)):
            raise ValueError(f"codes [.., {n_q}, ..] outside the entropy model's {self.stages} x {self.codebook_size}")
        encoder = constriction.stream.queue.RangeEncoder()
        for c in range(channels):
            previous = np.zeros(max(0, frames - 1), np.int64)  # the previous stage's flags
            for s in range(n_q):
                stage = codes[c, s].astype(np.int32)
                symbols = self._symbol_model(s)
                encoder.encode(stage[:1], symbols)
                flags = (stage[1:] == stage[:-1]).astype(np.int32)
                encoder.encode(flags, FLAG_MODEL, self._flag_table(s, previous))
                encoder.encode(stage[1:][flags == 0], symbols)
                previous = flags
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
        codes = np.empty((channels, n_q, frames), np.int64)
        for c in range(channels):
            previous = np.zeros(max(0, frames - 1), np.int64)
            for s in range(n_q):
                symbols = self._symbol_model(s)
                first = decoder.decode(symbols, 1)
                flags = decoder.decode(FLAG_MODEL, self._flag_table(s, previous))
                changed = decoder.decode(symbols, int((flags == 0).sum()))
                codes[c, s] = _expand(int(first[0]), flags, changed)
                previous = flags.astype(np.int64)
        return codes

    def bits(self, codes: np.ndarray) -> np.ndarray:
        """Ideal code length in bits of codes [C, n_q, frames], per stage: [n_q] (the coder adds a few bits)."""
        channels, n_q, frames = codes.shape
        total = np.zeros(n_q)
        log_symbols = np.log2(TOTAL) - np.log2(self.symbols.astype(np.float64))
        for c in range(channels):
            previous = np.zeros(max(0, frames - 1), np.int64)
            for s in range(n_q):
                stage = codes[c, s]
                flags = (stage[1:] == stage[:-1]).astype(np.int64)
                repeat = self.repeat[s][previous].astype(np.float64) / TOTAL
                flag_bits = -np.log2(np.where(flags == 1, repeat, 1 - repeat)).sum()
                coded = np.concatenate([stage[:1], stage[1:][flags == 0]])
                total[s] += log_symbols[s][coded].sum() + flag_bits
                previous = flags
        return total

    def _symbol_model(self, stage: int):
        return constriction.stream.model.Categorical(self.symbols[stage].astype(np.float64) / TOTAL, perfect=False)

    def _flag_table(self, stage: int, previous: np.ndarray) -> np.ndarray:
        """[frames - 1, 2] probabilities (changed, repeated) of each flag, exact ratios of integers."""
        repeat = self.repeat[stage][previous].astype(np.float64)
        return np.stack([TOTAL - repeat, repeat], axis=1) / TOTAL

    # --- fitting -----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, codes: Iterable[np.ndarray], stages: int, codebook_size: int) -> "EntropyModel":
        """Tables from training codes, each [C, n_q, frames] with n_q <= stages (stages never seen keep
        uniform tables). Counts start at 1/2 (Krichevsky-Trofimov) so unseen codes stay codable."""
        symbol_counts = np.full((stages, codebook_size), 0.5)
        flag_counts = np.full((stages, 2, 2), 0.5)  # [stage, previous flag, flag]
        for item in codes:
            channels, n_q, frames = item.shape
            for c in range(channels):
                previous = np.zeros(max(0, frames - 1), np.int64)
                for s in range(n_q):
                    stage = item[c, s]
                    flags = (stage[1:] == stage[:-1]).astype(np.int64)
                    np.add.at(flag_counts[s], (previous, flags), 1)
                    coded = np.concatenate([stage[:1], stage[1:][flags == 0]])
                    symbol_counts[s] += np.bincount(coded, minlength=codebook_size)
                    previous = flags
        probability = flag_counts[..., 1] / flag_counts.sum(axis=-1)
        repeat = np.clip(np.round(probability * TOTAL), 1, TOTAL - MIN_CHANGE).astype(np.int32)
        return cls(frequencies(symbol_counts), repeat)


def _expand(first: int, flags: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """A stage's codes [frames] from its first code, its repeat flags [frames - 1] and the codes of the
    frames that changed: each repeated frame takes the code of the last frame that changed."""
    starts = np.concatenate([[True], flags == 0])
    values = np.zeros(len(starts), np.int64)
    values[starts] = np.concatenate([[first], changed])
    return values[np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))]
