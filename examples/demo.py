"""The main job for now: code the bundled speech clip at every bitrate and print sizes and timings.

python examples/demo.py [--model DIR_OR_PRESET] [--out DIR]
"""

import argparse
from pathlib import Path
import time

import torch

from ndvq import Codec, bitstream, compress, decompress
from ndvq.audio import read_audio, write_audio

CLIP = Path(__file__).with_name("speech_en_16k.flac")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="speech-16k", help="model directory or preset (default speech-16k)")
    parser.add_argument("--out", type=Path, default=Path("build/demo"), help="where decoded clips are written")
    args = parser.parse_args()
    torch.set_num_threads(2)

    codec = Codec.load(args.model)
    wav, rate = read_audio(CLIP)
    seconds = wav.shape[1] / rate
    print(f"input: {CLIP.name}, {seconds:.2f} s, {rate} Hz (licence: {CLIP.stem}.LICENSE)")
    print(f"model: {args.model}, {codec.sample_rate} Hz, {codec.frame_rate:g} frames/s, {codec.codebook_size} codes")
    if not Path(args.model).is_dir():
        print("note: an untrained preset: the decoded audio will not resemble the input until a model is trained")
    columns = ("kbps", "stages", "bytes", "header", "nominal", "in file", "encode s", "decode s")
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, (5, 6, 7, 6, 8, 8, 8, 8), strict=True)))
    for bandwidth in codec.bandwidths:
        start = time.perf_counter()
        data = compress(codec, wav, rate, bandwidth)
        encoded = time.perf_counter()
        decoded, decoded_rate = decompress(data, codec)
        decoded_at = time.perf_counter()
        header, _ = bitstream.read(data)
        write_audio(args.out / f"{CLIP.stem}_{bandwidth:g}kbps.wav", decoded, decoded_rate)
        print(
            f"{bandwidth:5g} {header.stages:6d} {len(data):7d} {bitstream.header_size(1):6d} "
            f"{header.nominal_bitrate:8.3f} {len(data) * 8 / seconds / 1000:8.3f} "
            f"{encoded - start:8.2f} {decoded_at - encoded:8.2f}"
        )
    print(f"decoded clips: {args.out}/")


if __name__ == "__main__":
    main()
