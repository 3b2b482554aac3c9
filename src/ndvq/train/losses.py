"""Adversarial losses and EnCodec's loss balancer. Waveforms are [B, 1, T]; the reconstruction distances are in
ndvq.modules.distances."""

import math

import torch
import torch.nn.functional as F


def generator_adversarial_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Hinge: mean over sub-discriminators of mean(relu(1 - D(x_hat)))."""
    return sum(F.relu(1 - logits).mean() for logits in fake_logits) / len(fake_logits)


def feature_matching_loss(
    real_features: list[list[torch.Tensor]], fake_features: list[list[torch.Tensor]]
) -> torch.Tensor:
    """Relative feature matching: mean over layers of |D_l(x) - D_l(x_hat)|_1 / mean|D_l(x)|, real detached."""
    terms = [
        F.l1_loss(fake, real.detach()) / (real.detach().abs().mean() + 1e-8)
        for real_layers, fake_layers in zip(real_features, fake_features, strict=True)
        for real, fake in zip(real_layers, fake_layers, strict=True)
    ]
    return sum(terms) / len(terms)


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Hinge: mean over sub-discriminators of mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))."""
    pairs = zip(real_logits, fake_logits, strict=True)
    return sum(F.relu(1 - real).mean() + F.relu(1 + fake).mean() for real, fake in pairs) / len(real_logits)


class Balancer:
    """EnCodec's gradient balancer: each loss's gradient w.r.t. the decoded waveform is rescaled so that
    its share of the total gradient norm equals its weight's share, whatever the loss's own scale.

    Gradient norms (per item) are tracked with an exponential moving average (decay 0.999).
    """

    def __init__(self, weights: dict[str, float], decay: float = 0.999, total_norm: float = 1.0) -> None:
        self.weights, self.decay, self.total_norm = weights, decay, total_norm
        self.averages: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def gradient(self, losses: dict[str, torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        """The balanced gradient w.r.t. `output` (detached): backpropagate it with (output * g).sum()."""
        gradients = {name: torch.autograd.grad(loss, [output], retain_graph=True)[0] for name, loss in losses.items()}
        total_weight = sum(self.weights[name] for name in losses)
        combined = torch.zeros_like(output)
        for name, grad in gradients.items():
            norm = grad.norm(p=2).item() / math.sqrt(output.shape[0])
            self.averages[name] = self.decay * self.averages.get(name, 0.0) + norm
            self.counts[name] = self.decay * self.counts.get(name, 0.0) + 1.0
            average = self.averages[name] / self.counts[name]
            combined = combined + self.total_norm * self.weights[name] / total_weight / (average + 1e-12) * grad
        return combined.detach()

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {"averages": dict(self.averages), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        self.averages, self.counts = dict(state["averages"]), dict(state["counts"])
