"""Can the one-pass encoder learn the latents refinement finds? (Not at this size: docs/ndvq-that-learns.md,
session 31.)

    python benchmarks/amortised_refinement.py TRAIN VALID TEST --work DIR [--model speech-16k] [-b 6]
        [--crops 1024] [--refine-steps 50] [--steps 1500] [--post-blocks 0]

Refinement (src/ndvq/refine.py) finds, per input, a latent that decodes better than the encoder's. This distils
it: random 1 s crops of TRAIN (and 96 of VALID) are RMS-normalised and refined at -b kbps with the library's
objective (targets cached in DIR as safetensors, per model: about 1.5 s of one thread per crop at 50 steps);
then the encoder, with --post-blocks residual ConvNeXt blocks appended at the latent rate (their output zeroed
at the start, so step 0 is the model), is trained by Adam (encoder lr 1e-4, blocks 1e-3, cosine to zero) to
output the refined latents, batches of 16 crops, loss |z - z*|^2 / |z0 - z*|^2 (1 at the start, 0 when it
outputs the refined latents). Every 100 steps: that ratio on VALID, and the refinement objective of VALID's
decodes (the encoder's, the refined latents' for scale). Last, every file of TEST is coded one-pass at -b kbps,
bit-packed, by the model's encoder and by the trained one, and scored: means and paired differences (+- 95%).
"""

import argparse
import copy
from functools import partial
import math
from pathlib import Path
import random
import time

import numpy as np
from paired import interval  # benchmarks/paired.py, beside this script
import safetensors.torch
import torch
from torch import nn
import torch.nn.functional as F

from ndvq import Codec
from ndvq.audio import mono_at, read_audio
from ndvq.codec import rms_scale
from ndvq.eval.metrics import score
from ndvq.manifest import read_manifest
from ndvq.refine import VERSION as REFINE_VERSION
from ndvq.refine import RefinementObjective, refine_latent

CROP_SECONDS, BATCH, VALID_CROPS = 1.0, 16, 96


class LatentBlock(nn.Module):
    """Residual ConvNeXt block on latents [B, D, F]: depthwise conv k7, norm, 1x1 up x4, GELU, 1x1 down (zeroed)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.GroupNorm(1, dim)
        self.up, self.down = nn.Conv1d(dim, 4 * dim, 1), nn.Conv1d(4 * dim, dim, 1)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.down(F.gelu(self.up(self.norm(self.depthwise(z)))))


def crops(codec: Codec, manifest: Path, count: int, seed: int) -> torch.Tensor:
    """`count` random CROP_SECONDS crops of the manifest's files that long or longer -> [count, 1, T], RMS 1."""
    length = int(CROP_SECONDS * codec.sample_rate)
    rows = [path for path, seconds in read_manifest(manifest) if seconds >= CROP_SECONDS]
    rng = random.Random(seed)
    rng.shuffle(rows)
    out = []
    for path in rows[:count]:
        wav, rate = read_audio(path)
        wav = mono_at(wav, rate, codec.sample_rate)
        if len(wav) >= length:
            start = rng.randrange(len(wav) - length + 1)
            out.append(torch.from_numpy(np.ascontiguousarray(wav[start : start + length])))
    x = torch.stack(out)[:, None]
    return x / rms_scale(x)


def targets(codec: Codec, manifest: Path, count: int, seed: int, n_q: int, steps: int, path: Path) -> dict:
    """Crops, their encoder latents z0 and refined latents z, cached at `path`."""
    if path.exists():
        return safetensors.torch.load_file(path)
    x = crops(codec, manifest, count, seed)
    z0, z = [], []
    synthesise = partial(codec.decode_straight_through, n_q=n_q)
    started = time.time()
    for i in range(0, len(x), BATCH):
        with torch.no_grad():
            latent, _ = codec.latent(x[i : i + BATCH])
        z0.append(latent)
        z.append(refine_latent(latent, x[i : i + BATCH], synthesise, codec.sample_rate, steps))
        print(f"  refined {i + len(latent)}/{len(x)} crops of {manifest} ({time.time() - started:.0f} s)", flush=True)
    tensors = {"x": x, "z0": torch.cat(z0), "z": torch.cat(z)}
    safetensors.torch.save_file(tensors, path)
    return tensors


def distance_ratio(z: torch.Tensor, data: dict) -> torch.Tensor:
    return (z - data["z"]).pow(2).mean() / (data["z0"] - data["z"]).pow(2).mean()


def objective_of(codec: Codec, z: torch.Tensor, x: torch.Tensor, n_q: int) -> float:
    objective, synthesise = RefinementObjective(codec.sample_rate), partial(codec.decode_straight_through, n_q=n_q)
    with torch.no_grad():
        values = [objective(synthesise(z[i : i + 32]), x[i : i + 32]) for i in range(0, len(x), 32)]
    return float(torch.stack(values).mean())


def score_test(codec: Codec, manifest: Path, bandwidth: float) -> list[dict[str, float]]:
    rows = []
    for path, _ in read_manifest(manifest):
        wav, rate = read_audio(path)
        reference = mono_at(wav, rate, codec.sample_rate)
        with torch.no_grad():
            codes, scale = codec.encode(torch.from_numpy(reference)[None, None], bandwidth)
            decoded = codec.decode(codes, scale)[0, 0, : len(reference)].numpy()
        rows.append(score(reference, decoded, codec.sample_rate, ("pesq_wb", "stoi"), aligned=True).values)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path, help="manifest of the crops to distil on")
    parser.add_argument("valid", type=Path, help="manifest of the validation crops")
    parser.add_argument("test", type=Path, help="manifest of the files scored at the end")
    parser.add_argument("--work", type=Path, required=True, help="folder for the cached targets")
    parser.add_argument("--model", default="speech-16k", help="shipped model name or model directory")
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--crops", type=int, default=1024)
    parser.add_argument("--refine-steps", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--post-blocks", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    codec = Codec.load(args.model).eval()
    n_q = codec.stages(args.bandwidth)
    args.work.mkdir(parents=True, exist_ok=True)
    tag = f"{codec.identity().hex()[:16]}-{args.bandwidth:g}kbps-{args.refine_steps}steps-v{REFINE_VERSION}"
    steps, work = args.refine_steps, args.work
    train = targets(codec, args.train, args.crops, 2, n_q, steps, work / f"train-{args.crops}-{tag}.st")
    valid = targets(codec, args.valid, VALID_CROPS, 1, n_q, steps, work / f"valid-{tag}.st")
    print(
        f"VALID objective: the encoder's {objective_of(codec, valid['z0'], valid['x'], n_q):.4f}, "
        f"refined {objective_of(codec, valid['z'], valid['x'], n_q):.4f}"
    )

    student = copy.deepcopy(codec)
    blocks = nn.Sequential(*[LatentBlock(codec.config.dimension) for _ in range(args.post_blocks)])
    student.encoder = nn.Sequential(student.encoder, blocks)
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    for parameter in student.encoder.parameters():
        parameter.requires_grad_(True)
    groups = [{"params": student.encoder[0].parameters(), "lr": 1e-4}]
    if args.post_blocks:
        groups.append({"params": blocks.parameters(), "lr": 1e-3})
    optimiser = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(args.steps, 1)))
    )
    generator = torch.Generator().manual_seed(0)
    started = time.time()
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(train["x"]), (BATCH,), generator=generator)
        latent, _ = student.latent(train["x"][batch])
        loss = distance_ratio(latent, {name: tensor[batch] for name, tensor in train.items()})
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0:
            student.eval()
            with torch.no_grad():
                latent, _ = student.latent(valid["x"])
            student.train()
            print(
                f"step {step}: train ratio {loss.item():.3f}, VALID ratio {distance_ratio(latent, valid):.3f}, "
                f"VALID objective {objective_of(student, latent, valid['x'], n_q):.4f} ({time.time() - started:.0f} s)",
                flush=True,
            )

    student.eval()
    before, after = score_test(codec, args.test, args.bandwidth), score_test(student, args.test, args.bandwidth)
    print(f"{args.test}, one-pass at {args.bandwidth:g} kbps, bit-packed: trained encoder minus {args.model}'s")
    for metric in ("pesq_wb", "stoi"):
        both = [(a, b) for a, b in zip(after, before, strict=True) if metric in a and metric in b]
        pairs = np.array([(a[metric], b[metric]) for a, b in both])
        mean, half, n = interval((pairs[:, 0] - pairs[:, 1]).tolist())
        print(
            f"{metric:>8}: {pairs[:, 0].mean():.3f} against {pairs[:, 1].mean():.3f}, paired "
            f"{mean:+.3f} +- {half:.3f} ({n} files)"
        )


if __name__ == "__main__":
    main()
