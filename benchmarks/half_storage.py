"""What float16 storage of the encoder/decoder weights changes: the fp32 model against the shipped one.

    python benchmarks/half_storage.py --fp32 EXPORT [--shipped speech-16k] [-b 1.5 3 6]

EXPORT: the float32 model directory the shipped model was made from (`ndvq export` of its run).

Codes the bundled clip with both models at each bitrate and prints the fraction of identical codes and the
max and RMS difference of the decoded audio (each model decoding its own codes), the RMS difference when the
float16 decoder decodes the fp32 model's codes (the decoder's share), and the decoded signal's RMS for scale.
"""

import argparse
from pathlib import Path

import torch

from ndvq import Codec
from ndvq.audio import read_audio

CLIP = Path(__file__).parent.parent / "examples" / "speech_en_16k.flac"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, help="the model directory as trained (float32)")
    parser.add_argument("--shipped", default="speech-16k", help="the same model with float16 storage")
    parser.add_argument("-b", "--bandwidth", type=float, nargs="+", default=[1.5, 3.0, 6.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full, half = Codec.load(args.fp32), Codec.load(args.shipped)
    wav, rate = read_audio(CLIP)
    assert rate == full.sample_rate == half.sample_rate
    wav = torch.from_numpy(wav)[None]  # [1, 1, T]
    print(f"{CLIP.name}: {wav.shape[-1] / rate:.2f} s; {args.fp32} (fp32) against {args.shipped} (float16 storage)")
    print("| kbps | identical codes | max abs diff. | RMS diff. | same codes: RMS diff. | RMS of decoded |")
    print("|---|---|---|---|---|---|")
    for bandwidth in args.bandwidth:
        codes_full, scale = full.encode(wav, bandwidth)
        codes_half, _ = half.encode(wav, bandwidth)
        same = (codes_full == codes_half).float().mean().item()
        audio_full, audio_half = full.decode(codes_full, scale), half.decode(codes_half, scale)
        difference, decoder_only = audio_full - audio_half, audio_full - half.decode(codes_full, scale)
        print(
            f"| {bandwidth:g} | {same:.2%} | {difference.abs().max().item():.4f} | "
            f"{rms(difference):.5f} | {rms(decoder_only):.5f} | {rms(audio_full):.4f} |"
        )


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


if __name__ == "__main__":
    main()
