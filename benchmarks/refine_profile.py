"""Where the refining encoder's time goes: its parts timed one by one on 10 s of the bundled clip.

    python benchmarks/refine_profile.py [--model speech-16k] [-b 6] [--threads 1]

`ndvq compress` encodes with one encoder pass, then per refinement step one assignment of the latent (the
straight-through quantizer), a decoder pass forward and backward and the objective's forward and backward
(ndvq.refine), then a last assignment. Each part is timed alone, the median of 7 runs, in ms; the objective also
per term and per mel scale. Multiply by the steps for a whole encode (`benchmarks/speed.py --refine 3` times it).
"""

import argparse
from collections.abc import Callable
import time

import torch
import torch.nn.functional as F

from ndvq import Codec
from ndvq.audio import read_audio
from ndvq.refine import RefinementObjective

CLIP = "examples/speech_en_16k.flac"


def median_ms(fn: Callable[[], object], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[runs // 2] * 1000


def gradient_of(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(loss(x), [x])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="speech-16k")
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model).eval()
    clip, _ = read_audio(CLIP)
    wav = torch.from_numpy(clip[:1, : 10 * codec.sample_rate]).float()[None]
    n_q = codec.stages(args.bandwidth)
    with torch.no_grad():
        latent = codec.encoder(wav)
        decoded = codec.decoder(latent)[..., : wav.shape[-1]]
    objective = RefinementObjective(codec.sample_rate)
    target = objective.towards(wav)
    estimate = decoded.clone().requires_grad_(True)
    free_latent = latent.clone().requires_grad_(True)
    mel = objective.mel
    parts: list[tuple[str, Callable[[], object]]] = [
        ("encoder, one pass", torch.no_grad()(lambda: codec.encoder(wav))),
        (f"assignment, {n_q} stages", torch.no_grad()(lambda: codec.quantizer.encode(latent, n_q))),
        ("decoder forward", torch.no_grad()(lambda: codec.decoder(latent))),
        ("decoder forward and backward", gradient_of(lambda x: codec.decoder(x).sum(), free_latent)),
        ("objective forward and backward", gradient_of(target, estimate)),
        ("  disturbance (PESQ-like)", gradient_of(lambda x: objective.disturbance(x, wav), estimate)),
    ]
    for scale, y in zip(mel.mels, mel.log_mels(wav), strict=True):

        def term(x: torch.Tensor, scale: torch.nn.Module = scale, y: torch.Tensor = y) -> torch.Tensor:
            log_mel = scale(x)
            return F.l1_loss(log_mel, y) + F.mse_loss(log_mel, y)

        parts.append((f"  mel, n_fft {scale.window.shape[0]}", gradient_of(term, estimate)))
    print(f"model {args.model}, {args.bandwidth:g} kbps, 10 s of {CLIP}, {args.threads} thread(s), ms (median of 7):")
    for name, fn in parts:
        print(f"  {name:<34} {median_ms(fn):8.1f}")


if __name__ == "__main__":
    main()
