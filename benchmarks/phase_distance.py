"""How far a decode's phase is from the original's, up to 1 kHz (where the frame-rate decoder's phase costs most
PESQ-wb, benchmarks/magnitude_phase.py --phase-bands), for one or more models on the same files.

    python benchmarks/phase_distance.py MANIFEST --model NAME=MODEL [--model ...] [--files 12] [-b 6] [--refine 3]

For files taken at equal steps through a manifest (those of 1 to 10 s), each model encodes the file with
`--refine` steps of refinement (Codec.encode; by default `ndvq compress`'s) and decodes it (no bitstream or level
matching, which the distance does not see); the table gives the mean of ndvq.modules.distances LowPhaseLoss (1 -
cos of the phase difference per STFT bin up to 1 kHz, weighted by the original's magnitude, windows of 512 to
2,048 samples): 0 for the original's phase, about 1 for an unrelated one.
"""

import argparse
from pathlib import Path

import soundfile as sf
import torch

from ndvq import Codec
from ndvq.manifest import read_manifest
from ndvq.modules.distances import LowPhaseLoss
from ndvq.refine import DEFAULT_STEPS
from ndvq.tokens import spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest (path<TAB>seconds) of files at the models' rate")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL", help="name and model")
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--refine", type=int, default=DEFAULT_STEPS, help="refinement steps (ndvq compress's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = [item.partition("=") for item in args.model]
    if any(not (name and sep and model) for name, sep, model in specs) or len({s[0] for s in specs}) < len(specs):
        raise SystemExit("--model: expected NAME=MODEL, each NAME once")
    models = {name: Codec.load(model).eval() for name, _, model in specs}
    distances = {rate: LowPhaseLoss(rate) for rate in {codec.sample_rate for codec in models.values()}}
    files = spread([path for path, seconds in read_manifest(args.manifest) if 1.0 <= seconds < 10.0], args.files)
    if not files:
        raise SystemExit(f"{args.manifest}: no files of 1 to 10 s")
    totals = dict.fromkeys(models, 0.0)
    for path in files:
        wav, rate = sf.read(path, dtype="float32")
        if wav.ndim != 1:
            raise SystemExit(f"{path}: expected mono audio")
        x = torch.from_numpy(wav)[None, None]
        for name, codec in models.items():
            if rate != codec.sample_rate:
                raise SystemExit(f"{path}: {rate} Hz, model {name} codes {codec.sample_rate} Hz")
            codes, scale = codec.encode(x, args.bandwidth, refine_steps=args.refine)
            with torch.no_grad():
                totals[name] += distances[rate](codec.decode(codes, scale)[..., : x.shape[-1]], x).item()
    print(f"phase distance up to 1 kHz at {args.bandwidth:g} kbps, {len(files)} files of {args.manifest}")
    for name, total in totals.items():
        print(f"{name:12s} {total / len(files):.3f}")


if __name__ == "__main__":
    main()
