"""Codec speed and memory: real-time factor of encode and decode and peak RSS, per preset and duration,
and the NDVQ quantizer's time against the RVQ baseline's at equal shapes.

    python benchmarks/speed.py [--threads 2] [--durations 10 600] [--presets PRESET ...] [--encodec]
    python benchmarks/speed.py --onnx [--threads 2] [--presets ...]
    python benchmarks/speed.py --refine 100 --presets speech-16k-small-istft --durations 10   # slower encoder

--onnx (needs `pip install 'ndvq[onnx]'`) times only onnxruntime against PyTorch, in one run, on tensors: the
bundled clip repeated to 10 s, encode (scale and codes) and decode (audio times the scale), both at --threads
intra-op threads.

--refine STEPS encodes with that many steps of refinement (ndvq.refine, `ndvq compress --refine`); the default,
0, times the one-pass encoder (`ndvq compress` refines 3 steps unless told).

--encodec needs `pip install --no-deps encodec==0.1.1 einops` (with its dependencies, encodec would pull a
torchaudio that replaces torch).

Each (preset, duration) runs in its own process so that its peak RSS is its own. The input is the
bundled speech clip repeated to the duration, written block by block to a temporary FLAC file before
the timing; the codec rows time the file path (FLAC -> .ndvq -> WAV, as `ndvq compress` and
`ndvq decompress` do). Weights are the presets' untrained ones: speed and memory do not depend on
training. The presets by default: speech-16k-small-istft (the shipped model's architecture) and paper-24k.
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
import types

import numpy as np
import soundfile as sf
import torch

from ndvq import Codec, ResidualNDVQ, ResidualVQ
from ndvq.audio import read_audio, resample
from ndvq.codec import signal_scale
from ndvq.compress import compress_file, decompress_file
from ndvq.presets import PRESETS

CLIP = "examples/speech_en_16k.flac"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_repeated(path: Path, clip: np.ndarray, rate: int, seconds: float) -> None:
    """The clip [C, n] repeated to `seconds`, written to a FLAC file one repetition at a time."""
    total = int(seconds * rate)
    with sf.SoundFile(path, "w", rate, clip.shape[0], format="FLAC") as audio:
        for start in range(0, total, clip.shape[1]):
            audio.write(clip[:, : total - start].T)


def measure_codec(preset: str, seconds: float, bandwidth: float, refine: int = 0) -> dict:
    """Compress and decompress `seconds` of speech file to file (FLAC -> .ndvq -> WAV); runs in a fresh process."""
    codec = Codec.from_preset(preset)
    clip, rate = read_audio(CLIP)
    with tempfile.TemporaryDirectory() as directory:
        source, coded, decoded_file = (Path(directory) / name for name in ("in.flac", "in.ndvq", "out.wav"))
        write_repeated(source, clip, rate, seconds)
        loaded = peak_rss_mb()
        start = time.perf_counter()
        compress_file(codec, source, coded, bandwidth, refine_steps=refine)
        encoded = time.perf_counter()
        decompress_file(codec, coded, decoded_file)
        decoded = time.perf_counter()
    return {
        "preset": preset,
        "seconds": seconds,
        "bandwidth": bandwidth,
        "refine": refine,
        "encode_rtf": (encoded - start) / seconds,
        "decode_rtf": (decoded - encoded) / seconds,
        "rss_loaded_mb": loaded,
        "rss_peak_mb": peak_rss_mb(),
    }


def preset_bandwidth(preset: str, requested: float) -> float:
    """`requested` kbps if the preset has that bitrate, else its highest one below (or its lowest)."""
    bandwidths = sorted(PRESETS[preset].bandwidths)
    return max((b for b in bandwidths if b <= requested), default=bandwidths[0])


def time_call(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def measure_quantizers(frames: int, n_q: int) -> list[dict]:
    """ms per call at the paper's shapes (dim 128, 1024 codes), z [8, 128, frames]."""
    rows = []
    z = torch.randn(8, 128, frames)
    for name, make in (("ndvq", ResidualNDVQ), ("rvq", ResidualVQ)):
        quantizer = make(dim=128, num_codebooks=32, codebook_size=1024)
        quantizer.train()
        quantizer(z, 32)  # k-means initialisation, not timed

        def train_step(quantizer: torch.nn.Module = quantizer) -> None:
            out = quantizer(z.requires_grad_(), n_q)
            (out.quantized.sum() + sum(out.losses.values())).backward()

        quantizer.eval()
        codes = quantizer.encode(z, n_q)
        encode = time_call(lambda q=quantizer: q.encode(z, n_q))
        decode = time_call(lambda q=quantizer, c=codes: q.decode(c))
        quantizer.train()
        rows.append({"quantizer": name, "encode_ms": encode, "decode_ms": decode, "train_ms": time_call(train_step)})
    return rows


def measure_against_encodec(seconds: float, bandwidth: float) -> dict:
    """EnCodec's own 24 kHz model (the `encodec` package, random weights: its pretrained weights cannot be
    downloaded here) and paper-24k on the same input, encode + decode of tensors at the same bitrate."""
    try:
        import torchaudio  # noqa: F401
    except Exception:  # encodec imports torchaudio for file I/O only, which is not used here
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    from encodec import EncodecModel

    wav = 0.1 * torch.randn(1, 1, int(24000 * seconds))
    encodec = EncodecModel.encodec_model_24khz(pretrained=False).eval()
    encodec.set_target_bandwidth(bandwidth)
    ours = Codec.from_preset("paper-24k")
    with torch.no_grad():
        times = {
            "encodec": time_call(lambda: encodec.decode(encodec.encode(wav)), repeats=2) / 1000,
            "paper-24k": time_call(lambda: ours.decode(*ours.encode(wav, bandwidth)), repeats=2) / 1000,
        }
    return times


def measure_onnx(preset: str, bandwidth: float, threads: int, seconds: float = 10.0) -> dict:
    """RTF of encode and decode of `seconds` of the bundled clip, PyTorch and onnxruntime (same thread count),
    and the fraction of onnxruntime's codes equal to PyTorch's."""
    import onnxruntime

    from ndvq.onnx_export import export_onnx

    codec = Codec.from_preset(preset)
    clip, rate = read_audio(CLIP)
    clip = resample(clip[:1], rate, codec.sample_rate)
    wav = torch.from_numpy(np.tile(clip, int(seconds * codec.sample_rate) // clip.shape[1] + 1))
    wav = wav[None, :, : int(seconds * codec.sample_rate)].float()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as directory:
        paths = export_onnx(codec, directory, [bandwidth])
        encoder, decoder = (
            onnxruntime.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths[:2]
        )

    def onnx_encode() -> tuple[np.ndarray, torch.Tensor]:
        scale = signal_scale([wav])
        audio = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % codec.hop_length)) / scale
        return encoder.run(None, {"audio": audio.numpy()})[0], scale

    codes, scale = codec.encode(wav, bandwidth, chunk_seconds=None)
    equal = float((onnx_encode()[0] == codes.numpy()).mean())
    with torch.no_grad():
        times = {
            "torch_encode": time_call(lambda: codec.encode(wav, bandwidth, chunk_seconds=None), repeats=3),
            "onnx_encode": time_call(onnx_encode, repeats=3),
            "torch_decode": time_call(lambda: codec.decode(codes, scale, chunk_seconds=None), repeats=3),
            "onnx_decode": time_call(lambda: decoder.run(None, {"codes": codes.numpy()})[0] * scale.numpy(), repeats=3),
        }
    return {"equal": equal, **{name: ms / 1000 / seconds for name, ms in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--durations", type=float, nargs="+", default=[10.0, 600.0])
    parser.add_argument("--presets", nargs="+", default=["speech-16k-small-istft", "paper-24k"], choices=list(PRESETS))
    parser.add_argument("--bandwidth", type=float, default=6.0, help="kbps, or each preset's nearest bitrate below")
    parser.add_argument("--encodec", action="store_true", help="also time EnCodec 24 kHz against paper-24k")
    parser.add_argument("--onnx", action="store_true", help="only onnxruntime against PyTorch (10 s, tensors)")
    parser.add_argument(
        "--refine", type=int, default=0, metavar="STEPS", help="encoder refinement steps (default 0: one pass)"
    )
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure_codec(args.one[0], float(args.one[1]), args.bandwidth, args.refine)))
        return

    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    width = max(len("preset"), *(len(preset) for preset in args.presets))
    if args.onnx:
        print("10 s of the bundled clip, tensors in memory, RTF (seconds per second of audio):")
        columns = ("encode torch", "encode onnx", "decode torch", "decode onnx", "codes equal")
        print(f"{'preset':<{width}} {'kbps':>5} " + " ".join(f"{c:>12}" for c in columns))
        for preset in args.presets:
            bandwidth = preset_bandwidth(preset, args.bandwidth)
            row = measure_onnx(preset, bandwidth, args.threads)
            print(
                f"{preset:<{width}} {bandwidth:5g} {row['torch_encode']:12.4f} {row['onnx_encode']:12.4f} "
                f"{row['torch_decode']:12.4f} {row['onnx_decode']:12.4f} {row['equal']:12.6f}"
            )
        return
    refined = f", encoder refinement {args.refine} steps" if args.refine else ""
    print(f"codec (files: FLAC -> compress_file -> decompress_file -> WAV, untrained weights{refined}):")
    print(
        f"{'preset':<{width}} {'kbps':>5} {'audio s':>8} {'encode RTF':>10} {'decode RTF':>10} "
        f"{'RSS loaded MB':>13} {'RSS peak MB':>11}"
    )
    for preset in args.presets:
        bandwidth = preset_bandwidth(preset, args.bandwidth)
        for seconds in args.durations:
            command = [sys.executable, __file__, "--threads", str(args.threads), "--bandwidth", str(bandwidth)]
            command += ["--refine", str(args.refine)]
            output = subprocess.run([*command, "--one", preset, str(seconds)], capture_output=True, text=True)
            if output.returncode:
                sys.exit(f"{preset}, {seconds:g} s at {bandwidth:g} kbps failed:\n{output.stderr}")
            row = json.loads(output.stdout.strip().splitlines()[-1])
            print(
                f"{preset:<{width}} {bandwidth:5g} {seconds:8g} {row['encode_rtf']:10.4f} {row['decode_rtf']:10.4f} "
                f"{row['rss_loaded_mb']:13.0f} {row['rss_peak_mb']:11.0f}"
            )
    frames, n_q = 75, 8
    print(f"quantizer alone, z [8, 128, {frames}] (8 s of 75 Hz frames), 1024 codes, {n_q} stages, ms per call:")
    rows = measure_quantizers(frames, n_q)
    for row in rows:
        print(
            f"  {row['quantizer']:<5} encode {row['encode_ms']:7.2f}  decode {row['decode_ms']:7.2f}  "
            f"train step {row['train_ms']:7.2f}"
        )
    ndvq, rvq = rows
    encode_ratio, train_ratio = ndvq["encode_ms"] / rvq["encode_ms"], ndvq["train_ms"] / rvq["train_ms"]
    print(f"  NDVQ / RVQ: encode x{encode_ratio:.2f}, train step x{train_ratio:.2f}")
    if args.encodec:
        times = measure_against_encodec(10.0, args.bandwidth)
        print(f"10 s at {args.bandwidth:g} kbps, encode + decode, same input, same run (seconds, RTF):")
        for name, seconds in times.items():
            print(f"  {name:<10} {seconds:6.2f} s  RTF {seconds / 10:.3f}")
        print(f"  paper-24k / EnCodec 24 kHz: x{times['paper-24k'] / times['encodec']:.2f}")


if __name__ == "__main__":
    main()
