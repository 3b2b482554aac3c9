"""Encoder-side refinement (analysis by synthesis): a latent that decodes closer to the input than the encoder's.

The encoder maps audio to a latent in one pass; on speech it never heard, that latent is not the best the decoder
can use. Refinement starts from it and takes Adam steps on the latent itself, the decoder and codebooks fixed, so
that the decode of its quantization (gradients straight through the quantizer) comes closer to the input under two
terms of the training's objective, the multi-scale mel loss and PESQ's disturbance, at weights 1 and 1. Only the
encoder's choice changes: the codes mean what they meant, the decoder and the bitstream are the same, and any ndvq
reads the file. Each step costs a decoder pass forward and backward over the window being encoded.

When the codes are entropy-coded with a rate-aware assignment, the objective adds RATE_WEIGHT x the rate in kbps,
its expectation under the assignment's posterior (ResidualQuantizer.expected_cost of the code lengths), so that the
latent does not drift towards codes that cost more bits than the quality they buy: this held with small steps, not
with the present large ones (see RATE_WEIGHT).
"""

from collections.abc import Callable
import math

import torch
from torch import nn
import torch.nn.functional as F
from torch.optim.adam import adam

from ndvq.errors import NdvqError
from ndvq.modules.distances import MEL_SCALES, DisturbanceLoss, MultiScaleMelLoss

# Adam on the latent (whose standard deviation is about 1): PEAK_LEARNING_RATE decayed along a cosine over
# max(steps, HORIZON) steps, so that a short run takes the nearly constant first steps of a HORIZON-step one.
# Against the constant 0.01 used before (docs/ndvq-that-learns.md, session 32): 25 steps gain what 100 did.
PEAK_LEARNING_RATE, HORIZON = 0.1, 25
VERSION = 4  # of the refined codes, for caches of results (ndvq eval); 2: the file's assignment; 3: rate term; 4: lr
# Objective units per kbps. At 0.01, with the small steps used before session 32, refinement kept the rate of the
# unrefined encoder (3.99 kbps in the file at nominal 6 against 3.81; 5.84 without the term; session 27). With
# the present larger steps it no longer does (4.89 kbps at 4 steps, 6.36 at 100: session 32).
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
        return self.towards(target)(estimate)

    def towards(self, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The objective against a fixed target, whose log-mels are computed once: estimate [B, 1, T] -> scalar."""
        short = max(0, MIN_SAMPLES - target.shape[-1])
        target = F.pad(target, (0, short))
        target_mels = self.mel.log_mels(target)

        def objective(estimate: torch.Tensor) -> torch.Tensor:
            estimate = F.pad(estimate, (0, short))
            return self.mel.to_log_mels(estimate, target_mels) + self.disturbance(estimate, target)

        return objective


def learning_rate(step: int, steps: int) -> float:
    """Adam's learning rate at step 0 .. steps - 1 of a refinement of `steps` steps."""
    return PEAK_LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / max(steps, HORIZON)))


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
        latent = latent.detach().clone().requires_grad_(True)
        objective = RefinementObjective(sample_rate).to(latent.device).towards(target.detach().clone())
        adam = _Adam(latent)
        for step in range(steps):
            loss = objective(synthesise(latent)[..., :length])
            if rate is not None:
                loss = loss + RATE_WEIGHT * rate(latent)
            (gradient,) = torch.autograd.grad(loss, [latent])
            adam.step(gradient, learning_rate(step, steps))
    return latent.detach()


class _Adam:
    """torch.optim.Adam (betas 0.9, 0.999, eps 1e-8) on one tensor through its functional form, without
    torch.optim.Optimizer, whose first use imports torch._dynamo: 0.9 s per process, more than four steps on 10 s."""

    def __init__(self, parameter: torch.Tensor) -> None:
        self.parameter, self.count = parameter, torch.zeros(())
        self.mean, self.square = torch.zeros_like(parameter), torch.zeros_like(parameter)

    @torch.no_grad()
    def step(self, gradient: torch.Tensor, lr: float) -> None:
        adam_step = dict(amsgrad=False, beta1=0.9, beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8, maximize=False)
        adam([self.parameter], [gradient], [self.mean], [self.square], [], [self.count], foreach=False, **adam_step)
