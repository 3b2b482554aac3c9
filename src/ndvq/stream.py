"""Frame-by-frame streaming of causal models: push audio, get the codes of every completed frame; push
codes, get their audio. Each stream keeps its own layer states, so several may share one codec.

Latency: a frame's codes exist once its `hop_length` samples have arrived (20 ms for the 16 kHz
presets), and the decoder turns each frame into its `hop_length` samples at once: the algorithmic
latency is one hop. The output equals `Codec.encode_blocks` / `Codec.decode_blocks` on the whole
signal with the same scale (tested to 1e-5 for audio, exactly for codes).

Scale: the codec works on audio divided by an RMS scale. A stream fixes it for its whole length:
pass `scale` (for example the RMS of typical input, or the one a previous stream measured), or leave it
None to measure it on the audio held when `scale_seconds` have arrived (the first push, if longer):
the first codes then come out that much later, all at once. `StreamingEncoder.scale` gives it to the decoder.
"""

import torch

from ndvq.codec import Codec, rms_scale
from ndvq.errors import NdvqError
from ndvq.modules.streaming import streaming

DEFAULT_SCALE_SECONDS = 0.5


def _check_causal(codec: Codec) -> None:
    if not codec.config.causal:
        raise NdvqError(
            "streaming needs a causal model (causal: true, for example the preset speech-16k-small-causal); "
            "this one looks ahead: use Codec.encode_blocks / decode_blocks, which window it"
        )


def _as_scale(scale: float | torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(scale, dtype=torch.float32).reshape(1, 1, 1)
    if not torch.isfinite(value).all() or value.item() <= 0:
        raise NdvqError(f"scale: must be a positive finite number, got {value.item()}")
    return value


class StreamingEncoder:
    """samples [1, n] at the model's rate, pushed in pieces of any length -> codes [n_q, f] of every
    frame completed so far (int64; f may be 0)."""

    def __init__(
        self,
        codec: Codec,
        bandwidth: float,
        scale: float | torch.Tensor | None = None,
        scale_seconds: float = DEFAULT_SCALE_SECONDS,
    ) -> None:
        _check_causal(codec)
        self.codec, self.n_q, self.hop = codec, codec.stages(bandwidth), codec.hop_length
        self.scale = None if scale is None else _as_scale(scale)
        self._scale_samples = max(1, round(scale_seconds * codec.sample_rate))
        self._pending = torch.zeros(1, 1, 0)
        self._states: list = []
        self._closed = False

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """samples [1, n], n >= 1 -> codes [n_q, f] of the frames completed by them."""
        if self._closed:
            raise NdvqError("push after flush: this stream is finished, start a new StreamingEncoder")
        if samples.dim() != 2 or samples.shape[0] != 1 or samples.shape[1] < 1:
            raise NdvqError(f"push: expected samples [1, n] with n >= 1, got {list(samples.shape)}")
        self._pending = torch.cat([self._pending, samples.detach().float().cpu()[None]], dim=-1)
        if self.scale is None and self._pending.shape[-1] < self._scale_samples:
            return self._empty()
        return self._encode(self._pending.shape[-1] // self.hop * self.hop)

    def flush(self) -> torch.Tensor:
        """The codes of what remains, its last frame completed with zeros: [n_q, f]. Ends the stream."""
        if self._closed:
            return self._empty()
        if self._pending.shape[-1] % self.hop:
            pad = self.hop - self._pending.shape[-1] % self.hop
            self._pending = torch.cat([self._pending, self._pending.new_zeros(1, 1, pad)], dim=-1)
        codes = self._encode(self._pending.shape[-1]) if self._pending.shape[-1] else self._empty()
        self._closed = True
        return codes

    def _encode(self, length: int) -> torch.Tensor:
        if self.scale is None:
            self.scale = rms_scale(self._pending)
        if not length:
            return self._empty()
        chunk, self._pending = self._pending[..., :length], self._pending[..., length:]
        device = next(self.codec.parameters()).device
        with torch.no_grad(), streaming(self.codec.encoder, self._states):
            latent = self.codec.encoder((chunk / self.scale).to(device))
            return self.codec.quantizer.encode(latent, self.n_q)[0].cpu()

    def _empty(self) -> torch.Tensor:
        return torch.zeros(self.n_q, 0, dtype=torch.int64)


class StreamingDecoder:
    """codes [n_q, f], pushed a few frames at a time -> samples [1, f * hop_length] at the model's rate."""

    def __init__(self, codec: Codec, scale: float | torch.Tensor | None = None) -> None:
        _check_causal(codec)
        self.codec = codec
        self.scale = None if scale is None else _as_scale(scale)
        self._states: list = []

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [n_q, f] -> samples [1, f * hop_length] (unit RMS scale when the stream has none)."""
        n_q = codes.shape[0] if codes.dim() == 2 else 0
        if codes.dim() != 2 or not 1 <= n_q <= self.codec.num_codebooks:
            raise NdvqError(f"push: expected codes [n_q, f] with 1 <= n_q <= {self.codec.num_codebooks}")
        if codes.shape[1] == 0:
            return torch.zeros(1, 0)
        if codes.min() < 0 or codes.max() >= self.codec.codebook_size:
            raise NdvqError(f"push: codes must lie in [0, {self.codec.codebook_size})")
        device = next(self.codec.parameters()).device
        with torch.no_grad(), streaming(self.codec.decoder, self._states):
            wav = self.codec.decoder(self.codec.quantizer.decode(codes[None].long().to(device))).cpu()
        return (wav if self.scale is None else wav * self.scale)[0]

    def flush(self) -> torch.Tensor:
        """Nothing is held back (each frame's samples are final when pushed): an empty [1, 0]."""
        return torch.zeros(1, 0)
