"""Entropy coding on real codes: bits actually written against nominal, per bitrate and per stage, and the
time it adds to the codec's own encode and decode.

    python benchmarks/entropy.py --model models/speech-16k-small-ndvq \
        --fit /root/ndvq-data/demo/train.tsv --measure /root/ndvq-data/demo/test.tsv [--fit-limit 400]

The tables are fitted on the codes of --fit-limit --fit files taken at equal steps (as `ndvq fit-entropy` does) and
measured on --measure-limit files taken at equal steps through the --measure list (use a split with other
voices). Bits are those of the payload, without the header.
"""

import argparse
import platform
import time

import numpy as np
import torch

from ndvq import Codec, bitstream
from ndvq.compress import encode_file
from ndvq.entropy_fit import fit_entropy
from ndvq.tokens import source_files, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--fit", required=True, help="training audio: folder or manifest")
    parser.add_argument("--measure", required=True, help="held-out audio: folder or manifest")
    parser.add_argument("--fit-limit", type=int, default=400)
    parser.add_argument("--measure-limit", type=int, default=60)
    parser.add_argument("-b", "--bandwidth", type=float, nargs="+", default=[1.5, 3.0, 6.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-stage", action="store_true", help="one table per stage, no contexts (comparison)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model)
    start = time.perf_counter()
    tables, files, _ = fit_entropy(codec, args.fit, args.fit_limit, contexts=not args.per_stage)
    print(f"machine: {platform.machine()}, {args.threads} threads; model {args.model}")
    kind = "one table per stage" if args.per_stage else "context tables"
    print(f"{kind} fitted on {files} files of {args.fit} in {time.perf_counter() - start:.0f} s")
    codec.set_entropy(tables)

    entries = spread(source_files(args.measure), args.measure_limit)
    print(f"measured on {len(entries)} files spread over {args.measure}\n")
    print("| kbps | nominal kbps | entropy-coded kbps | saving | codec encode+decode s | entropy encode+decode s |")
    print("|---|---|---|---|---|---|")
    per_stage = {}
    for bandwidth in args.bandwidth:
        seconds = bits = codec_time = entropy_time = 0.0
        stage_bits = np.zeros(codec.stages(bandwidth))
        nominal = 0.0
        for entry in entries:
            begin = time.perf_counter()
            header, codes = bitstream.read(encode_file(codec, entry.path, bandwidth))
            codec.decode(torch.from_numpy(codes), torch.tensor(header.scales).reshape(-1, 1, 1))
            codec_time += time.perf_counter() - begin
            begin = time.perf_counter()
            payload = tables.encode(codes)
            decoded = tables.decode(payload, *codes.shape)
            entropy_time += time.perf_counter() - begin
            assert np.array_equal(decoded, codes)
            seconds += header.duration * header.channels
            bits += 8 * len(payload)
            stage_bits += tables.bits(codes)
            nominal = header.nominal_bitrate
        per_stage[bandwidth] = stage_bits / seconds / 1000
        actual = bits / seconds / 1000
        print(
            f"| {bandwidth:g} | {nominal:g} | {actual:.3f} | {100 * (1 - actual / nominal):.1f}% | "
            f"{codec_time:.1f} | {entropy_time:.2f} ({100 * entropy_time / codec_time:.1f}%) |"
        )
    top = max(args.bandwidth)
    frame_rate = codec.frame_rate
    bits_per_code = ", ".join(f"{b * 1000 / frame_rate:.2f}" for b in per_stage[top])
    print(f"\nbits per code by stage at {top:g} kbps (nominal {codec.config.bits_per_code}): {bits_per_code}")


if __name__ == "__main__":
    main()
