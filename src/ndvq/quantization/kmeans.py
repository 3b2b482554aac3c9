"""Euclidean k-means for codebook initialisation, and the torch.distributed helpers it needs."""

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite `tensor` in place with rank 0's value (no-op outside torch.distributed)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` in place over all ranks (no-op outside torch.distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sample_vectors(x: torch.Tensor, count: int) -> torch.Tensor:
    """`count` rows of x [N, D], without replacement when N allows it."""
    if x.shape[0] >= count:
        index = torch.randperm(x.shape[0], device=x.device)[:count]
    else:
        index = torch.randint(0, x.shape[0], (count,), device=x.device)
    return x[index]


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the Euclidean nearest centroid [K, D] for each row of x [N, D]."""
    distance = centroids.pow(2).sum(1) - 2 * x @ centroids.t()  # |x|^2 is the same for every centroid
    return distance.argmin(dim=1)


def kmeans(x: torch.Tensor, k: int, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x [N, D]: returns centroids [k, D] and cluster sizes [k].

    An empty cluster keeps its previous centroid.
    """
    x = x.float()
    centroids = sample_vectors(x, k)
    for _ in range(iterations):
        assignment = nearest(x, centroids)
        counts = torch.bincount(assignment, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    counts = torch.bincount(nearest(x, centroids), minlength=k).to(x.dtype)
    return centroids, counts


def kmeans_on_rank0(x: torch.Tensor, k: int, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means computed once on rank 0 and broadcast, so that every rank holds the same result."""
    if is_distributed() and dist.get_rank() != 0:
        centroids, counts = x.new_empty(k, x.shape[1], dtype=torch.float32), x.new_empty(k, dtype=torch.float32)
    else:
        centroids, counts = kmeans(x, k, iterations)
    return broadcast_(centroids), broadcast_(counts)
