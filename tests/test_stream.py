"""Frame-by-frame streaming (causal models): equal to the block-wise path, whatever the push sizes."""

import pytest
import torch

from ndvq import Codec, CodecConfig, NdvqError, StreamingDecoder, StreamingEncoder
from ndvq.presets import PRESETS

BANDWIDTH = 8.0


@pytest.fixture(scope="module")
def causal() -> Codec:
    torch.manual_seed(1)
    return Codec(CodecConfig(**{**PRESETS["tiny"].to_dict(), "causal": True})).eval()


def offline(codec: Codec, wav: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [n_q, F] and audio [1, F * hop] of the block-wise path on the whole signal wav [1, T]."""
    codes = torch.cat(list(codec.encode_blocks([wav[None]], BANDWIDTH, scale)), dim=-1)
    return codes[0], torch.cat(list(codec.decode_blocks(codes, scale)), dim=-1)[0]


def pushed(encoder: StreamingEncoder, wav: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Push wav [1, T] in pieces of the given sizes (cycled), then flush: codes [n_q, F]."""
    out, start, i = [], 0, 0
    while start < wav.shape[1]:
        size = sizes[i % len(sizes)]
        out.append(encoder.push(wav[:, start : start + size]))
        start, i = start + size, i + 1
    out.append(encoder.flush())
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("sizes", [[320], [1], [1, 7, 63, 65, 129, 1000], [5000]])
def test_pushed_codes_and_audio_equal_the_block_wise_path(causal: Codec, speech, sizes: list[int]) -> None:
    wav = torch.from_numpy(speech[0])[:, :4001] if sizes != [1] else torch.from_numpy(speech[0])[:, :1100]
    scale = torch.tensor(0.07).reshape(1, 1, 1)
    codes, audio = offline(causal, wav, scale)
    streamed = pushed(StreamingEncoder(causal, BANDWIDTH, scale=0.07), wav, sizes)
    assert torch.equal(streamed, codes)
    decoder, pieces, start = StreamingDecoder(causal, scale=0.07), [], 0
    while start < codes.shape[1]:
        frames = 1 + len(pieces) % 3  # 1, 2, 3, 1, ... frames a push
        pieces.append(decoder.push(codes[:, start : start + frames]))
        start += frames
    decoded = torch.cat([*pieces, decoder.flush()], dim=-1)
    assert decoded.shape == (1, codes.shape[1] * causal.hop_length)
    torch.testing.assert_close(decoded, audio, rtol=0, atol=1e-5)


def test_measured_scale_is_fixed_by_the_first_audio(causal: Codec, speech) -> None:
    wav = torch.from_numpy(speech[0])[:, :16000]
    encoder = StreamingEncoder(causal, BANDWIDTH, scale_seconds=0.25)
    first = encoder.push(wav[:, :1000])
    assert first.shape == (causal.stages(BANDWIDTH), 0) and encoder.scale is None  # still measuring
    rest = pushed(encoder, wav[:, 1000:], [320])
    held = wav[:, :4200]  # what had arrived when 0.25 s (4000 samples) was reached: 1000 + 10 x 320
    assert encoder.scale.item() == pytest.approx(held.pow(2).mean().sqrt().item() + 1e-8, rel=1e-6)
    codes, _ = offline(causal, wav, encoder.scale)
    assert torch.equal(torch.cat([first, rest], dim=-1), codes)


def test_streams_sharing_a_codec_do_not_mix(causal: Codec, speech) -> None:
    a, b = torch.from_numpy(speech[0])[:, :3200], 0.1 * torch.randn(1, 3200)
    alone = [pushed(StreamingEncoder(causal, BANDWIDTH, scale=0.1), x, [320]) for x in (a, b)]
    encoders = [StreamingEncoder(causal, BANDWIDTH, scale=0.1) for _ in range(2)]
    together = [[], []]
    for start in range(0, 3200, 320):
        for k, x in enumerate((a, b)):
            together[k].append(encoders[k].push(x[:, start : start + 320]))
    for k in range(2):
        assert torch.equal(torch.cat([*together[k], encoders[k].flush()], dim=-1), alone[k])


def test_refusals(causal: Codec, tiny: Codec) -> None:
    with pytest.raises(NdvqError, match="streaming needs a causal model"):
        StreamingEncoder(tiny, BANDWIDTH)
    with pytest.raises(NdvqError, match="streaming needs a causal model"):
        StreamingDecoder(tiny)
    with pytest.raises(NdvqError, match="scale: must be a positive"):
        StreamingEncoder(causal, BANDWIDTH, scale=0.0)
    encoder = StreamingEncoder(causal, BANDWIDTH, scale=0.1)
    with pytest.raises(NdvqError, match=r"expected samples \[1, n\]"):
        encoder.push(torch.zeros(2, 10))
    encoder.flush()
    with pytest.raises(NdvqError, match="push after flush"):
        encoder.push(torch.zeros(1, 10))
    with pytest.raises(NdvqError, match="codes must lie in"):
        StreamingDecoder(causal).push(torch.full((2, 3), causal.codebook_size))
