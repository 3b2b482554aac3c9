"""How large is each training loss's gradient on a model's decodes, and where does it fall?

    python benchmarks/loss_gradients.py MANIFEST [--model speech-16k] [--crops 16] [--seconds 0.5] [-b 6]

Decodes a batch of training-like crops (drawn from the manifest's files of 1 s or more, seed 0) and prints,
for each loss of ndvq.modules.distances, its value, the norm of its gradient with respect to the decoded
waveform (what a `loss.NAME` weight multiplies: compare weighted norms to balance losses), the share of the
squared gradient that falls in the crop with the largest one, the share in samples whose target is
more than 40 dB under the crop's loudest 32 ms, and "gain": the derivative of the loss along the decode's level,
d loss(g * decoded) / dg at g = 1 (positive: the loss asks for a quieter decode). A loss whose gradient sits in
one quiet crop steers the update by that crop alone; one whose value ignores the level should have a gain of 0.
"""

import argparse

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from ndvq import Codec
from ndvq.manifest import read_manifest
from ndvq.modules.distances import (
    DisturbanceLoss,
    IntelligibilityLoss,
    MultiScaleMelLoss,
    PhaseDerivativeLoss,
    SpectralConvergenceLoss,
)


def crops(manifest: str, count: int, length: int) -> torch.Tensor:
    paths = [path for path, seconds in read_manifest(manifest) if seconds >= 1.0]
    generator = np.random.default_rng(0)
    chosen = []
    for index in generator.choice(len(paths), count, replace=len(paths) < count):
        wav, _ = sf.read(paths[index], dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
        start = generator.integers(0, max(len(wav) - length, 0) + 1)
        chosen.append(np.pad(wav[start : start + length], (0, max(length - len(wav), 0))))
    return torch.from_numpy(np.stack(chosen))[:, None]  # [B, 1, T]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--model", default="speech-16k")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0)
    args = parser.parse_args()

    codec = Codec.load(args.model).eval()
    rate = codec.config.sample_rate
    wav = crops(args.manifest, args.crops, round(args.seconds * rate))
    with torch.no_grad():
        decoded = codec(wav, codec.stages(args.bandwidth)).wav
    decoded.requires_grad_(True)
    window = round(0.032 * rate)
    power = F.avg_pool1d(wav**2, window, 1, window // 2, count_include_pad=False)[..., : wav.shape[-1]]
    level = 10 * torch.log10(power + 1e-12)
    quiet = level < level.amax(dim=-1, keepdim=True) - 40
    crop_db = 10 * torch.log10(wav.pow(2).mean(dim=(1, 2)) + 1e-12)
    print(f"{args.crops} crops of {args.seconds} s at {args.bandwidth} kbps, model {args.model}")
    print(f"crop levels (dBFS): {' '.join(f'{v:.0f}' for v in crop_db.tolist())}")
    losses = {
        "mel": MultiScaleMelLoss(rate),
        "phase": PhaseDerivativeLoss(),
        "convergence": SpectralConvergenceLoss(),
        "stoi": IntelligibilityLoss(rate),
        "pesq": DisturbanceLoss(rate),
    }
    header = f"{'loss':11s} {'value':>8s} {'grad norm':>10s} {'top crop':>9s} {'crop':>5s} {'quiet part':>11s}"
    print(f"{header} {'gain':>8s}")
    for name, loss in losses.items():
        decoded.grad = None
        value = loss(decoded, wav)
        value.backward()
        squared = decoded.grad.pow(2)
        per_crop = squared.sum(dim=(1, 2)) / squared.sum()
        top = int(per_crop.argmax())
        gain = (decoded.grad * decoded).sum()  # the gradient along the decode itself
        print(
            f"{name:11s} {value.item():8.4f} {squared.sum().sqrt().item():10.3g} {per_crop[top].item():9.2f} "
            f"{top:5d} {(squared[quiet].sum() / squared.sum()).item():11.2f} {gain.item():+8.4f}"
        )


if __name__ == "__main__":
    main()
