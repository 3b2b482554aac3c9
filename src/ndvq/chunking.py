"""Running a model over a long signal, block by block, in memory that does not grow with its length."""

from collections.abc import Callable, Iterable, Iterator

import torch


def map_windows(
    fn: Callable[[torch.Tensor], torch.Tensor],
    blocks: Iterable[torch.Tensor],
    chunk: int,
    context: int,
    ratio: tuple[int, int],
) -> Iterator[torch.Tensor]:
    """Apply fn to the concatenation of `blocks` [..., n] in windows of `chunk` steps, each with up to
    `context` steps of the signal on either side, and yield the output of each window's centre.

    fn maps n input steps to n * ratio[0] / ratio[1] output steps. The last window's centre runs to the
    end: the signal after the previous centre, shorter than chunk + context (a window that would stop
    within `context` of the end already sees it, so a further window would only recompute its context).
    At most chunk + 2 * context steps plus one block are held at a time. The windows depend only on the
    whole signal, not on how it is cut into blocks. With context 0 and a stateful (streaming) fn this
    is exact streaming.
    `chunk`, `context` and the signal's length must be multiples of ratio[1].
    """
    num, den = ratio
    buffer: torch.Tensor | None = None
    offset = start = 0  # signal positions of buffer[..., 0] and of the next window's centre
    iterator = iter(blocks)
    while True:
        block = next(iterator, None)
        if block is not None:
            buffer = block if buffer is None else torch.cat([buffer, block], dim=-1)
        if buffer is None:
            return
        available = offset + buffer.shape[-1]
        while start < available and (block is None or start + chunk + context <= available):
            # Once the end is known (block is None), less than chunk + context is left: one window takes it.
            end = available if block is None else start + chunk
            lo, hi = max(0, start - context), min(available, end + context)
            y = fn(buffer[..., lo - offset : hi - offset])
            first = (start - lo) * num // den
            yield y[..., first : first + (end - start) * num // den]
            start = end
            drop = max(0, start - context) - offset
            buffer, offset = buffer[..., drop:], offset + drop
        if block is None:
            return


def pad_stream(blocks: Iterable[torch.Tensor], multiple: int) -> Iterator[torch.Tensor]:
    """The blocks, then zeros so that their total length is a multiple of `multiple`."""
    total, last = 0, None
    for block in blocks:
        total, last = total + block.shape[-1], block
        yield block
    if last is not None and total % multiple:
        yield last.new_zeros(*last.shape[:-1], -total % multiple)


def reblock(blocks: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """The concatenation of `blocks` [..., n] cut again into blocks of exactly `size` steps (the last may be
    shorter), so that what follows depends only on the signal, not on how it was cut."""
    pending: list[torch.Tensor] = []
    held = 0
    for block in blocks:
        while block.shape[-1]:
            take = min(size - held, block.shape[-1])
            pending.append(block[..., :take])
            held, block = held + take, block[..., take:]
            if held == size:
                yield pending[0] if len(pending) == 1 else torch.cat(pending, dim=-1)
                pending, held = [], 0
    if pending:
        yield torch.cat(pending, dim=-1)
