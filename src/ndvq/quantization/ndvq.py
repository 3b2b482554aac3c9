"""Normal-distribution vector quantization (NDVQ): every code is a diagonal Gaussian.

A frame goes to the most likely Gaussian; in training the stage outputs a sample from it
(reparameterised), at inference its mean. Two ways to learn the Gaussians:

- "ema" (default): online hard EM. Each code keeps exponential moving averages of the count, sum and
  sum of squares of the frames assigned to it; its mean is the maximum-likelihood estimate from those,
  its variance that estimate shrunk toward the within-cluster variance pooled over the stage's codes
  (by default entirely: PRIOR_FRAMES), each dimension floored at the pooled variance's mean over
  dimensions. Nothing depends on the latent's absolute scale, codes left unused for about 1,000 steps
  are re-seeded on live frames, and under torch.distributed the statistics are summed over ranks.
- "gradient": the paper's recipe, means and log-variances as one trainable parameter [K, 2D] learned
  from the "paper" or "nll" loss.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from ndvq.quantization.kmeans import (
    all_reduce_sum_,
    broadcast_,
    cluster_statistics,
    full_precision,
    kmeans_on_rank0,
    nearest,
    sample_vectors,
)
from ndvq.quantization.residual import ResidualQuantizer

ESTIMATORS = ("ema", "gradient")
LOSSES = ("paper", "nll")
# Weight, in (EMA) frames, of the pooled variance in each code's variance estimate. Infinite: the codes of a
# stage share the pooled variance. With a finite prior (2 frames) a wide code captured every frame within
# 50 steps in our CPU runs (docs/ndvq-that-learns.md).
PRIOR_FRAMES = math.inf
# No variance goes below this fraction of the pooled variance's mean over dimensions: a dimension in which
# the latent hardly varies would otherwise get a precision that lets its drift decide every assignment.
VARIANCE_FLOOR_RATIO = 1.0


def expanded_log_likelihood(x: torch.Tensor, weights: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """[x^2, x] @ weights + offset for x [N, D], with (weights, offset) of NormalCodebook.likelihood_terms: [N, K]."""
    return torch.addmm(offset, torch.cat([x * x, x], dim=1), weights)


class NormalCodebook(nn.Module):
    """K diagonal Gaussians N(mu_i, diag(exp(lv_i))), read as `codebook` [K, 2D]: means, then log-variances.

    Initialised once (`initialise`, or on the first training batch) by k-means: means from the centroids,
    variances from the clusters' spread ("ema") or 1 ("gradient", as in the paper).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        estimator: str = "ema",
        loss: str = "paper",
        decay: float = 0.99,
        dead_code_threshold: float = 1e-4,
        variance_floor: float = 1e-4,
        kmeans_iterations: int = 50,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.size, self.dim, self.estimator, self.loss, self.decay = size, dim, estimator, loss, decay
        self.dead_code_threshold = dead_code_threshold
        self.log_variance_floor = math.log(variance_floor)
        self.kmeans_iterations = kmeans_iterations
        self.register_buffer("initialised", torch.tensor(False))
        codebook = torch.cat([torch.randn(size, dim), torch.zeros(size, dim)], dim=1)
        if estimator == "gradient":
            self.codebook = nn.Parameter(codebook)
        else:
            # The statistics are the state; the codebook is derived from them (and not saved).
            self.register_buffer("counts", torch.ones(size))
            self.register_buffer("sums", codebook[:, :dim].clone())
            self.register_buffer("squares", codebook[:, :dim].pow(2) + 1)
            self.register_buffer("codebook", codebook, persistent=False)
            self.register_load_state_dict_post_hook(lambda module, _: module._refresh())

    @property
    def mean(self) -> torch.Tensor:
        return self.codebook[:, : self.dim]

    @property
    def log_variance(self) -> torch.Tensor:
        log_variance = self.codebook[:, self.dim :]
        if self.estimator == "gradient" and self.loss == "nll":  # the NLL would shrink a tight cluster for ever
            log_variance = log_variance.clamp(min=self.log_variance_floor)
        return log_variance

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x | mu_i, var_i) for x [N, D] and every entry i: [N, K], in float32 even under autocast.

        Expands -1/2 sum_d (x_d - mu_id)^2 / var_id into one matrix product, [x^2, x] [N, 2D] by
        [-1/2 / var; mu / var] [2D, K], plus a term per entry: no [N, K, D] tensor.
        """
        with full_precision(x.device):
            x = x.float()
            return expanded_log_likelihood(x, *self.likelihood_terms())

    def likelihood_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, offset) of log_likelihood(x) = [x^2, x] @ weights + offset: [-1/2 / var; mu / var] [2D, K] and
        -1/2 (sum_d mu^2 / var + log var + log 2 pi) [K]. Kept between calls while the codebook is unchanged and no
        gradient is wanted (inference, streaming one frame at a time)."""
        key = (self.codebook.data_ptr(), self.codebook._version)
        if self.training or torch.is_grad_enabled() or getattr(self, "_terms_key", None) != key:
            mean, log_variance = self.mean.float(), self.log_variance.float()
            precision = torch.exp(-log_variance)
            constant = (mean * mean * precision).sum(1) + log_variance.sum(1) + self.dim * math.log(2 * math.pi)
            terms = (torch.cat([-0.5 * precision, mean * precision], dim=1).t(), -0.5 * constant)
            if self.training or torch.is_grad_enabled():
                return terms
            self._terms, self._terms_key = tuple(t.contiguous() for t in terms), key
        return self._terms

    @torch.no_grad()
    def encode(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, D] -> index of the most likely entry [N]; with `bias` [N, K] or [K] (for example a weighted log
        prior, which makes this a maximum a posteriori choice), of the highest log-likelihood + bias."""
        scores = self.log_likelihood(x)
        return (scores if bias is None else scores + bias.float()).argmax(dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N] -> means [N, D]."""
        return self.mean[codes]

    # --- learning ------------------------------------------------------------------------------------
    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """k-means on frames x [N, D] (on rank 0, broadcast); best with N >= 10 K."""
        x = x.float()
        centroids, _ = kmeans_on_rank0(x, self.size, self.kmeans_iterations)
        if self.estimator == "gradient":
            self.codebook[:, : self.dim] = centroids.to(self.codebook.dtype)
            self.codebook[:, self.dim :] = 0.0
        else:
            # The clusters' statistics, as the RVQ baseline starts from its k-means counts.
            statistics = cluster_statistics(x, nearest(x, centroids), self.size)
            for buffer, value in zip((self.counts, self.sums, self.squares), statistics, strict=True):
                buffer.copy_(broadcast_(value))
            self._reseed(self.counts == 0, centroids)  # centroids k-means left without frames
            self._refresh()
        self.initialised.fill_(True)

    def _pooled_variance(self) -> torch.Tensor:
        """The within-cluster variance pooled over codes [D], from the statistics."""
        counts = self.counts.clamp(min=torch.finfo(self.counts.dtype).tiny)[:, None]
        within = (self.squares - self.sums.pow(2) / counts).clamp(min=0).sum(0) / counts.sum()
        # At least 1e-8 of the frames' mean square (codes may sit exactly on their frames), never subnormal.
        floor = (self.squares.sum() / counts.sum() / self.dim * 1e-8).clamp(min=1e-30)
        return within.clamp(min=floor)

    @torch.no_grad()
    def _refresh(self) -> None:
        """Means and log-variances from the statistics: ML estimates, variance shrunk toward the pooled one."""
        counts = self.counts.clamp(min=torch.finfo(self.counts.dtype).tiny)[:, None]
        mean = self.sums / counts
        variance = (self.squares / counts - mean.pow(2)).clamp(min=0)
        pooled = self._pooled_variance()
        own = counts / (counts + PRIOR_FRAMES)  # the weight of the code's own estimate
        variance = own * variance + (1 - own) * pooled
        variance = variance.clamp(min=VARIANCE_FLOOR_RATIO * pooled.mean().item())
        self.codebook.copy_(torch.cat([mean, variance.log()], dim=1))

    @torch.no_grad()
    def _update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step of the statistics with the frames x [N, D] assigned to codes [N], summed over ranks."""
        for buffer, value in zip(
            (self.counts, self.sums, self.squares), cluster_statistics(x, codes, self.size), strict=True
        ):
            buffer.lerp_(all_reduce_sum_(value), 1 - self.decay)
        # Dead codes: used fewer than `dead_code_threshold` frames per step on (EMA) average, re-seeded on live
        # frames (rank 0's, so that every rank agrees). The default 1e-4 re-seeds a code after roughly 1,000
        # steps without use; it is what the runs in docs/ndvq-that-learns.md used (EnCodec's 2 is untested).
        dead = self.counts < self.dead_code_threshold
        if dead.any():
            self._reseed(dead, broadcast_(sample_vectors(x.float(), self.size)))
        self._refresh()

    @torch.no_grad()
    def _reseed(self, codes: torch.Tensor, vectors: torch.Tensor) -> None:
        """Restart the statistics of `codes` (mask [K]) at `vectors` [K, D] (rows where the mask is set) with
        the pooled variance, as if seen `dead_code_threshold` times."""
        if not codes.any():
            return
        pooled, weight = self._pooled_variance(), self.dead_code_threshold
        self.counts[codes] = weight
        self.sums[codes] = vectors[codes] * weight
        self.squares[codes] = (vectors[codes].pow(2) + pooled) * weight

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x [N, D] -> (q [N, D] without gradient, codes [N], losses)."""
        if self.training and not self.initialised:
            self.initialise(x.detach())
        codes = self.encode(x.detach())
        mean, log_variance = self.mean[codes], self.log_variance[codes]
        q = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean) if self.training else mean
        losses = {"commitment": F.mse_loss(mean.detach(), x)}
        if self.estimator == "ema":
            if self.training:
                self._update(x.detach(), codes)
        elif self.loss == "paper":
            losses["codebook"] = 0.25 * F.mse_loss(mean, x.detach())
            losses["variance"] = 1e-5 * torch.exp(log_variance).pow(2).sum()
        else:
            error = (x.detach() - mean).pow(2)
            losses["nll"] = 0.5 * (error / torch.exp(log_variance) + log_variance).mean()
        return q.detach(), codes, losses


class ResidualNDVQ(ResidualQuantizer):
    """Residual stack of NormalCodebooks, a drop-in PyTorch module.

    forward(z [B, dim, T], n_q) -> (quantized [B, dim, T], codes [B, n_q, T], losses);
    encode(z, n_q) -> codes; decode(codes) -> z. In training each stage quantizes what is left after the
    previous stages' samples (`residual="sample"`, the paper) or their means (`residual="mean"`).
    """

    def __init__(
        self,
        dim: int = 128,
        num_codebooks: int = 32,
        codebook_size: int = 1024,
        codebook_dim: int | None = None,
        estimator: str = "ema",
        loss: str = "paper",
        residual: str = "sample",
        variance_floor: float = 1e-4,
        kmeans_iterations: int = 50,
    ) -> None:
        codebook_dim = codebook_dim or dim
        codebooks = [
            NormalCodebook(
                codebook_size,
                codebook_dim,
                estimator=estimator,
                loss=loss,
                variance_floor=variance_floor,
                kmeans_iterations=kmeans_iterations,
            )
            for _ in range(num_codebooks)
        ]
        super().__init__(codebooks, dim, codebook_dim, residual)
