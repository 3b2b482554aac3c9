"""Encoder-side refinement (analysis by synthesis): a latent that decodes closer to the input than the encoder's.

The encoder maps audio to a latent in one pass; on speech it never heard, that latent is not the best the decoder
can use. Refinement starts from it and takes Adam steps on the latent itself, the decoder and codebooks fixed, so
that the decode of its quantization (gradients straight through the quantizer) comes closer to the input under two
terms of the training's objective, the multi-scale mel loss and PESQ's disturbance, at weights 1 and 1. Only the
encoder's choice changes: the codes mean what they meant, the decoder and the bitstream are the same, and any ndvq
reads the file. Each step costs a decoder pass forward and backward over the window being encoded.

When the codes are entropy-coded with a rate-aware assignment, the objective adds RATE_WEIGHT x the rate in kbps,
its expectation under the assignment's posterior (ResidualQuantizer.expected_cost of the code lengths), so that the
latent does not drift towards codes that cost more bits than the quality they buy.
"""

from collections.abc import Callable

import torch
from torch import nn
import torch.nn.functional as F

from ndvq.errors import NdvqError
from ndvq.modules.distances import MEL_SCALES, DisturbanceLoss, MultiScaleMelLoss

LEARNING_RATE = 0.01  # Adam on the latent; the encoder's latents have a standard deviation of about 1
VERSION = 3  # of the refined codes, for caches of results (ndvq eval); 2: the file's assignment; 3: rate term
# Objective units per kbps. At 0.01 refinement keeps the rate of the unrefined encoder (3.99 kbps in the file at
# nominal 6 against 3.81; 5.84 without the term) and most of its gain (docs/ndvq-that-learns.md, session 27).
RATE_WEIGHT = 0.01
MIN_SAMPLES = MEL_SCALES[-1]  # the objective's longest window; shorter windows are zero-padded to it


class RefinementObjective(nn.Module):
    """Multi-scale mel loss + PESQ's disturbance (ndvq.modules.distances), at weights 1 and 1: estimate and target
    wav [B, 1, T] -> scalar. Inputs shorter than MIN_SAMPLES are zero-padded."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.mel = MultiScaleMelLoss(sample_rate)
        self.disturbance = DisturbanceLoss(sample_rate)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        short = max(0, MIN_SAMPLES - target.shape[-1])
        estimate, target = F.pad(estimate, (0, short)), F.pad(target, (0, short))
        return self.mel(estimate, target) + self.disturbance(estimate, target)


def check_refine_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise NdvqError(f"refine steps: expected a whole number of 0 or more, got {steps!r}")


def refine_latent(
    latent: torch.Tensor,
    target: torch.Tensor,
    synthesise: Callable[[torch.Tensor], torch.Tensor],
    sample_rate: int,
    steps: int,
    rate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`steps` Adam steps on latent [B, D, F] towards RefinementObjective(synthesise(latent), target), plus
    RATE_WEIGHT x rate(latent) when `rate` (kbps, differentiable in the latent) is given -> the refined latent.

    synthesise maps a latent to wav [B, 1, >= T] (decoder of the quantized latent, differentiable in the latent);
    target is wav [B, 1, T] at `sample_rate`, as the encoder saw it. Parameters of the modules involved get no
    gradient. Runs under torch.no_grad() and torch.inference_mode() too.
    """
    check_refine_steps(steps)
    length = target.shape[-1]
    # Tensors made in inference mode take no part in autograd: clone the inputs, build the objective outside it.
    with torch.inference_mode(False), torch.enable_grad():
        objective = RefinementObjective(sample_rate).to(latent.device)
        latent, target = latent.detach().clone().requires_grad_(True), target.detach().clone()
        optimiser = torch.optim.Adam([latent], lr=LEARNING_RATE)
        for _ in range(steps):
            loss = objective(synthesise(latent)[..., :length], target)
            if rate is not None:
                loss = loss + RATE_WEIGHT * rate(latent)
            (latent.grad,) = torch.autograd.grad(loss, [latent])
            optimiser.step()
    return latent.detach()
