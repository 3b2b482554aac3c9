"""The residual stack shared by every quantizer, and the contract they all follow."""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

# What the next stage quantizes, and what the decoder gets, in training (q a sample around the code's mean m):
#   "sample": the residual after q; the decoder gets the sum of the samples (the paper);
#   "mean": the residual after m; the decoder gets the sum of the samples (every stage's noise adds up);
#   "mean-last": the residual after m; the decoder gets the sum of the means plus the last stage's noise
#   only, the uncertainty that remains after every active stage.
RESIDUALS = ("sample", "mean", "mean-last")

# An additive term on a stage's assignment scores: (stage index, the previous stage's codes [N] or None) ->
# [N, K] or [K].
StageBias = Callable[[int, torch.Tensor | None], torch.Tensor]


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # [B, D, T], straight-through: its gradient reaches z unchanged
    codes: torch.Tensor  # [B, n_q, T], int64
    losses: dict[str, torch.Tensor]  # scalars, each the mean over active stages; their sum is the loss


class ResidualQuantizer(nn.Module):
    """Quantizes z, then what is left of it, stage after stage.

    A stage (codebook) maps x [N, d] to (q [N, d] detached, codes [N], losses) in `forward`, and has
    `encode(x, bias=None) -> codes`, `decode(codes) -> q` and `initialise(x)`. In training, q may be a sample around
    the code (NDVQ): `residual` (see RESIDUALS) says whether the next stage gets what is left after the
    sample or after the code's mean, and which noise the decoder gets. Where the code dimension d differs
    from the latent dimension, a Linear projection in and out surrounds each stage.
    """

    def __init__(self, codebooks: list[nn.Module], dim: int, codebook_dim: int, residual: str = "sample") -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        self.codebooks = nn.ModuleList(codebooks)
        self.residual = residual

        def projection(a: int, b: int) -> nn.Module:
            return nn.Linear(a, b) if a != b else nn.Identity()

        self.project_in = nn.ModuleList(projection(dim, codebook_dim) for _ in codebooks)
        self.project_out = nn.ModuleList(projection(codebook_dim, dim) for _ in codebooks)
        self.dim = dim

    @property
    def num_codebooks(self) -> int:
        return len(self.codebooks)

    @property
    def codebook_size(self) -> int:
        return self.codebooks[0].size

    def _stages(self, n_q: int | None) -> int:
        n_q = self.num_codebooks if n_q is None else n_q
        if not 1 <= n_q <= self.num_codebooks:
            raise ValueError(f"n_q must be in 1..{self.num_codebooks}, got {n_q}")
        return n_q

    def forward(self, z: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:
        """z [B, D, T] -> quantized [B, D, T], codes [B, n_q, T], losses. Trains codebooks in train mode."""
        n_q = self._stages(n_q)
        batch, dim, frames = z.shape
        x = z.transpose(1, 2).reshape(-1, dim)
        residual, total = x, torch.zeros_like(x)
        codes, losses = [], {}
        for i in range(n_q):
            q, index, stage_losses = self.codebooks[i](self.project_in[i](residual))
            q = self.project_out[i](q)
            kept = q if self.residual == "sample" else self.project_out[i](self.codebooks[i].decode(index))
            residual = residual - kept.detach()
            total = total + (kept.detach() if self.residual == "mean-last" else q)
            noise = q - kept
            codes.append(index)
            for name, value in stage_losses.items():
                losses[name] = losses.get(name, 0.0) + value / n_q
        if self.residual == "mean-last":
            total = total + noise  # the last active stage's sampling noise (zero in eval mode)
        # Straight-through once on the sum: the encoder receives the decoder's gradient unchanged.
        quantized = total + x - x.detach()
        quantized = quantized.reshape(batch, frames, dim).transpose(1, 2)
        return QuantizerOutput(quantized, torch.stack(codes, 1).reshape(batch, frames, n_q).transpose(1, 2), losses)

    @torch.no_grad()
    def initialise(self, z: torch.Tensor) -> None:
        """k-means-initialise every stage, each on what the previous stages leave of z [B, D, T] (or frames
        [N, D]). Gather at least 10 x codebook_size frames, for example from several batches."""
        residual = z.transpose(1, 2).reshape(-1, self.dim) if z.dim() == 3 else z
        for i, codebook in enumerate(self.codebooks):
            x = self.project_in[i](residual)
            codebook.initialise(x)
            residual = residual - self.project_out[i](codebook.decode(codebook.encode(x)))

    @property
    def initialised(self) -> bool:
        return all(bool(codebook.initialised) for codebook in self.codebooks)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int | None = None, bias: StageBias | None = None) -> torch.Tensor:
        """z [B, D, T] -> codes [B, n_q, T] (int64), with the inference-time assignment.

        `bias(stage, previous)`, given the stage's index and the codes [B * T] the stage before chose (None for
        the first), returns a term [B * T, K] or [K] added to the stage's assignment scores (log-likelihoods;
        -|x - e|^2 / 2 for Euclidean codebooks): a weighted log prior makes the assignment rate-aware."""
        n_q = self._stages(n_q)
        batch, dim, frames = z.shape
        residual = z.transpose(1, 2).reshape(-1, dim)
        codes = []
        for i in range(n_q):
            extra = None if bias is None else bias(i, codes[-1] if codes else None)
            index = self.codebooks[i].encode(self.project_in[i](residual), extra)
            residual = residual - self.project_out[i](self.codebooks[i].decode(index))
            codes.append(index)
        return torch.stack(codes, 1).reshape(batch, frames, n_q).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> z [B, D, T], the sum of the first K stages' code vectors."""
        batch, n_q, frames = codes.shape
        self._stages(n_q)
        flat = codes.transpose(1, 2).reshape(-1, n_q)
        total = sum(self.project_out[i](self.codebooks[i].decode(flat[:, i])) for i in range(n_q))
        return total.reshape(batch, frames, self.dim).transpose(1, 2)
