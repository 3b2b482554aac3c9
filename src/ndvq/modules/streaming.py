"""Carrying state across consecutive chunks, for exact streaming of causal models."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class Streamable(nn.Module):
    """A module that, inside `streaming(...)`, treats successive calls as consecutive chunks."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming = False
        self._state = None


@contextmanager
def streaming(module: nn.Module) -> Iterator[None]:
    """Within this context, every Streamable submodule keeps state between calls."""
    parts = [m for m in module.modules() if isinstance(m, Streamable)]
    for part in parts:
        part._streaming, part._state = True, None
    try:
        yield
    finally:
        for part in parts:
            part._streaming, part._state = False, None
