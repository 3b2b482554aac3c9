"""The demo: code the bundled speech clip with the shipped model at 1.5, 3 and 6 kbps, against Opus and Codec2.

python examples/demo.py [--model NAME_OR_DIR] [--out DIR] [--threads 2]

Coded as `ndvq compress` codes by default, with 3 steps of refinement (README, Refinement); also at 6 kbps with
the one-pass encoder (`ndvq compress --refine 0`), labelled ndvq-1p. Prints per bitrate the file size, the
bitrate measured from the bytes, encode and decode speed (x real time) and PESQ-wb, STOI and ViSQOL
(ndvq.eval.metrics); Opus at 6 kbps and Codec2 at 3.2 kbps join where opusenc/c2enc are installed. Writes the
decoded clips to OUT/ and an `ndvq report` page to OUT/eval/report.html.
"""

import argparse
from pathlib import Path
import shutil
import time
from typing import Any

import numpy as np
import torch

from ndvq import Codec, NdvqError, compress, decompress, pretrained
from ndvq.audio import read_audio, write_audio
from ndvq.eval.compare import example_path, result_row, write_results
from ndvq.eval.metrics import score
from ndvq.eval.report import write_report
from ndvq.eval.systems import Codec2System, Coded, NdvqSystem, OpusSystem
from ndvq.presets import PRESETS
from ndvq.refine import DEFAULT_STEPS

CLIP = Path(__file__).with_name("speech_en_16k.flac")
BITRATES = ("1.5", "3", "6")
BASELINES = ((OpusSystem, "6"), (Codec2System, "3200"))  # (system, bitrate): the baselines of `ndvq eval`
METRICS = ("pesq_wb", "stoi", "visqol")
ONE_PASS_BITRATE = "6"  # of the one-pass encoder's row (no refinement; README, Refinement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="speech-16k", help="shipped model, model directory or preset")
    parser.add_argument("--out", type=Path, default=Path("build/demo"), help="where decoded clips are written")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    wav, rate = read_audio(CLIP)  # [1, T] float32
    seconds = wav.shape[1] / rate
    model = NdvqSystem("ndvq", args.model, refine=DEFAULT_STEPS)  # as `ndvq compress` encodes by default
    codec: Codec = model.codec
    print(f"input: {CLIP.name}, {seconds:.2f} s, {rate} Hz (licence: {CLIP.stem}.LICENSE)")
    print(
        f"model: {args.model} ({codec.identity().hex()}), {codec.sample_rate} Hz, {codec.frame_rate:g} frames/s, "
        f"{codec.codebook_size} codes"
    )
    if args.model in pretrained.names() and not Path(args.model).is_dir():
        print(
            f"shipped: {pretrained.registry()[args.model].get('description', '')}; this clip's voice is in its "
            "training data (held-out figures: docs/models/speech-16k.md)"
        )
    if codec.entropy is not None:  # what `ndvq compress` does by default with such a model
        weights = ", ".join(f"{codec.entropy.rate_weight_at(codec.stages(float(b))):g} at {b}" for b in BITRATES)
        print(f"files: entropy-coded with the model's tables, rate-aware assignment at weight {weights} kbps")
    if args.model in PRESETS and not Path(args.model).is_dir():
        print("note: an untrained preset: the decoded audio will not resemble the input")
    print(f"encoder: {DEFAULT_STEPS} steps of refinement (ndvq compress's default); ndvq-1p: one pass (--refine 0)")
    systems: list[tuple[Any, str]] = [(model, bitrate) for bitrate in BITRATES]
    systems.append((NdvqSystem("ndvq-1p", args.model, codec=codec), ONE_PASS_BITRATE))
    for system, bitrate in BASELINES:
        try:
            systems.append((system(), bitrate))
        except NdvqError as error:
            print(f"skipped: {error}")
    columns = ("codec", "kbps", "bytes", "in file", "encode x", "decode x", "PESQ-wb", "STOI", "ViSQOL")
    widths = (7, 5, 6, 7, 9, 9, 7, 5, 6)
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    metrics = list(zip(METRICS, widths[6:], strict=True))
    shutil.rmtree(args.out / "eval", ignore_errors=True)  # the report shows this run only
    rows = []
    for system, bitrate in systems:
        coded, encode_s, decode_s = code(system, wav, rate, bitrate)
        name = f"{CLIP.stem}_{system.label}_{bitrate}.wav"
        write_audio(args.out / name, coded.audio, rate)
        write_audio(example_path(args.out / "eval", system.label, bitrate, CLIP), coded.audio, rate)
        scores = score(wav, coded.audio, rate, METRICS, aligned=system.aligned)
        rows.append(result_row(system, bitrate, str(CLIP), seconds, coded, scores))
        kbps = rows[-1]["measured_kbps"]
        speeds = [f"{seconds / t:9.1f}" if t else f"{'-':>9}" for t in (encode_s, decode_s)]
        values = [f"{scores.values[m]:{w}.3f}" if m in scores.values else f"{'failed':>{w}}" for m, w in metrics]
        cells = [f"{system.label:>7}", f"{system.kbps(bitrate):5g}", f"{coded.bytes:6d}", f"{kbps:7.3f}"]
        print(" ".join([*cells, *speeds, *values]))
    write_results(args.out / "eval", rows, METRICS)
    report = write_report(args.out / "eval")
    print("encode x, decode x: seconds of audio per second of compute (NDVQ only; file format included)")
    print(f"decoded clips: {args.out}/; report: {report}")


def code(system: Any, wav: np.ndarray, rate: int, bitrate: str) -> tuple[Coded, float, float]:
    """Code wav [C, T] at `rate` Hz; (decoded audio and bytes, encode seconds, decode seconds).

    An NDVQ model is timed through compress and decompress separately, written as `ndvq compress` writes it by
    default (with the system's refinement steps); a baseline's command-line tools are not timed (0, 0).
    """
    if not isinstance(system, NdvqSystem):
        return system.code(wav, rate, bitrate), 0.0, 0.0
    start = time.perf_counter()
    data = compress(system.codec, wav, rate, float(bitrate), refine_steps=system.refine)
    encoded = time.perf_counter()
    decoded, _ = decompress(data, system.codec)
    return Coded(decoded, len(data)), encoded - start, time.perf_counter() - encoded


if __name__ == "__main__":
    main()
