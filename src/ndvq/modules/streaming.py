"""Carrying state across consecutive chunks, for exact streaming of causal models."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


class Streamable(nn.Module):
    """A module that, inside `streaming(...)`, treats successive calls as consecutive chunks."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming = False
        self._state = None


@contextmanager
def streaming(module: nn.Module, carry: list[Any] | None = None) -> Iterator[None]:
    """Within this context, every Streamable submodule keeps state between calls.

    With `carry` (a list, empty for a new stream) the submodules start from the states it holds and leave
    theirs in it on exit, so that several streams can share one module, each resuming where it stopped.
    """
    parts = [m for m in module.modules() if isinstance(m, Streamable)]
    states = carry if carry else [None] * len(parts)
    for part, state in zip(parts, states, strict=True):
        part._streaming, part._state = True, state
    try:
        yield
    finally:
        if carry is not None:
            carry[:] = [part._state for part in parts]
        for part in parts:
            part._streaming, part._state = False, None
