import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ndvq import ResidualNDVQ, ResidualVQ
from ndvq.quantization.ndvq import NormalCodebook


def brute_force_log_density(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """[N, K] from an explicit [N, K, D] tensor: the definition, for comparison."""
    diff = x[:, None, :] - mean[None]
    return (-0.5 * diff.pow(2) / log_var.exp() - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_likelihood_assignment_equals_brute_force_argmax() -> None:
    book = NormalCodebook(size=64, dim=8).double()
    with torch.no_grad():
        book.codebook[:, 8:] = torch.randn(64, 8, dtype=torch.float64)  # unequal variances
    x = 2 * torch.randn(500, 8, dtype=torch.float64)
    reference = brute_force_log_density(x, book.mean, book.log_variance)
    torch.testing.assert_close(book.log_likelihood(x).double(), reference, rtol=1e-4, atol=1e-3)
    agree = (book.encode(x) == reference.argmax(1)).float().mean()
    assert agree == 1.0


def test_equal_variances_give_euclidean_nearest_neighbour() -> None:
    book = NormalCodebook(size=128, dim=16)
    with torch.no_grad():
        book.codebook[:, 16:] = 0.7  # one shared variance
    x = torch.randn(1000, 16)
    assert torch.equal(book.encode(x), torch.cdist(x, book.mean).argmin(1))


def test_variance_shifts_assignment_towards_wider_gaussian() -> None:
    book = NormalCodebook(size=2, dim=1)
    with torch.no_grad():
        book.codebook[:] = torch.tensor([[0.0, math.log(0.01)], [1.0, math.log(4.0)]])
    # 0.4 is nearer to mean 0 but far more likely under the wide Gaussian at 1.
    assert book.encode(torch.tensor([[0.4]])).item() == 1


@pytest.mark.parametrize("make", [ResidualNDVQ, ResidualVQ])
def test_contract_shapes(make) -> None:
    quantizer = make(dim=16, num_codebooks=4, codebook_size=32)
    z = torch.randn(3, 16, 20)
    quantized, codes, losses = quantizer(z, n_q=3)
    assert quantized.shape == z.shape
    assert codes.shape == (3, 3, 20) and codes.dtype == torch.int64
    assert codes.max() < 32 and set(losses) and all(v.ndim == 0 for v in losses.values())
    quantizer.eval()
    assert torch.equal(quantizer.encode(z, 3), quantizer(z, 3).codes)
    torch.testing.assert_close(quantizer.decode(quantizer.encode(z, 3)), quantizer(z, 3).quantized)


@pytest.mark.parametrize("make", [ResidualNDVQ, ResidualVQ])
def test_assignment_bias_is_a_log_prior_on_each_stage(make) -> None:
    """A zero bias changes nothing; a bias is added to the scores (a log prior: a heavy one wins every frame);
    each stage after the first is given the codes the stage before chose."""
    quantizer = make(dim=8, num_codebooks=3, codebook_size=16)
    z = torch.randn(2, 8, 30)
    quantizer(z, n_q=3)  # k-means initialisation
    quantizer.eval()
    plain = quantizer.encode(z, 3)
    assert torch.equal(quantizer.encode(z, 3, lambda stage, previous: torch.zeros(16)), plain)
    seen = []

    def bias(stage: int, previous: torch.Tensor | None) -> torch.Tensor:
        seen.append(None if previous is None else previous.clone())
        prior = torch.full((16,), -1e6)
        prior[5 + stage] = 0.0
        return prior

    codes = quantizer.encode(z, 3, bias)
    assert all(torch.all(codes[:, s] == 5 + s) for s in range(3))
    assert seen[0] is None and torch.all(seen[1] == 5) and torch.all(seen[2] == 6)
    # A per-frame bias [N, K] decides frame by frame: favour code 3 on the first stage's even frames only.
    rows = torch.zeros(60, 16)
    rows[::2, 3] = 1e6
    first = quantizer.encode(z, 1, lambda stage, previous: rows)
    frames = first.transpose(1, 2).reshape(-1)
    assert torch.all(frames[::2] == 3) and torch.equal(frames[1::2], plain[:, :1].transpose(1, 2).reshape(-1)[1::2])


def test_training_samples_and_eval_returns_means() -> None:
    quantizer = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=16)
    z = torch.randn(2, 8, 50)
    quantizer.train()
    first, second = quantizer(z, 2).quantized, quantizer(z, 2).quantized
    assert not torch.allclose(first, second)
    quantizer.eval()
    out = quantizer(z, 2)
    torch.testing.assert_close(out.quantized, quantizer(z, 2).quantized, rtol=0, atol=0)
    torch.testing.assert_close(out.quantized, quantizer.decode(out.codes))
    means = quantizer.codebooks[0].mean[out.codes[:, 0]] + quantizer.codebooks[1].mean[out.codes[:, 1]]
    torch.testing.assert_close(out.quantized, means.permute(0, 2, 1))


def test_mean_last_gives_the_decoder_only_the_last_stage_noise() -> None:
    """With residual "mean", every stage's sampling noise reaches the decoder; with "mean-last", only the
    last active stage's, which is smaller (what is left after every stage)."""
    z = torch.randn(4, 8, 400)
    spread = {}
    for residual in ("mean", "mean-last"):
        torch.manual_seed(0)
        quantizer = ResidualNDVQ(dim=8, num_codebooks=4, codebook_size=16, residual=residual)
        quantizer.initialise(z)
        quantizer.train()
        out = quantizer(z, 4)
        noise = out.quantized - quantizer.decode(out.codes)  # the training output minus the means
        spread[residual] = noise.std().item()
    last = quantizer.codebooks[3].log_variance.exp().sqrt().mean().item()
    assert spread["mean-last"] == pytest.approx(last, rel=0.2)
    assert spread["mean-last"] < 0.7 * spread["mean"]


@pytest.mark.parametrize("make", [ResidualNDVQ, ResidualVQ])
def test_straight_through_gradient_is_identity(make) -> None:
    quantizer = make(dim=8, num_codebooks=4, codebook_size=16)
    z = torch.randn(2, 8, 30, requires_grad=True)
    upstream = torch.randn(2, 8, 30)
    (quantizer(z, 4).quantized * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)


def test_projection_when_code_dimension_differs() -> None:
    quantizer = ResidualNDVQ(dim=16, num_codebooks=2, codebook_size=8, codebook_dim=4)
    assert quantizer.codebooks[0].codebook.shape == (8, 8)
    z = torch.randn(2, 16, 10, requires_grad=True)
    out = quantizer(z, 2)
    (out.quantized.sum() + sum(out.losses.values())).backward()
    assert quantizer.project_in[0].weight.grad is not None and quantizer.project_out[1].weight.grad is not None


def test_paper_and_nll_losses() -> None:
    z = torch.randn(2, 8, 40)
    paper = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=16, estimator="gradient")(z, 2).losses
    nll = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=16, estimator="gradient", loss="nll")(z, 2).losses
    ema = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=16)(z, 2).losses
    assert set(paper) == {"commitment", "codebook", "variance"}
    assert set(nll) == {"commitment", "nll"}
    assert set(ema) == {"commitment"}
    with pytest.raises(ValueError):
        ResidualNDVQ(loss="elbo")
    with pytest.raises(ValueError):
        ResidualNDVQ(estimator="vae")


def test_paper_loss_gives_the_variance_no_reconstruction_gradient() -> None:
    quantizer = ResidualNDVQ(dim=8, num_codebooks=1, codebook_size=16, estimator="gradient")
    quantizer(torch.randn(2, 8, 40), 1)  # initialise
    quantizer(torch.randn(2, 8, 40, requires_grad=True), 1).quantized.pow(2).sum().backward()
    assert quantizer.codebooks[0].codebook.grad is None or not quantizer.codebooks[0].codebook.grad.any()


@pytest.mark.parametrize("estimator", ["ema", "gradient"])
def test_kmeans_initialisation_happens_once_and_survives_reload(estimator) -> None:
    quantizer = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=16, estimator=estimator)
    book = quantizer.codebooks[0]
    assert not book.initialised
    data = torch.randn(4, 8, 100) + 5.0
    quantizer(data, 1)
    assert book.initialised and not quantizer.codebooks[1].initialised  # stage 2 was not used
    assert (book.mean.mean() - 5.0).abs() < 0.5  # means moved onto the data
    if estimator == "gradient":  # the paper's start: unit variance
        assert torch.equal(book.log_variance, torch.zeros(16, 8))
    else:  # the clusters' spread, well under the data's unit variance
        assert book.log_variance.exp().mean() < 0.9
    quantizer.eval()
    means = book.mean.detach().clone()
    quantizer(torch.randn(4, 8, 100) - 5.0, 1)
    assert torch.equal(book.mean, means)  # no second initialisation, no update in eval mode
    reloaded = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=16, estimator=estimator)
    reloaded.load_state_dict(quantizer.state_dict())
    assert reloaded.codebooks[0].initialised
    torch.testing.assert_close(reloaded.codebooks[0].codebook, book.codebook)
    quantizer.train()
    quantizer(torch.randn(4, 8, 100) - 5.0, 1)
    assert not torch.equal(book.mean, means) or estimator == "gradient"  # EMA updates in train mode


def test_rvq_revives_dead_codes_with_fresh_statistics() -> None:
    quantizer = ResidualVQ(dim=4, num_codebooks=1, codebook_size=64)
    book = quantizer.codebooks[0]
    quantizer(torch.randn(1, 4, 64), 1)
    for _ in range(3):  # data concentrated on a few codes: the others expire and are replaced
        quantizer(torch.randn(1, 4, 16) * 0.01, 1)
    assert (book.cluster_size >= book.dead_code_threshold - 1e-6).all()
    torch.testing.assert_close(book.embedding_sum / book.cluster_size[:, None], book.embedding)


def _two_rank_worker(rank: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different data and different local random draws on each rank
    ndvq = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=16)
    rvq = ResidualVQ(dim=8, num_codebooks=2, codebook_size=16)
    for _ in range(3):
        z = torch.randn(2, 8, 40) + rank
        ndvq(z, 2)
        rvq(z, 2)
    states = {f"ndvq.{k}": v for k, v in ndvq.state_dict().items()}
    states.update({f"rvq.{k}": v for k, v in rvq.state_dict().items()})
    gathered = [None, None]
    dist.all_gather_object(gathered, states)
    if rank == 0:
        same = all(torch.equal(gathered[0][k], gathered[1][k]) for k in states)
        with open(result_file, "w") as handle:
            handle.write("same" if same else "different")
    dist.destroy_process_group()


def test_initialisation_and_ema_identical_on_two_gloo_ranks(tmp_path) -> None:
    result = tmp_path / "result"
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(result)), nprocs=2)
    assert result.read_text() == "same"


def clustered_latents(clusters: int, frames: int, dim: int = 8, spread: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Frames [frames, dim] around `clusters` random centres with per-dimension std `spread`."""
    return labelled_latents(clusters, frames, dim, spread, seed)[0]


def labelled_latents(clusters: int, frames: int, dim: int = 8, spread: float = 0.1, seed: int = 0):
    """clustered_latents and each frame's cluster [frames]."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    labels = torch.randint(clusters, (frames,), generator=generator)
    return centres[labels] + spread * torch.randn(frames, dim, generator=generator), labels


def train_alone(quantizer: ResidualNDVQ, data: torch.Tensor, steps: int, batch: int = 256) -> None:
    generator = torch.Generator().manual_seed(1)
    quantizer.train()
    for _ in range(steps):
        index = torch.randint(data.shape[0], (batch,), generator=generator)
        quantizer(data[index].t()[None], quantizer.num_codebooks)


def usage_bits(codes: torch.Tensor, size: int) -> float:
    p = torch.bincount(codes, minlength=size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def test_ema_ndvq_is_scale_equivariant() -> None:
    data = clustered_latents(32, 4000)
    codes = []
    for scale in (1e-3, 1.0):
        torch.manual_seed(0)
        quantizer = ResidualNDVQ(dim=8, num_codebooks=2, codebook_size=64)
        quantizer.initialise(data[:1000] * scale)
        train_alone(quantizer, data * scale, steps=50)
        codes.append(quantizer.eval().encode(data.t()[None] * scale, 2)[0])
    agree = (codes[0] == codes[1]).float().mean()
    assert agree > 0.999
    assert usage_bits(codes[0][0], 64) == pytest.approx(usage_bits(codes[1][0], 64), abs=0.01)
    assert usage_bits(codes[0][0], 64) > 4.5  # 32 clusters: 5 bits, and no collapse at the small scale


def test_ema_ndvq_keeps_usage_and_learns_the_spread() -> None:
    """64 Gaussian clusters, 150 steps of a learnable encoder with the trainer's optimiser."""
    from ndvq.train.config import OptimConfig
    from ndvq.train.trainer import build_optimizer

    torch.manual_seed(0)
    data, labels = labelled_latents(64, 20000, spread=0.05)
    model = torch.nn.ModuleDict(
        {"encoder": torch.nn.Linear(8, 8), "quantizer": ResidualNDVQ(dim=8, num_codebooks=1, codebook_size=64)}
    )
    with torch.no_grad():
        model["encoder"].weight.copy_(torch.eye(8))
        model["encoder"].bias.zero_()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    model["quantizer"].initialise(model["encoder"](data[:640]).detach())
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        x = data[torch.randint(data.shape[0], (256,), generator=generator)]
        out = model["quantizer"](model["encoder"](x).t()[None], 1)
        loss = (out.quantized[0].t() - x).pow(2).mean() + sum(out.losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    book = model["quantizer"].codebooks[0]
    with torch.no_grad():
        latent = model["encoder"](data)
        codes = model["quantizer"].eval().encode(latent.t()[None], 1)[0, 0]
        centres = torch.zeros(64, 8).index_add_(0, labels, latent) / torch.bincount(labels, minlength=64)[:, None]
        spread = (latent - centres[labels]).pow(2).mean(0).sqrt()  # the true spread of the encoded clusters [D]
    assert usage_bits(codes, 64) >= 5.0
    used = torch.bincount(codes, minlength=64) > 0
    sigma = book.log_variance[used].exp().sqrt()
    assert ((sigma > spread / 2) & (sigma < spread * 2)).all()


@pytest.mark.parametrize("make", [ResidualNDVQ, ResidualVQ])
def test_no_duplicate_centroids_when_frames_are_fewer_than_codes(make) -> None:
    quantizer = make(dim=8, num_codebooks=1, codebook_size=256)
    quantizer.initialise(torch.randn(100, 8))
    vectors = quantizer.codebooks[0].decode(torch.arange(256))
    assert torch.unique(vectors, dim=0).shape[0] == 256


@pytest.mark.parametrize("make", [ResidualNDVQ, ResidualVQ])
def test_assignment_under_bf16_autocast_equals_float32(make) -> None:
    quantizer = make(dim=16, num_codebooks=3, codebook_size=128)
    data = clustered_latents(128, 4000, dim=16) * 0.004  # the scale of an untrained encoder's latent
    quantizer.initialise(data)
    z = data.t()[None]
    expected = quantizer.eval().encode(z, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer.encode(z, 3), expected)
