"""Codebook usage: how often each code is chosen, and the information that carries."""

import torch


def codebook_usage(counts: torch.Tensor) -> tuple[list[float], list[int]]:
    """counts [stages, K] of code occurrences -> per stage (entropy in bits, number of unused entries).

    Stages with no occurrences (not used in the period) are left out, so the lists may be shorter.
    """
    entropies, unused = [], []
    for row in counts.double():
        total = row.sum()
        if total == 0:
            continue
        p = row[row > 0] / total
        entropies.append(float(-(p * torch.log2(p)).sum()))
        unused.append(int((row == 0).sum()))
    return entropies, unused


def code_counts(codes: torch.Tensor, size: int) -> torch.Tensor:
    """codes [B, n_q, T] -> occurrences of each code per stage [n_q, size]."""
    flat = codes.detach().transpose(0, 1).reshape(codes.shape[1], -1).cpu()
    return torch.zeros(codes.shape[1], size, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
