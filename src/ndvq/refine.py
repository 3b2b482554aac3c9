"""Encoder-side refinement (analysis by synthesis): a latent that decodes closer to the input than the encoder's.

The encoder maps audio to a latent in one pass; on speech it never heard, that latent is not the best the decoder
can use. Refinement starts from it and takes gradient steps on the latent itself, the decoder and codebooks fixed, so
that the decode of its quantization (gradients straight through the quantizer) comes closer to the input under two
terms of the training's objective, the multi-scale mel loss (at its 5 longest windows) and PESQ's disturbance, at
weights 1 and 1. Only the encoder's choice changes: the codes mean what they meant, the decoder and the bitstream
are the same, and any ndvq reads the file. Each step costs a decoder pass forward and backward over the window
being encoded.

Entropy-coded, refined codes cost more bits than the encoder's: the latent moves away from the codes the rate-aware
assignment prefers (at nominal 6 kbps, 4.22 kbps in the file after 4 steps against 3.91; model card). A rate term
in the objective, the expected code length under the assignment's posterior, held the size with the small steps
of before session 32 and no longer did after; it was removed in session 33.
"""

from collections.abc import Callable
import math

import torch
from torch import nn
import torch.nn.functional as F

from ndvq.errors import NdvqError
from ndvq.modules.distances import MEL_SCALES, DisturbanceLoss, MultiScaleMelLoss

# Each step moves the latent (whose standard deviation is about 1) by the learning rate in RMS along the negative
# gradient (`descend`): PEAK_LEARNING_RATE decayed along a cosine over max(steps, HORIZON) steps, so that a short run
# takes the nearly constant first steps of a HORIZON-step one (docs/ndvq-that-learns.md, sessions 32 and 33).
PEAK_LEARNING_RATE, HORIZON = 0.1, 25
# Of the refined codes, for caches of results (ndvq eval); 4: lr; 5: normalised steps, no rate term; 6: the PESQ
# loss's gradient leaves the level alone (modules.distances.DisturbanceLoss); 7: REFINE_MEL_SCALES
VERSION = 7
# The mel loss's windows here: without n_fft 32 and 64, which took over a third of the mel loss's time, the refined
# codes score as well (whole test split at 6 kbps: PESQ-wb +0.002 +- 0.008, STOI +0.001; docs/ndvq-that-learns.md,
# session 43). Weights of the disturbance against the mel loss of 0, 0.5, 2 and 4 (tried there) score no better than 1.
REFINE_MEL_SCALES = MEL_SCALES[2:]
MIN_SAMPLES = MEL_SCALES[-1]  # the objective's longest window; shorter windows are zero-padded to it
# Steps of the file encoder (ndvq.compress, `ndvq compress`) unless told: about 4x the one-pass encoder's time, 10x
# to 13x real time with decoding at 2 threads, +0.17 PESQ-wb at 6 kbps on held-out voices; 4 steps add 0.01 to 0.03 at
# 10 to 11.5x, at the speed target's edge (model card, Refinement). Codec.encode, streaming and tokenizing stay one-pass
# unless told.
DEFAULT_STEPS = 3


class RefinementObjective(nn.Module):
    """Multi-scale mel loss at REFINE_MEL_SCALES + PESQ's disturbance (ndvq.modules.distances), at weights 1 and 1:
    estimate and target wav [B, 1, T] -> scalar. Inputs shorter than MIN_SAMPLES are zero-padded."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.mel = MultiScaleMelLoss(sample_rate, scales=REFINE_MEL_SCALES)
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
    """The step length (RMS, see `descend`) at step 0 .. steps - 1 of a refinement of `steps` steps."""
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
) -> torch.Tensor:
    """`steps` steps of normalised gradient descent (`descend`) on latent [B, D, F] towards
    RefinementObjective(synthesise(latent), target) -> the refined latent.

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
        for step in range(steps):
            loss = objective(synthesise(latent)[..., :length])
            (gradient,) = torch.autograd.grad(loss, [latent])
            descend(latent, gradient, learning_rate(step, steps))
    return latent.detach()


@torch.no_grad()
def descend(latent: torch.Tensor, gradient: torch.Tensor, lr: float) -> None:
    """One step of normalised gradient descent, in place: each item of latent [B, D, F] moves along its -gradient
    by `lr` in RMS over its elements (an item whose gradient is 0 stays). Unlike Adam, whose first steps move
    every element by about lr, it puts its length where the gradient is (benchmarks/refinement_rules.py)."""
    rms = gradient.square().mean(dim=(1, 2), keepdim=True).sqrt()
    latent -= lr * gradient / rms.clamp_min(1e-12)
