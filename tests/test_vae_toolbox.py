"""The VAE inference toolbox on small problems where the answer is known: binarization, decoders, the IWAE
bound's order, the score-function estimator against the exact gradient (with each control variate), exact
enumeration against importance sampling, and the amortization gap."""
import math

import numpy as np

import pytest
import torch
from torch import nn

from gendist.data.binarize import binarize
from gendist.recipes import vae_parts as parts
from gendist.recipes.vae import VAE, VAESettings, leave_one_out_bounds
from gendist.recipes.vae_eval import (exact_log_likelihood, gaussian_elbo, held_out_scores,
                                      importance_sampled_log_likelihood, optimized_posteriors, reduce_held_out)

DIM = 6


def small_vae(settings: VAESettings, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, settings.encoder_out))
    decoder = nn.Sequential(nn.Linear(settings.decoder_in, 16), nn.Tanh(), nn.Linear(16, DIM))
    baseline = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, 1)) if settings.baseline == "learned" else None
    return VAE(encoder, decoder, settings, baseline).double()


def binary_data(count: int = 4, seed: int = 1) -> torch.Tensor:
    return (torch.rand(count, DIM, generator=torch.Generator().manual_seed(seed)) < 0.4).double()


# -- binarization --------------------------------------------------------------------------------------------

def test_binarization_is_keyed_by_sample_id_and_read():
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(100, 164)
    dynamic = binarize(x, ids, "dynamic", 0, (5, 0, 0, 0))
    assert set(dynamic.unique().tolist()) <= {0.0, 1.0}
    # one sample's draw does not depend on which rank / batch position reads it (2 ranks x b = 1 x 2b)
    torch.testing.assert_close(binarize(x[32:], ids[32:], "dynamic", 0, (5, 0, 0, 0)), dynamic[32:])
    assert not torch.equal(binarize(x, ids, "dynamic", 0, (6, 0, 0, 0)), dynamic)  # a new draw per read
    fixed = binarize(x, ids, "fixed", 0, (5, 0, 0, 0))
    torch.testing.assert_close(binarize(x, ids, "fixed", 0, (9, 1, 0, 0)), fixed)  # the same at every read
    assert torch.equal(binarize(x, ids, "none", 0, (0,)), x)


def test_binarization_draws_ones_with_probability_x():
    x = torch.full((4000, 16), 0.3)
    ones = binarize(x, torch.arange(4000), "dynamic", 3, (1, 0, 0, 0)).mean().item()
    assert ones == pytest.approx(0.3, abs=0.01)


# -- decoders ------------------------------------------------------------------------------------------------

def test_categorical_decoder_is_a_normalized_distribution_over_levels():
    levels = 5
    out = torch.randn(1, 2 * levels, 1, 1, dtype=torch.float64)  # (B, C * L, H, W): 2 channels, one pixel
    total = sum(parts.log_likelihood("categorical", torch.tensor([[[[a / 4]], [[b / 4]]]], dtype=torch.float64),
                                     out, None, levels).exp() for a in range(levels) for b in range(levels))
    assert total.item() == pytest.approx(1.0, abs=1e-6)  # computed in float32


def test_gaussian_decoder_with_fixed_std_has_no_variance_parameter():
    vae = small_vae(VAESettings(latent_dim=2, decoder="gaussian", decoder_std=0.5))
    assert "log_var_x" not in dict(vae.named_parameters())
    assert vae.log_var_x.item() == pytest.approx(2 * math.log(0.5))


# -- Gaussian latents: ELBO, IWAE, KL options -----------------------------------------------------------------

def test_elbo_is_below_the_iw_bound_and_the_bound_rises_with_k():
    vae = small_vae(VAESettings(latent_dim=2))
    x = binary_data(200)
    generator = torch.Generator().manual_seed(0)
    bounds = {}
    for k in (1, 5, 50):
        vae.settings = VAESettings(latent_dim=2, k=k)
        noise = torch.randn(k, 200, 2, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            bounds[k] = vae(x, noise)["objective"].mean().item()
    with torch.no_grad():
        elbo = vae.elbo_estimate(x, torch.randn(200, 200, 2, generator=generator, dtype=torch.float64)).mean().item()
    assert bounds[1] == pytest.approx(elbo, abs=0.1)  # k = 1 is the ELBO
    assert elbo < bounds[5] < bounds[50]


def test_monte_carlo_kl_is_unbiased_and_free_bits_only_raise_the_penalty():
    x = binary_data(50)
    analytic = small_vae(VAESettings(latent_dim=3))
    monte_carlo = small_vae(VAESettings(latent_dim=3, kl="monte_carlo"))
    noise = torch.randn(1, 50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        exact = analytic(x, noise)["kl"]
        draws = torch.stack([monte_carlo(x, torch.randn(1, 50, 3, dtype=torch.float64))["kl"] for _ in range(3000)])
        assert draws.mean(0).sub(exact).abs().max().item() < 5 * draws.std(0).max().item() / math.sqrt(3000)
        free = small_vae(VAESettings(latent_dim=3, free_bits=0.5))(x, noise)
        plain = analytic(x, noise)
        assert (free["objective"] <= plain["objective"] + 1e-12).all()
        torch.testing.assert_close(free["elbo"], plain["elbo"])  # the reported ELBO is the true one


# -- discrete latents: score function against the exact gradient ----------------------------------------------

def encoder_gradient(vae: VAE, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d(mean objective)/d(encoder parameters), flattened."""
    vae.zero_grad()
    vae(x, noise)["objective"].mean().backward()
    return torch.cat([p.grad.reshape(-1) for p in vae.encoder.parameters()])


def fit_learned_baseline(vae: VAE, x: torch.Tensor, steps: int = 300) -> None:
    optimizer = torch.optim.Adam(vae.baseline.parameters(), lr=0.02)
    for _ in range(steps):
        noise = torch.randn(1, len(x), vae.settings.encoder_out, dtype=torch.float64)
        terms = vae(x, noise)
        optimizer.zero_grad()
        terms["baseline_loss"].mean().backward()
        optimizer.step()


def score_function_draws(baseline: str, k: int, draws: int = 3000):
    """(exact gradient, draws of the estimator) on a 1 x 4-class categorical latent, 4 data points."""
    x = binary_data()
    exact_vae = small_vae(VAESettings(latent="categorical", latent_dim=1, categories=4, estimator="enumerate"))
    exact = encoder_gradient(exact_vae, x, torch.zeros(1, len(x), 4, dtype=torch.float64))
    vae = small_vae(VAESettings(latent="categorical", latent_dim=1, categories=4, baseline=baseline, k=k))
    if baseline == "learned":
        fit_learned_baseline(vae, x)
    if baseline == "moving_average":  # warm the running mean up on the same model
        with torch.no_grad():
            for _ in range(50):
                vae(x, torch.randn(k, len(x), 4, dtype=torch.float64))
    torch.manual_seed(1)
    samples = torch.stack([encoder_gradient(vae, x, torch.randn(k, len(x), 4, dtype=torch.float64))
                           for _ in range(draws)])
    return exact, samples


@pytest.mark.parametrize("baseline", ["none", "moving_average", "learned"])
def test_score_function_gradient_matches_the_exact_gradient_in_expectation(baseline):
    exact, samples = score_function_draws(baseline, k=1)
    standard_error = samples.std(0) / math.sqrt(len(samples))
    z = (samples.mean(0) - exact).abs() / standard_error.clamp(min=1e-12)
    assert z.max().item() < 4.5, z  # 3 SE per coordinate; 4.5 over the ~150 coordinates checked jointly


def test_control_variates_reduce_the_variance():
    _, plain = score_function_draws("none", k=1, draws=1500)
    variance = plain.var(0).sum().item()
    for baseline in ("moving_average", "learned"):
        _, reduced = score_function_draws(baseline, k=1, draws=1500)
        assert reduced.var(0).sum().item() < variance / 2, baseline


def test_vimco_leave_one_out_baselines_replace_one_log_weight_by_the_others_mean():
    f = torch.tensor([[0.0, 1.0], [2.0, -1.0], [4.0, 0.5]], dtype=torch.float64)  # (K=3, B=2)
    expected = torch.stack([torch.logsumexp(torch.stack([(f[1] + f[2]) / 2, f[1], f[2]]), 0),
                            torch.logsumexp(torch.stack([f[0], (f[0] + f[2]) / 2, f[2]]), 0),
                            torch.logsumexp(torch.stack([f[0], f[1], (f[0] + f[1]) / 2]), 0)]) - math.log(3)
    torch.testing.assert_close(leave_one_out_bounds(f), expected)


def test_vimco_gradient_is_unbiased_for_the_iw_bound():
    x = binary_data()
    vae = small_vae(VAESettings(latent="bernoulli", latent_dim=2, baseline="vimco", k=3))
    # the exact gradient of E[log mean_k w_k] over all 4^3 joint configurations of three 2-bit samples
    z_all = parts.all_configurations("bernoulli", 2, 2, "cpu", torch.float64)  # (4, 2)
    vae.zero_grad()
    logits, _ = vae.encode(x)
    log_q = parts.log_q_discrete("bernoulli", logits.unsqueeze(0), z_all.unsqueeze(1), 2)  # (4, B)
    log_w = (vae.log_likelihood_k(x, z_all.unsqueeze(1).expand(4, len(x), 2)) + parts.log_prior_discrete(
        "bernoulli", 2, 2) - log_q)  # (4, B)
    combos = torch.cartesian_prod(*[torch.arange(4)] * 3)  # (64, 3)
    bound = torch.logsumexp(log_w[combos], 1) - math.log(3)  # (64, B)
    weight = log_q[combos].sum(1).exp()  # (64, B)
    (weight * bound).sum(0).mean().backward()
    exact = torch.cat([p.grad.reshape(-1) for p in vae.encoder.parameters()])
    torch.manual_seed(2)
    samples = torch.stack([encoder_gradient(vae, x, torch.randn(3, len(x), 2, dtype=torch.float64))
                           for _ in range(3000)])
    z = (samples.mean(0) - exact).abs() / (samples.std(0) / math.sqrt(len(samples))).clamp(min=1e-12)
    assert z.max().item() < 4.5


# -- likelihood estimates and the amortization gap ------------------------------------------------------------

def test_importance_sampling_converges_to_the_enumerated_likelihood_and_beats_the_prior_estimate():
    vae = small_vae(VAESettings(latent="bernoulli", latent_dim=3, estimator="enumerate"))
    x = binary_data(8)
    with torch.no_grad():
        exact = exact_log_likelihood(vae, x)
        estimate, ess = importance_sampled_log_likelihood(vae, x, 4000, torch.Generator().manual_seed(0), budget=3000)
        prior, prior_ess = importance_sampled_log_likelihood(vae, x, 4000, torch.Generator().manual_seed(0),
                                                             proposal="prior")
    torch.testing.assert_close(estimate.double(), exact.double(), atol=0.02, rtol=0)
    torch.testing.assert_close(prior.double(), exact.double(), atol=0.05, rtol=0)
    assert ((ess >= 1) & (ess <= 4000)).all() and ((prior_ess >= 1) & (prior_ess <= 4000)).all()


def test_per_datapoint_optimization_closes_part_of_the_amortization_gap():
    vae = small_vae(VAESettings(latent_dim=2))
    x = binary_data(20)
    generator = torch.Generator().manual_seed(0)
    mean, log_var = vae.encode(x)
    eps = torch.randn(200, 20, 2, generator=generator, dtype=torch.float64)
    best_mean, best_log_var = optimized_posteriors(vae, x, 200, 0.05, generator)
    with torch.no_grad():
        amortized = gaussian_elbo(vae, x, mean, log_var, eps)
        optimized = gaussian_elbo(vae, x, best_mean.double(), best_log_var.double(), eps)
    assert (optimized - amortized).mean().item() > 0.05  # an untrained encoder leaves a clear gap


def test_active_units_count_posterior_means_that_vary_over_the_data():
    means = torch.zeros(100, 3)
    means[:, 0] = torch.linspace(-1, 1, 100)  # variance 0.34: active
    means[:, 1] = torch.linspace(-0.05, 0.05, 100)  # variance 0.0009: inactive
    from gendist.evaluation import _reduce_scores

    class Recipe:
        reduce_scores = staticmethod(reduce_held_out)

    chunks = [{"posterior_mean": means[:60].numpy(), "test_nll": np.full(60, 1.0)},
              {"posterior_mean": means[60:].numpy(), "test_nll": np.full(40, 3.5)}]
    reduced = _reduce_scores(Recipe(), chunks)
    assert reduced == {"active_units": 1, "latent_dim": 3, "test_nll": 2.0}


# -- per-datapoint (non-amortized) state ----------------------------------------------------------------------

def test_local_table_steps_only_the_rows_read_like_adam_on_those_rows():
    from gendist.engine.local_tables import LocalTable, TableSpec

    table = LocalTable("posterior", TableSpec(3, (0.0, 0.0, 0.0), lr=0.1), np.array([0, 2, 4, 6]), torch.device("cpu"))
    reference = torch.zeros(2, 3, requires_grad=True)  # the rows of samples 2 and 6, under torch's Adam
    adam = torch.optim.Adam([reference], lr=0.1)
    target = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    for _ in range(5):
        rows = table.rows(torch.tensor([6, 2]))
        ((rows - target.flip(0)) ** 2).sum().backward()
        table.step(torch.tensor([6, 2]), rows, scale=1.0)
        adam.zero_grad()
        ((reference - target) ** 2).sum().backward()
        adam.step()
    torch.testing.assert_close(table.table[[1, 3]], reference.detach())
    assert table.table[[0, 2]].abs().sum() == 0 and table.steps.tolist() == [0, 5, 0, 5]  # untouched rows
    with pytest.raises(Exception, match="not held by this rank"):
        table.rows(torch.tensor([3]))


def test_local_tables_reshard_when_the_world_size_changes():
    from gendist.engine.local_tables import LocalTable, TableSpec

    spec = TableSpec(2, (0.0, 0.0), lr=0.1)
    ranks = [LocalTable("phi", spec, np.arange(rank, 10, 2), torch.device("cpu")) for rank in range(2)]
    for table in ranks:
        table.table.copy_(table.ids.float().unsqueeze(1).repeat(1, 2))  # row value = its sample id
        table.steps.fill_(3)
    states = [table.state_dict() for table in ranks]
    alone = LocalTable("phi", spec, np.arange(10), torch.device("cpu"))
    alone.load_state_dicts(states)
    torch.testing.assert_close(alone.table[:, 0], torch.arange(10).float())
    three = LocalTable("phi", spec, np.arange(1, 10, 3), torch.device("cpu"))  # rank 1 of 3
    three.load_state_dicts([alone.state_dict()])
    torch.testing.assert_close(three.table[:, 1], torch.tensor([1.0, 4.0, 7.0]))
    assert three.steps.tolist() == [3, 3, 3]


def test_owner_split_mode_gives_every_sample_one_fixed_rank(tmp_path):
    from gendist.data import ShardLoader, load_manifest, prepare_dataset

    np.savez(tmp_path / "points.npz", x=np.random.default_rng(0).random((280, 2)).astype(np.float32))
    prepare_dataset(f"npz:{tmp_path / 'points.npz'}", tmp_path / "data", shard_size=100, test_fraction=0.1)
    manifest = load_manifest(tmp_path / "data")
    urls = [str(tmp_path / "data" / shard["name"]) for shard in manifest["splits"]["train"]["shards"]]
    seen = {}
    for rank in range(2):
        loader = ShardLoader(urls, manifest, batch_size=20, seed=1, rank=rank, world_size=2, split_mode="owner")
        batches = iter(loader)
        for epoch in range(2):
            ids = torch.cat([next(batches)["idx"] for _ in range(loader.num_batches())])
            assert set((ids % 2).tolist()) == {rank} and len(set(ids.tolist())) == len(ids)
            seen.setdefault(rank, []).append(ids)
        assert len(urls) >= 2 and loader.num_batches() == 252 // 2 // 20  # 126 owned samples: 6 full batches
    assert not torch.equal(seen[0][0], seen[0][1])  # a new order each epoch, the same owner


def test_per_datapoint_vae_reads_its_rows_and_has_no_encoder():
    settings = VAESettings(latent_dim=2, inference="per_datapoint")
    vae = VAE(None, nn.Linear(2, DIM).double(), settings).double()
    x = binary_data(5)
    rows = torch.zeros(5, 4, dtype=torch.float64, requires_grad=True)
    vae(x, torch.randn(1, 5, 2, dtype=torch.float64), 1.0, rows)["objective"].sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    with pytest.raises(Exception, match="no encoder"):
        vae.encode(x)


# -- the training loss and held-out scoring as the recipe runs them -------------------------------------------

class SeededNoise:
    """A batch's noise source: every call draws torch.randn(rows, *tail) from the same seed (float64)."""

    def randn(self, rows: int, *tail: int) -> torch.Tensor:
        return torch.randn(rows, *tail, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def digits_vae_recipe(*overrides: str):
    from gendist.config import load_config
    from gendist.data.info import DataInfo
    from gendist.recipes import Nets
    from gendist.recipes.vae import VAERecipe

    config = load_config("configs/vae_digits.yaml", ["model.arch=mlp", "model.hidden=16", "model.depth=1",
                                                     "model.latent_dim=3", *overrides])
    torch.manual_seed(0)
    recipe = VAERecipe(config, DataInfo("images", (1, 4, 4)))
    return recipe, Nets({name: network.double() for name, network in recipe.build_networks().items()})


def test_iwae_training_loss_is_the_k_sample_importance_weighted_bound():
    """Bugs caught: IWAE training (vae.k > 1) silently drawing one latent sample per datapoint in `elbo_loss`,
    and the k > 1 objective averaging the log-weights (the ELBO) instead of log-mean-exp-ing them. The loss the
    recipe's phase returns is checked against -log (1/k) sum_k p(x, z_k) / q(z_k|x) computed here with
    torch.distributions from the same k noise rows. Measured (k = 5, 64 rows, float64, an untrained encoder):
    difference 0.0 (round-off, < 1e-15); drawing one sample instead moves the loss by 0.055 and averaging the
    log-weights by 0.128 (the tolerance 1e-9 is > 1e6 x the first and < 1e-7 x the others)."""
    from gendist.recipes.base import Batch

    k, rows = 5, 64
    recipe, nets = digits_vae_recipe(f"vae.k={k}")
    (phase,) = recipe.phases()
    x = (torch.rand(rows, 1, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    loss = phase.loss(nets, Batch(rows, x, None, SeededNoise()), 0)["loss"]
    eps = SeededNoise().randn(rows, k, 3).transpose(0, 1)  # (k, B, Z): row b's k draws are its own
    with torch.no_grad():
        mean, log_var = nets.vae.encoder(x.flatten(1)).chunk(2, dim=-1)
        std = torch.exp(0.5 * log_var.clamp(-12.0, 8.0))
        z = mean + std * eps
        logits = nets.vae.decoder(z.reshape(k * rows, 3)).reshape(k, rows, -1)
        log_p_x = torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1).expand(k, rows, 16)).sum(-1)
        log_p_z = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_q = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
        bound = torch.logsumexp(log_p_x + log_p_z - log_q, 0) - math.log(k)  # (B,)
    assert abs(loss.item() - (-bound.mean().item())) < 1e-9, (loss.item(), -bound.mean().item())


def decoder_call_rows(vae: VAE, x: torch.Tensor, config) -> list[int]:
    """The rows each decoder call of held-out scoring decodes, in call order."""
    calls = []
    handle = vae.decoder.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    try:
        with torch.no_grad():
            held_out_scores(vae, x, config, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    return calls


def count_decoder_calls(vae: VAE, x: torch.Tensor, config) -> int:
    return len(decoder_call_rows(vae, x, config))


@pytest.mark.parametrize("latent", ["gaussian", "bernoulli"])
def test_held_out_scoring_makes_the_same_decoder_calls_for_a_short_last_chunk(latent):
    """Bug caught: importance-sampling (or enumeration) blocks sized by the rows of the chunk being scored
    instead of the budget over evaluation's chunk size (BLOCK_ROWS): a rank whose last held-out chunk is short
    makes fewer decoder calls than the others, and under FSDP/ZeRO-3 (each forward a collective) the ranks
    hang. The process tests' chunks fit one block. Budget 12,000 values / (500 rows x 6 values) = 4 samples
    (configurations) per call: Gaussian: 10 posterior + 6 prior samples = 3 + 2 calls, plus 1 for the ELBO;
    Bernoulli (2^3 = 8 configurations, enumerated exactly): 2 calls, plus 1 for the ELBO, 2 for the prior
    estimate."""
    from gendist.config import VAEConfig

    settings = VAESettings(latent=latent, latent_dim=3, estimator="enumerate" if latent != "gaussian" else "reinforce")
    vae = small_vae(settings).float()  # evaluation's noise is float32
    config = VAEConfig(eval_samples=10, prior_samples=6, eval_budget=12_000, gap_steps=0)
    full, short = binary_data(500, seed=2).float(), binary_data(37, seed=3).float()
    expected = 1 + 3 + 2 if latent == "gaussian" else 1 + 2 + 2
    assert count_decoder_calls(vae, full, config) == expected
    assert count_decoder_calls(vae, short, config) == expected


def linear_vae_28() -> tuple[VAE, torch.Tensor]:
    """A linear Gaussian-latent VAE of 28x28 images (float32) and 500 binary 28x28 images (a chunk's rows)."""
    settings = VAESettings(latent="gaussian", latent_dim=3)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, settings.encoder_out))
    decoder = nn.Sequential(nn.Linear(settings.decoder_in, 28 * 28), nn.Unflatten(1, (1, 28, 28)))
    x = (torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    return VAE(encoder, decoder, settings).float(), x


def test_a_likelihood_block_holds_the_budget_in_decoded_values_at_every_image_size():
    """Bug caught: `vae.eval_budget` counted as decoder calls: a block of 28x28 images decodes 12x the values
    (and activations) of the 8x8 digits' block, so the shipped VAE config's end-of-run likelihood on a user's
    28x28 images took 11.5 GiB (with 2 ranks, more than the machine). Each call must decode at most the budget's
    values, whatever the image size."""
    from gendist.config import VAEConfig
    from gendist.recipes.vae_eval import DEFAULT_BUDGET, calls_per_row

    assert calls_per_row(DEFAULT_BUDGET, torch.zeros(1, 64)) == 200  # the 8x8 digits: 100,000 calls per block
    assert calls_per_row(DEFAULT_BUDGET, torch.zeros(1, 1, 28, 28)) == 16
    assert calls_per_row(DEFAULT_BUDGET, torch.zeros(1, 3, 32, 32)) == 4
    assert calls_per_row(10, torch.zeros(1, 3, 32, 32)) == 1  # a budget below one row still makes progress
    pixels = 28 * 28
    vae, x = linear_vae_28()
    rows = decoder_call_rows(vae, x, VAEConfig(eval_samples=100, gap_steps=0))
    assert max(rows) * pixels <= DEFAULT_BUDGET  # 16 samples x 500 rows per call
    assert len(rows) == 1 + math.ceil(100 / 16)  # the ELBO's call, then the importance samples' blocks


def test_the_amortization_gap_decodes_within_the_budget_and_blocking_changes_nothing():
    """Bugs caught: the amortization gap's ELBOs (100 draws x every row) and the per-datapoint optimization's
    steps decoded all their draws in one call, outside `vae.eval_budget`: vae_digits.yaml's end-of-run
    evaluation on a user's 32x32x3 images peaked at 21 GiB for a chunk of 500 held-out images (1.1 GiB
    blocked). And a blocked ELBO or gradient that is not the unblocked one (a block's mean divided by its own
    draws, a gradient kept from the last block only). Measured (float64, the 28x28 linear VAE, 20 rows, a
    budget of 1 draw per call against all at once): ELBO difference 1.1e-13 and optimized means 1.1e-16
    (round-off); averaging each block over its own draws moves the ELBO by 5,559, keeping only the last
    block's reconstruction gradient moves the means by 0.39 after 5 steps. Bounds 1e-8 and 1e-6."""
    from gendist.config import VAEConfig
    from gendist.recipes.vae_eval import DEFAULT_BUDGET, gaussian_elbo

    pixels = 28 * 28
    vae, x = linear_vae_28()
    rows = decoder_call_rows(vae, x, VAEConfig(eval_samples=16, prior_samples=0, gap_steps=2))
    assert max(rows) * pixels <= DEFAULT_BUDGET, max(rows)  # 16 draws x 500 rows per call, the gap's included
    assert len(rows) > 1 + 1 + 2 * math.ceil(100 / 16)  # the gap's two 100-draw ELBOs were cut into blocks

    vae = vae.double()
    x = x[:20].double()
    one_draw = 500 * pixels  # calls_per_row: 1 draw per decoder call
    with torch.no_grad():
        mean, log_var = vae.encode(x)
        eps = torch.randn(7, *mean.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        whole = gaussian_elbo(vae, x, mean, log_var, eps, budget=10**12)
        blocked = gaussian_elbo(vae, x, mean, log_var, eps, budget=one_draw)
    assert (whole - blocked).abs().max().item() < 1e-8
    means = [optimized_posteriors(vae, x, 5, 0.05, torch.Generator().manual_seed(2), samples=7, budget=budget)[0]
             for budget in (10**12, one_draw)]
    assert (means[0] - means[1]).abs().max().item() < 1e-6
