"""Normal-distribution vector quantization (NDVQ): every code is a diagonal Gaussian.

A frame goes to the most likely Gaussian; in training the stage outputs a sample from it
(reparameterised), at inference its mean.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from ndvq.quantization.kmeans import kmeans_on_rank0
from ndvq.quantization.residual import ResidualQuantizer

LOSSES = ("paper", "nll")


class NormalCodebook(nn.Module):
    """K diagonal Gaussians N(mu_i, diag(exp(lv_i))) stored as one parameter [K, 2D]: means, then log-variances.

    Initialised once, by k-means on the first training batch (means; log-variances 0).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        loss: str = "paper",
        variance_floor: float = 1e-4,
        kmeans_iterations: int = 50,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.size, self.dim, self.loss = size, dim, loss
        self.log_variance_floor = math.log(variance_floor)
        self.kmeans_iterations = kmeans_iterations
        self.codebook = nn.Parameter(torch.cat([torch.randn(size, dim), torch.zeros(size, dim)], dim=1))
        self.register_buffer("initialised", torch.tensor(False))

    @property
    def mean(self) -> torch.Tensor:
        return self.codebook[:, : self.dim]

    @property
    def log_variance(self) -> torch.Tensor:
        log_variance = self.codebook[:, self.dim :]
        if self.loss == "nll":  # the NLL would otherwise shrink a tight cluster's variance without bound
            log_variance = log_variance.clamp(min=self.log_variance_floor)
        return log_variance

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x | mu_i, var_i) for x [N, D] and every entry i: [N, K].

        Expands sum_d (x_d - mu_id)^2 / var_id into three matrix products, so no [N, K, D] tensor.
        """
        x = x.float()
        mean, log_variance = self.mean.float(), self.log_variance.float()
        precision = torch.exp(-log_variance)
        squared = (x * x) @ precision.t() - 2 * x @ (mean * precision).t() + (mean * mean * precision).sum(1)
        return -0.5 * (squared + log_variance.sum(1) + self.dim * math.log(2 * math.pi))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> index of the most likely entry [N]."""
        return self.log_likelihood(x).argmax(dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N] -> means [N, D]."""
        return self.mean[codes]

    @torch.no_grad()
    def _initialise(self, x: torch.Tensor) -> None:
        centroids, _ = kmeans_on_rank0(x, self.size, self.kmeans_iterations)
        self.codebook[:, : self.dim] = centroids.to(self.codebook.dtype)
        self.codebook[:, self.dim :] = 0.0
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x [N, D] -> (q [N, D] without gradient, codes [N], losses)."""
        if self.training and not self.initialised:
            self._initialise(x.detach())
        codes = self.encode(x.detach())
        mean, log_variance = self.mean[codes], self.log_variance[codes]
        if self.training:
            q = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
        else:
            q = mean
        losses = {"commitment": F.mse_loss(mean.detach(), x)}
        if self.loss == "paper":
            losses["codebook"] = 0.25 * F.mse_loss(mean, x.detach())
            losses["variance"] = 1e-5 * torch.exp(log_variance).pow(2).sum()
        else:
            error = (x.detach() - mean).pow(2)
            losses["nll"] = 0.5 * (error / torch.exp(log_variance) + log_variance).mean()
        return q.detach(), codes, losses


class ResidualNDVQ(ResidualQuantizer):
    """Residual stack of NormalCodebooks, a drop-in PyTorch module.

    forward(z [B, dim, T], n_q) -> (quantized [B, dim, T], codes [B, n_q, T], losses);
    encode(z, n_q) -> codes; decode(codes) -> z.
    """

    def __init__(
        self,
        dim: int = 128,
        num_codebooks: int = 32,
        codebook_size: int = 1024,
        codebook_dim: int | None = None,
        loss: str = "paper",
        variance_floor: float = 1e-4,
        kmeans_iterations: int = 50,
    ) -> None:
        codebook_dim = codebook_dim or dim
        codebooks = [
            NormalCodebook(codebook_size, codebook_dim, loss, variance_floor, kmeans_iterations)
            for _ in range(num_codebooks)
        ]
        super().__init__(codebooks, dim, codebook_dim)
