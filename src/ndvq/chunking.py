"""Running a length-preserving-ratio model over long signals in bounded memory."""

from collections.abc import Callable

import torch
from tqdm import tqdm


def map_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    chunk: int,
    context: int,
    ratio: tuple[int, int],
    progress: bool = False,
) -> torch.Tensor:
    """Apply fn to x [..., T] in windows of `chunk` steps, each with up to `context` steps on either side.

    fn maps n input steps to n * ratio[0] / ratio[1] output steps; only the output of each window's
    centre is kept. With context 0 and a stateful (streaming) fn, this is exact streaming.
    `chunk`, `context` and T must be multiples of ratio[1].
    """
    total = x.shape[-1]
    num, den = ratio
    if total <= chunk:
        return fn(x)
    outputs = []
    for start in tqdm(range(0, total, chunk), disable=not progress, unit="chunk", leave=False):
        end = min(start + chunk, total)
        lo, hi = max(0, start - context), min(total, end + context)
        y = fn(x[..., lo:hi])
        first = (start - lo) * num // den
        outputs.append(y[..., first : first + (end - start) * num // den])
    return torch.cat(outputs, dim=-1)
