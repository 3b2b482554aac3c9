"""Training throughput: steps/s and peak RSS (and peak GPU memory on a GPU) for a preset with each quantizer,
with and without the discriminator, and NDVQ's overhead against RVQ.

    python benchmarks/train_speed.py [--config YAML] [--preset speech-16k-large] [--threads 2] [--steps 12] \
        [--batch-size 8] [--set KEY=VALUE ...]

The shipped model's recipe, as `scripts/recipe.sh` trains it: `--config configs/speech-16k-small.yaml --preset
speech-16k-small-istft --threads 1 --set data.num_workers=0`.

`--set` passes training-config overrides to every configuration, for example a smaller discriminator:
`--set discriminator.filters=8 'discriminator.scales=[1024,256]' data.segment_seconds=0.5`.

Each configuration runs in its own process on crops of the bundled speech clip; the k-means
initialisation of every stage and two warm-up steps come before the timed steps. Where CUDA is
available the trainer runs there, as `ndvq train` does.
"""

import argparse
import json
from pathlib import Path
import platform
import resource
import subprocess
import sys
import tempfile
import time

import soundfile as sf
import torch

from ndvq.train.config import load_config
from ndvq.train.trainer import Trainer

CLIP = Path(__file__).parent.parent / "examples" / "speech_en_16k.flac"
WARMUP = 2


def measure(
    config: str | None, preset: str, quantizer: str, adversarial: bool, steps: int, batch_size: int, extra: list[str]
) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        sf.write(Path(folder) / "clip.flac", sf.read(CLIP)[0], 16000)
        overrides = [
            f"model={preset}",
            f"quantizer={quantizer}",
            f"data.train={folder}",
            'data.valid=""',  # no validation, whatever the config names
            f"data.batch_size={batch_size}",
            "data.num_workers=1",
            f"steps={steps + WARMUP}",
            f"discriminator.start_step={0 if adversarial else 10**9}",
            "discriminator.every=3",
            "checkpoint_every=1000000",
            *extra,
        ]
        trainer = Trainer(load_config(config, overrides), Path(folder) / "run")
        batches = trainer._batches()
        with torch.no_grad():  # k-means initialisation of every stage, so that no timed step pays for it
            trainer.codec(next(batches), trainer.codec.num_codebooks)
        for _ in range(WARMUP):
            trainer.train_step(next(batches))
            trainer.step += 1
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(batches))
            trainer.step += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return {
        "steps_per_second": steps / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a training config (YAML) under the overrides; default: the built-in one")
    parser.add_argument("--preset", default="speech-16k-large")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="training-config overrides")
    parser.add_argument("--one", nargs=2, metavar=("QUANTIZER", "ADVERSARIAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        quantizer, adversarial = args.one[0], args.one[1] == "1"
        print(
            json.dumps(measure(args.config, args.preset, quantizer, adversarial, args.steps, args.batch_size, args.set))
        )
        return

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}, {device}")
    segment = load_config(args.config, [f"data.train={CLIP}", *args.set]).data.segment_seconds
    print(f"{args.preset}, batch {args.batch_size} x {segment:g} s crops, fp32, {args.steps} timed steps:")
    if args.set:
        print(f"overrides: {' '.join(args.set)}")
    gpu_column = f" {'peak GPU MB':>11}" if torch.cuda.is_available() else ""
    print(f"{'quantizer':<9} {'discriminator':<13} {'steps/s':>8} {'s/step':>7} {'peak RSS MB':>11}{gpu_column}")
    rates = {}
    for adversarial in (False, True):
        for quantizer in ("ndvq", "rvq"):
            command = [sys.executable, __file__, "--preset", args.preset, "--threads", str(args.threads)]
            command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            command += ["--set", *args.set] if args.set else []
            command += ["--config", args.config] if args.config else []
            output = subprocess.run(
                [*command, "--one", quantizer, str(int(adversarial))], capture_output=True, text=True
            )
            if output.returncode:
                sys.exit(output.stderr)
            row = json.loads(output.stdout.strip().splitlines()[-1])
            rates[quantizer, adversarial] = row["steps_per_second"]
            mode = "every 3rd step" if adversarial else "off"
            gpu = f" {row['peak_gpu_mb']:11.0f}" if row["peak_gpu_mb"] is not None else ""
            print(
                f"{quantizer:<9} {mode:<13} {row['steps_per_second']:8.3f} {1 / row['steps_per_second']:7.2f} "
                f"{row['peak_rss_mb']:11.0f}{gpu}"
            )
    for adversarial in (False, True):
        overhead = rates["rvq", adversarial] / rates["ndvq", adversarial] - 1
        print(f"NDVQ step time over RVQ, discriminator {'on' if adversarial else 'off'}: {overhead:+.1%}")


if __name__ == "__main__":
    main()
