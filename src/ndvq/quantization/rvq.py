"""The baseline: EnCodec's residual VQ with Euclidean codebooks updated by exponential moving averages."""

import torch
from torch import nn
import torch.nn.functional as F

from ndvq.quantization.kmeans import all_reduce_sum_, broadcast_, kmeans_on_rank0, nearest, sample_vectors
from ndvq.quantization.residual import ResidualQuantizer


class EuclideanCodebook(nn.Module):
    """K vectors, nearest-neighbour assignment, EMA updates with Laplace smoothing, dead-code replacement.

    The codebook has no gradient: it lives in buffers updated in train mode. Under torch.distributed
    the statistics are summed over ranks and replacements come from rank 0, so codebooks stay identical.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_threshold: float = 2.0,
        kmeans_iterations: int = 50,
    ) -> None:
        super().__init__()
        self.size, self.dim = size, dim
        self.decay, self.epsilon = decay, epsilon
        self.dead_code_threshold = dead_code_threshold
        self.kmeans_iterations = kmeans_iterations
        self.register_buffer("initialised", torch.tensor(False))
        self.register_buffer("embedding", torch.randn(size, dim))
        self.register_buffer("embedding_sum", self.embedding.clone())
        self.register_buffer("cluster_size", torch.zeros(size))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, D] -> index of the nearest entry [N]; with `bias` [N, K] or [K], of the highest
        -|x - e|^2 / 2 + bias."""
        return nearest(x.float(), self.embedding, bias)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N] -> vectors [N, D]."""
        return self.embedding[codes]

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """k-means on frames x [N, D] (on rank 0, broadcast); best with N >= 10 K."""
        centroids, counts = kmeans_on_rank0(x, self.size, self.kmeans_iterations)
        self.embedding.copy_(centroids)
        self.embedding_sum.copy_(centroids * counts[:, None])
        self.cluster_size.copy_(counts)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        counts = all_reduce_sum_(torch.bincount(codes, minlength=self.size).float())
        sums = all_reduce_sum_(torch.zeros_like(self.embedding).index_add_(0, codes, x.float()))
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embedding_sum.lerp_(sums, 1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.size * self.epsilon) * total
        self.embedding.copy_(self.embedding_sum / smoothed[:, None])
        self._replace_dead_codes(x)

    @torch.no_grad()
    def _replace_dead_codes(self, x: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold
        if not dead.any():
            return
        fresh = broadcast_(sample_vectors(x.float(), self.size))[dead]
        # A revived code restarts its statistics as if it had just been seen `threshold` times.
        self.embedding[dead] = fresh
        self.embedding_sum[dead] = fresh * self.dead_code_threshold
        self.cluster_size[dead] = self.dead_code_threshold

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x [N, D] -> (q [N, D] without gradient, codes [N], losses)."""
        if self.training and not self.initialised:
            self.initialise(x.detach())
        codes = self.encode(x.detach())
        q = self.decode(codes)
        if self.training:
            self._update(x.detach(), codes)
        return q.detach(), codes, {"commitment": F.mse_loss(q.detach(), x)}


class ResidualVQ(ResidualQuantizer):
    """Residual stack of EuclideanCodebooks (EnCodec's RVQ), with the same contract as ResidualNDVQ."""

    def __init__(
        self,
        dim: int = 128,
        num_codebooks: int = 32,
        codebook_size: int = 1024,
        codebook_dim: int | None = None,
        decay: float = 0.99,
        dead_code_threshold: float = 2.0,
        kmeans_iterations: int = 50,
    ) -> None:
        codebook_dim = codebook_dim or dim
        codebooks = [
            EuclideanCodebook(codebook_size, codebook_dim, decay, 1e-5, dead_code_threshold, kmeans_iterations)
            for _ in range(num_codebooks)
        ]
        super().__init__(codebooks, dim, codebook_dim, residual="mean")
