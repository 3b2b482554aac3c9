"""Which training loss ranks decodes as PESQ-wb and STOI do?

    python benchmarks/loss_agreement.py MANIFEST [--model speech-16k] [--files 20] [-b 1.5 6]

For files taken at equal steps through a manifest (those of 1 s or more), decodes of the model at each
bitrate, of Opus at 6 and 12 kbps and of Codec2 at 3200 and 700C (where installed), each delay-compensated
as `ndvq eval` does, scored by PESQ-wb and STOI (pystoi) and by the training losses of ndvq.modules.distances:
multi-scale mel (`loss.mel`), STOI's (`loss.stoi`), PESQ's disturbance (`loss.pesq`), the same with
P.862's 49 bands and weights (`pesq-p862`) and spectral convergence on linear magnitudes (`loss.convergence`).
Prints each loss's mean per codec and its Spearman rank correlation with each metric, pooled over every
decode and within each file (the mean over files of the correlation across codecs: file difficulty taken
out). A loss that agrees with a metric correlates negatively with it (lower loss, higher score).
"""

import argparse

import numpy as np
from scipy.stats import spearmanr
import soundfile as sf
import torch

from ndvq.errors import NdvqError
from ndvq.eval.metrics import RATE, prepare, score
from ndvq.eval.systems import Codec2System, NdvqSystem, OpusSystem
from ndvq.manifest import read_manifest
from ndvq.modules.distances import DisturbanceLoss, IntelligibilityLoss, MultiScaleMelLoss, SpectralConvergenceLoss

LOSSES = {
    "mel": MultiScaleMelLoss(RATE),
    "stoi": IntelligibilityLoss(RATE),
    "pesq": DisturbanceLoss(RATE),
    "pesq-p862": DisturbanceLoss(RATE, bands=49, asymmetric=0.0309),  # P.862's band count and weights
    "convergence": SpectralConvergenceLoss(),
}
METRICS = ("pesq_wb", "stoi")


def systems(model: str, bitrates: list[str]) -> list[tuple[str, object, str]]:
    found: list[tuple[str, object, str]] = [(f"ndvq {b}", NdvqSystem("ndvq", model), b) for b in bitrates]
    for make, modes in ((OpusSystem, ("6", "12")), (Codec2System, ("3200", "700C"))):
        try:
            system = make()
        except NdvqError as error:
            print(f"skipped: {error}")
            continue
        found += [(f"{system.label} {mode}", system, mode) for mode in modes]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--model", default="speech-16k")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("-b", "--bitrates", nargs="+", default=["1.5", "6"])
    args = parser.parse_args()

    entries = [path for path, seconds in read_manifest(args.manifest) if seconds >= 1.0]
    picked = [entries[i] for i in np.linspace(0, len(entries) - 1, min(args.files, len(entries))).astype(int)]
    coders = systems(args.model, args.bitrates)
    rows = []  # (file index, system, {name: value})
    for index, path in enumerate(picked):
        wav, rate = sf.read(path, dtype="float32", always_2d=True)
        for label, system, bitrate in coders:
            decoded = system.code(wav.T, rate, bitrate).audio
            reference, estimate = prepare(wav.T, decoded, rate, aligned=system.aligned)
            values = score(reference, estimate, RATE, METRICS, aligned=True).values
            if len(values) < len(METRICS):
                continue  # too little speech for STOI: left out of every correlation
            x, y = (torch.from_numpy(np.ascontiguousarray(a)).reshape(1, 1, -1) for a in (estimate, reference))
            with torch.no_grad():
                values.update({f"loss {name}": loss(x, y).item() for name, loss in LOSSES.items()})
            rows.append((index, label, values))

    names = ", ".join(label for label, _, _ in coders)
    print(f"{len(picked)} files, {len(rows)} decodes ({names}), model {args.model}")
    print("\nmean per system: " + "  ".join(f"{m}" for m in (*METRICS, *(f"loss {n}" for n in LOSSES))))
    for label, _, _ in coders:
        chosen = [v for _, system, v in rows if system == label]
        means = [np.mean([v[k] for v in chosen]) for k in (*METRICS, *(f"loss {n}" for n in LOSSES))]
        print(f"  {label:12s} " + "  ".join(f"{m:.3f}" for m in means))
    print("\nSpearman correlation (negative: the loss agrees with the metric)")
    print(f"  {'loss':8s} " + "  ".join(f"{m + ' pooled':>15s}  {m + ' in file':>15s}" for m in METRICS))
    for name in LOSSES:
        cells = []
        for metric in METRICS:
            pooled = spearmanr([v[f"loss {name}"] for *_, v in rows], [v[metric] for *_, v in rows])[0]
            within = []
            for index in range(len(picked)):
                chosen = [v for i, _, v in rows if i == index]
                if len(chosen) >= 3:
                    within.append(spearmanr([v[f"loss {name}"] for v in chosen], [v[metric] for v in chosen])[0])
            cells.append(f"{pooled:15.3f}  {np.nanmean(within):15.3f}")
        print(f"  {name:8s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
