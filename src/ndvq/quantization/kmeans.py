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


def full_precision(device: torch.device):
    """A context in which matrix products run in float32 even inside an autocast region."""
    return torch.autocast(device_type=device.type, enabled=False)


def sample_vectors(x: torch.Tensor, count: int) -> torch.Tensor:
    """`count` rows of x [N, D], without replacement when N allows it."""
    if x.shape[0] >= count:
        index = torch.randperm(x.shape[0], device=x.device)[:count]
    else:
        index = torch.randint(0, x.shape[0], (count,), device=x.device)
    return x[index]


def distinct_seeds(x: torch.Tensor, count: int) -> torch.Tensor:
    """`count` pairwise different rows of x [N, D] to start k-means from, by k-means++ (each next seed drawn
    with probability proportional to its squared distance from the seeds so far). Where x has fewer than
    `count` distinct rows, the rest are random rows moved by noise at 1e-3 of the data's spread."""
    x = x.float()
    seeds = [x[torch.randint(x.shape[0], (1,), device=x.device)]]
    distance = (x - seeds[0]).pow(2).sum(1)
    for _ in range(count - 1):
        if not distance.any():  # every distinct row is a seed already
            break
        seeds.append(x[torch.multinomial(distance, 1)])
        distance = torch.minimum(distance, (x - seeds[-1]).pow(2).sum(1))
    seeds = torch.cat(seeds)
    if seeds.shape[0] < count:
        # The data's spread, else its size, else (all rows zero: any scale is as good) 1; never subnormal.
        size = x.abs().max()
        size = size if size > 1e-30 else size.new_tensor(1.0)
        spread = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else x.abs().mean(dim=0)
        spread = torch.where(spread > 1e-6 * size, spread, size)
        extra = sample_vectors(seeds, count - seeds.shape[0])
        seeds = torch.cat([seeds, extra + 1e-3 * spread * torch.randn_like(extra)])
    return seeds


def nearest(x: torch.Tensor, centroids: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the Euclidean nearest centroid [K, D] for each row of x [N, D], computed in float32. With a
    `bias` ([N, K] or [K]), the index maximising -|x - c|^2 / 2 + bias instead (a unit-variance log-likelihood
    plus, for example, a weighted log prior)."""
    with full_precision(x.device):
        x, centroids = x.float(), centroids.float()
        distance = centroids.pow(2).sum(1) - 2 * x @ centroids.t()  # |x|^2 is the same for every centroid
        if bias is not None:
            distance = distance - 2 * bias.float()
    return distance.argmin(dim=1)


def cluster_statistics(x: torch.Tensor, assignment: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Per-cluster (counts [k], sums [k, D], sums of squares [k, D]) of x [N, D] under `assignment` [N]."""
    x = x.float()
    counts = torch.bincount(assignment, minlength=k).float()
    sums = x.new_zeros(k, x.shape[1]).index_add_(0, assignment, x)
    squares = x.new_zeros(k, x.shape[1]).index_add_(0, assignment, x * x)
    return counts, sums, squares


def kmeans(x: torch.Tensor, k: int, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x [N, D]: returns centroids [k, D] (pairwise different) and cluster sizes [k].

    An empty cluster keeps its previous centroid.
    """
    x = x.float()
    centroids = distinct_seeds(x, k)
    for _ in range(iterations):
        assignment = nearest(x, centroids)
        counts = torch.bincount(assignment, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    counts = torch.bincount(nearest(x, centroids), minlength=k).float()
    return centroids, counts


def kmeans_on_rank0(x: torch.Tensor, k: int, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means computed once on rank 0 and broadcast, so that every rank holds the same result."""
    if is_distributed() and dist.get_rank() != 0:
        centroids, counts = x.new_empty(k, x.shape[1], dtype=torch.float32), x.new_empty(k, dtype=torch.float32)
    else:
        centroids, counts = kmeans(x, k, iterations)
    return broadcast_(centroids), broadcast_(counts)
