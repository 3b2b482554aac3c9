"""Streaming cost of a causal model: algorithmic latency, and the real-time factor of StreamingEncoder and
StreamingDecoder fed in fixed pushes (20 ms by default), each push timed as a caller would see it.

    python benchmarks/streaming.py [--preset speech-16k-small-causal] [--push-ms 20] [--threads 2] [-b 6]

Weights are the preset's untrained ones: speed does not depend on training.
"""

import argparse
import platform
import time

import numpy as np
import torch

from ndvq import Codec, StreamingDecoder, StreamingEncoder
from ndvq.audio import read_audio

CLIP = "examples/speech_en_16k.flac"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="speech-16k-small-causal")
    parser.add_argument("--push-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-b", "--bandwidth", type=float, default=6.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio streamed (the clip, repeated)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.from_preset(args.preset)
    clip, rate = read_audio(CLIP)
    assert rate == codec.sample_rate, "the bundled clip is at 16 kHz; pick a 16 kHz causal preset"
    wav = torch.from_numpy(
        np.tile(clip[:1], int(np.ceil(args.seconds * rate / clip.shape[1])))[:, : int(args.seconds * rate)]
    )
    push = max(1, round(args.push_ms * rate / 1000))

    encoder = StreamingEncoder(codec, args.bandwidth, scale=float(wav.pow(2).mean().sqrt()))
    decoder = StreamingDecoder(codec, scale=encoder.scale)
    encode_times, decode_times, frames = [], [], 0
    for start in range(0, wav.shape[1], push):
        begin = time.perf_counter()
        codes = encoder.push(wav[:, start : start + push])
        encode_times.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        decoder.push(codes)
        decode_times.append(time.perf_counter() - begin)
        frames += codes.shape[1]
    audio = wav.shape[1] / rate
    hop_ms = 1000 * codec.hop_length / rate
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    setting = f"{args.preset} at {args.bandwidth:g} kbps, {audio:.0f} s of speech"
    print(f"{setting}, {args.push_ms:g} ms pushes, {frames} frames")
    print(f"algorithmic latency: {hop_ms:.1f} ms (one hop: a frame is coded once its samples have all arrived,")
    print(f"  and decoded to its final samples at once); a caller waits for its push size on top: {args.push_ms:g} ms")
    for name, times in (("encode", encode_times), ("decode", decode_times)):
        total = sum(times)
        print(
            f"{name}: real-time factor {audio / total:.1f}x, per push mean {1000 * total / len(times):.2f} ms, "
            f"p99 {1000 * np.percentile(times, 99):.2f} ms"
        )
    both = sum(encode_times) + sum(decode_times)
    print(f"encode + decode: {audio / both:.1f}x real time")


if __name__ == "__main__":
    main()
