"""Named codec architectures: plain data. `Codec.load(name)` builds one with seeded, untrained weights;
trained models that ship with the package have names of their own (ndvq.pretrained)."""

from dataclasses import replace

from ndvq.config import CodecConfig

SMALL = CodecConfig(
    sample_rate=16000,
    n_filters=16,
    lstm_layers=1,
    dimension=64,
    num_codebooks=24,
    bandwidths=(1.0, 1.5, 3.0, 6.0, 12.0),
    ndvq_residual="mean",
)

PRESETS: dict[str, CodecConfig] = {
    # The paper's model: EnCodec 24 kHz SEANet, non-causal, 32 x 1024 NDVQ, 75 Hz frames, 0.75 kbps per stage.
    "paper-24k": CodecConfig(),
    # The same design at 16 kHz for the embedded speech corpus: 50 Hz frames, 0.5 kbps per stage,
    # 48 stages so that 24 kbps is reached. (Called "speech-16k" until a trained model took that name.)
    "speech-16k-large": CodecConfig(sample_rate=16000, num_codebooks=48),
    # speech-16k-large sized for a 2-core CPU: half the channels, one LSTM layer, a 64-dimensional latent,
    # 24 stages (up to 12 kbps); NDVQ stages quantize the residual of the means, not of the samples (chosen by
    # the learning curves in docs/ndvq-that-learns.md: the samples' noise piles up through the stages).
    "speech-16k-small": SMALL,
    # speech-16k-small that never looks ahead (left padding only): it streams frame by frame (ndvq.stream).
    "speech-16k-small-causal": replace(SMALL, causal=True),
    # speech-16k-small with the frame-rate decoder (ConvNeXt blocks to an inverse STFT, after Vocos): it learned
    # faster than SEANet at equal steps in our CPU runs (docs/ndvq-that-learns.md, session 10). Non-causal.
    "speech-16k-small-istft": replace(SMALL, decoder="istft"),
    # A model small enough for tests: 250 Hz frames, 256 codes (2 kbps per stage), 4 stages.
    "tiny": CodecConfig(
        sample_rate=16000,
        n_filters=4,
        strides=(2, 4, 8),
        dimension=16,
        lstm_layers=1,
        codebook_size=256,
        num_codebooks=4,
        kmeans_iterations=10,
        bandwidths=(2.0, 4.0, 8.0),
    ),
}
