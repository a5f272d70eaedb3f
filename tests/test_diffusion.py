"""Diffusion core: schedules against their closed forms, samplers driven by oracle denoisers, position noise."""

from __future__ import annotations

import pytest
import torch

from rsrestore.diffusion import (
    DDPMSchedule,
    ResidualSchedule,
    ddim_sample,
    ddpm_sample,
    ddpm_training_example,
    position_noise,
    position_noise_fn,
    random_timesteps,
    rddm_sample,
    residual_estimate,
    residual_training_example,
    sampling_time_pairs,
    to_signed,
    to_unit,
)

SHAPE = (2, 3, 8, 8)


def _images(seed: int = 0, dtype=torch.float64):
    """A clean image and a degraded one in [-1, 1] whose residual stays within [-1, 1] (so clipping is a no-op)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=g, dtype=dtype) * 1.6 - 0.8
    x_in = (x0 + 0.3 * torch.randn(SHAPE, generator=g, dtype=dtype)).clamp(-1, 1)
    return x0, x_in


def _fixed_noise(seed: int, dtype=torch.float64):
    """A noise_fn returning known tensors, recorded so a test can rebuild the forward marginals."""
    drawn = {}

    def draw(shape, step):
        g = torch.Generator().manual_seed(seed * 1000 + step)
        drawn[step] = torch.randn(shape, generator=g, dtype=dtype)
        return drawn[step]

    return draw, drawn


def _residual_oracle(schedule: ResidualSchedule, x0, x_in, objective):
    """A denoiser that knows the clean image: it returns the true residual / noise / x0 for the state it sees."""
    abar, bbar = schedule.alphas_cumsum, schedule.betas_cumsum

    def denoise(x_t, t, cond):
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        a, b = abar[t].view(-1, 1, 1, 1).to(x_t), bbar[t].view(-1, 1, 1, 1).to(x_t)
        res = x_in - x0
        noise = (x_t - x0 - a * res) / b
        return {"pred_res": res, "pred_noise": noise, "pred_res_noise": (res, noise), "pred_x0": x0}[objective]

    return denoise


def _ddpm_oracle(schedule: DDPMSchedule, x0, objective):
    abar = schedule.alphas_cumprod

    def denoise(x_t, t, cond):
        a = abar[t].view(-1, 1, 1, 1).to(x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt() if objective == "pred_noise" else x0

    return denoise


# --- schedules --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sum_scale", [1.0, 0.01])
def test_residual_schedule_sums_and_monotone(sum_scale):
    s = ResidualSchedule.rddm(1000, sum_scale)
    assert s.num_timesteps == 1000
    assert s.alphas.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert s.betas2.sum().item() == pytest.approx(sum_scale, rel=1e-12)
    assert (s.alphas.diff() < 0).all() and (s.betas2.diff() > 0).all()
    assert (s.alphas_cumsum.diff() > 0).all() and (s.betas_cumsum.diff() > 0).all()
    assert s.alphas_cumsum[-1].item() == pytest.approx(1.0, abs=1e-12)
    assert s.betas_cumsum[-1].item() == pytest.approx(sum_scale**0.5, rel=1e-12)
    # the papers' 1-based formulas at t = 1 and t = T
    total = 1000 * 1001 / 2
    assert s.alphas[0].item() == pytest.approx(1000 / total) and s.alphas[-1].item() == pytest.approx(1 / total)
    assert s.betas2[0].item() == pytest.approx(sum_scale / total)


def test_ddpm_schedules():
    linear = DDPMSchedule.linear(1000)
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)
    for s in (linear, DDPMSchedule.named("cosine", 1000)):
        abar = s.alphas_cumprod
        assert (abar.diff() < 0).all() and 0.99 < abar[0] < 1 and abar[-1] < 1e-4
    cosine = DDPMSchedule.cosine(1000)
    f = lambda t: torch.cos(torch.tensor((t / 1000 + 0.008) / 1.008 * torch.pi / 2, dtype=torch.float64)) ** 2
    assert cosine.alphas_cumprod[499].item() == pytest.approx((f(500) / f(0)).item(), rel=1e-9)
    with pytest.raises(ValueError, match="unknown DDPM schedule"):
        DDPMSchedule.named("quadratic")


def test_value_range_round_trip():
    x = torch.rand(3, 4)
    assert to_signed(x).min() >= -1 and torch.allclose(to_unit(to_signed(x)), x)


@pytest.mark.parametrize("index", [0, 300, 999])
def test_residual_q_sample_statistics(index):
    s = ResidualSchedule.rddm(1000, 1.0)
    x0 = torch.tensor([-0.5, 0.2, 0.7], dtype=torch.float64).view(1, 3, 1, 1)
    x_in = torch.tensor([0.1, -0.3, 0.9], dtype=torch.float64).view(1, 3, 1, 1)
    n = 200_000
    noise = torch.randn(n, 3, 1, 1, generator=torch.Generator().manual_seed(index), dtype=torch.float64)
    x_t = s.q_sample(x0.expand(n, -1, -1, -1), x_in.expand(n, -1, -1, -1), torch.full((n,), index), noise)
    abar, bbar = s.alphas_cumsum[index].item(), s.betas_cumsum[index].item()
    expected_mean = (x0 + abar * (x_in - x0)).flatten()
    assert torch.allclose(x_t.mean(0).flatten(), expected_mean, atol=5 * bbar / n**0.5)
    assert torch.allclose(x_t.var(0).flatten(), torch.full((3,), bbar**2, dtype=torch.float64), rtol=0.02)


@pytest.mark.parametrize("index", [10, 500, 990])
def test_ddpm_q_sample_statistics(index):
    s = DDPMSchedule.linear(1000)
    x0 = torch.tensor([-0.5, 0.2, 0.7], dtype=torch.float64).view(1, 3, 1, 1)
    n = 200_000
    noise = torch.randn(n, 3, 1, 1, generator=torch.Generator().manual_seed(index), dtype=torch.float64)
    x_t = s.q_sample(x0.expand(n, -1, -1, -1), torch.full((n,), index), noise)
    abar = s.alphas_cumprod[index].item()
    assert torch.allclose(x_t.mean(0).flatten(), abar**0.5 * x0.flatten(), atol=5 / n**0.5)
    assert torch.allclose(x_t.var(0).flatten(), torch.full((3,), 1 - abar, dtype=torch.float64), rtol=0.02)


# --- objectives -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["pred_res", "pred_noise", "pred_res_noise", "pred_x0"])
def test_residual_targets_invert_to_the_clean_image(objective):
    s = ResidualSchedule.rddm(1000, 1.0)
    x0, x_in = _images(1)
    g = torch.Generator().manual_seed(3)
    t = random_timesteps(s.num_timesteps - 1, SHAPE[0], g)  # below T-1: pred_noise cannot see x0 where alphabar = 1
    noise = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    ex = residual_training_example(s, x0, x_in, t, noise)
    assert torch.equal(ex.x_t, s.q_sample(x0, x_in, t, noise))
    est = residual_estimate(s, objective, ex.target(objective), ex.x_t, x_in, t)
    assert torch.allclose(est.x0, x0, atol=1e-9)
    assert torch.allclose(est.noise, noise, atol=1e-9) and torch.allclose(est.res, x_in - x0, atol=1e-9)
    with pytest.raises(ValueError, match="unknown diffusion objective"):
        ex.target("pred_v")


def test_ddpm_training_example():
    s = DDPMSchedule.linear(100)
    x0, _ = _images(2)
    t, noise = torch.tensor([5, 80]), torch.randn(SHAPE, dtype=torch.float64)
    ex = ddpm_training_example(s, x0, t, noise)
    assert torch.equal(ex.target("pred_noise"), noise) and torch.equal(ex.target("pred_x0"), x0)
    assert torch.allclose(ex.x_t, s.q_sample(x0, t, noise))


# --- samplers ---------------------------------------------------------------------------------------------------


def test_sampling_time_pairs():
    assert sampling_time_pairs(1000, 5) == [(999, 799), (799, 599), (599, 399), (399, 199), (199, -1)]
    assert sampling_time_pairs(4, 4) == [(3, 2), (2, 1), (1, 0), (0, -1)]
    with pytest.raises(ValueError, match="between 1 and"):
        sampling_time_pairs(10, 11)


@pytest.mark.parametrize("update", ["use_x_start", "use_pred_noise"])
@pytest.mark.parametrize("objective", ["pred_res", "pred_res_noise", "pred_x0"])
def test_rddm_deterministic_oracle_follows_the_forward_marginals(update, objective):
    """eta = 0: every intermediate state is exactly I_0 + alphabar I_res + betabar eps_T; the end is I_0."""
    s = ResidualSchedule.rddm(1000, 1.0)
    x0, x_in = _images(4)
    noise_fn, drawn = _fixed_noise(5)
    states = {}
    out = rddm_sample(_residual_oracle(s, x0, x_in, objective), s, x_in, steps=5, update=update,
                      objective=objective, noise_fn=noise_fn, callback=lambda k, x: states.__setitem__(k, x))
    assert set(drawn) == {0}  # eta = 0 draws only the starting noise
    eps = drawn[0]
    pairs = sampling_time_pairs(1000, 5)
    for k, (_, t_next) in enumerate(pairs[:-1], start=1):
        expected = x0 + s.alphas_cumsum[t_next] * (x_in - x0) + s.betas_cumsum[t_next] * eps
        assert torch.allclose(states[k], expected, atol=1e-9), (k, t_next)
    assert torch.allclose(out, x0, atol=1e-9)


@pytest.mark.parametrize("update", ["use_x_start", "use_pred_noise"])
@pytest.mark.parametrize("objective", ["pred_res", "pred_noise"])
def test_rddm_stochastic_oracle_recovers_the_target(update, objective):
    s = ResidualSchedule.rddm(200, 1.0)
    x0, x_in = _images(6)
    out = rddm_sample(_residual_oracle(s, x0, x_in, objective), s, x_in, steps=8, eta=1.0, update=update,
                      objective=objective, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-9)


def test_rddm_float32_and_cond_passthrough():
    s = ResidualSchedule.rddm(1000, 1.0)
    x0, x_in = (v.float() for v in _images(7))
    seen = []
    oracle = _residual_oracle(s, x0, x_in, "pred_res")

    def denoise(x_t, t, cond):
        seen.append(cond)
        return oracle(x_t, t, cond)

    out = rddm_sample(denoise, s, x_in, cond=("stage1", "hazy"), steps=5)
    assert out.dtype == torch.float32 and torch.allclose(out, x0, atol=1e-5)
    assert seen == [("stage1", "hazy")] * 5


def _seeded_rddm(seed: int):
    s = ResidualSchedule.rddm(100, 1.0)
    _, x_in = _images(8)
    return rddm_sample(lambda x, t, c: 0.3 * (x - c), s, x_in, steps=4, eta=0.5,
                       generator=torch.Generator().manual_seed(seed))


def test_samplers_are_seeded_by_the_generator():
    assert torch.equal(_seeded_rddm(1), _seeded_rddm(1))
    assert not torch.allclose(_seeded_rddm(1), _seeded_rddm(2))
    s = DDPMSchedule.linear(50)
    run = lambda seed: ddim_sample(lambda x, t, c: 0.5 * x, s, SHAPE, steps=10, eta=1.0,
                                   generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3)) and not torch.allclose(run(3), run(4))


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0"])
def test_ddim_deterministic_oracle_follows_the_forward_marginals(objective):
    s = DDPMSchedule.named("cosine", 100)
    x0, _ = _images(9)
    noise_fn, drawn = _fixed_noise(10)
    states = {}
    out = ddim_sample(_ddpm_oracle(s, x0, objective), s, SHAPE, steps=7, eta=0.0, objective=objective,
                      noise_fn=noise_fn, dtype=torch.float64, callback=lambda k, x: states.__setitem__(k, x))
    abar = s.alphas_cumprod
    # x_T is pure noise; the deterministic path keeps the noise it implies at T-1 (abar_T is small, not 0)
    eps = (drawn[0] - abar[-1].sqrt() * x0) / (1 - abar[-1]).sqrt()
    for k, (_, t_next) in enumerate(sampling_time_pairs(100, 7)[:-1], start=1):
        expected = abar[t_next].sqrt() * x0 + (1 - abar[t_next]).sqrt() * eps
        assert torch.allclose(states[k], expected, atol=1e-9)
    assert torch.allclose(out, x0, atol=1e-9)


def test_ddim_stochastic_oracle_recovers_the_target():
    s = DDPMSchedule.linear(100)
    x0, _ = _images(11)
    noise_fn, drawn = _fixed_noise(12)
    out = ddim_sample(_ddpm_oracle(s, x0, "pred_noise"), s, SHAPE, steps=10, eta=0.7, noise_fn=noise_fn,
                      dtype=torch.float64)
    assert len(drawn) == 10  # the start and one per update except the last
    assert torch.allclose(out, x0, atol=1e-9)


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0"])
def test_ddpm_ancestral_oracle_recovers_the_target(objective):
    s = DDPMSchedule.linear(100)
    x0, _ = _images(13)
    out = ddpm_sample(_ddpm_oracle(s, x0, objective), s, SHAPE, objective=objective, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-9)


def _marginal_moments_hold(states, step, mean, std, n):
    x = states[step].flatten()
    assert abs(x.mean().item() - mean) < 5 * std / n**0.5, (step, x.mean().item(), mean)
    assert x.std().item() == pytest.approx(std, rel=0.04), (step, x.std().item(), std)


def test_ddpm_ancestral_oracle_keeps_the_forward_marginals():
    """Stochastic steps with a true-noise oracle: x_t ~ N(sqrt(abar_t) x0, 1 - abar_t) at every step."""
    s, n = DDPMSchedule.cosine(40), 20_000
    x0 = torch.full((n, 1, 1, 1), 0.6, dtype=torch.float64)
    states = {}
    ddpm_sample(_ddpm_oracle(s, x0, "pred_noise"), s, x0.shape, dtype=torch.float64,
                generator=torch.Generator().manual_seed(0), callback=lambda k, x: states.__setitem__(k, x))
    abar = s.alphas_cumprod
    for step in (5, 20, 35):
        t = s.num_timesteps - 1 - step
        _marginal_moments_hold(states, step, 0.6 * abar[t].sqrt().item(), (1 - abar[t]).sqrt().item(), n)


@pytest.mark.parametrize("update", ["use_x_start", "use_pred_noise"])
def test_rddm_stochastic_oracle_keeps_the_forward_marginals(update):
    s, n = ResidualSchedule.rddm(100, 1.0), 20_000
    x0 = torch.full((n, 1, 1, 1), -0.2, dtype=torch.float64)
    x_in = torch.full((n, 1, 1, 1), 0.5, dtype=torch.float64)
    states = {}
    rddm_sample(_residual_oracle(s, x0, x_in, "pred_res"), s, x_in, steps=5, eta=1.0, update=update,
                generator=torch.Generator().manual_seed(0), callback=lambda k, x: states.__setitem__(k, x))
    for step, (_, t_next) in enumerate(sampling_time_pairs(100, 5)[:-1], start=1):
        mean = -0.2 + s.alphas_cumsum[t_next].item() * 0.7
        _marginal_moments_hold(states, step, mean, s.betas_cumsum[t_next].item(), n)


def test_sampler_argument_errors():
    s = ResidualSchedule.rddm(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="unknown RDDM update"):
        rddm_sample(lambda *a: x, s, x, update="special")
    with pytest.raises(ValueError, match="unknown diffusion objective"):
        rddm_sample(lambda *a: x, s, x, objective="pred_v")
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(lambda *a: x, DDPMSchedule.linear(10), x.shape, steps=2, eta=-1)


# --- position noise ---------------------------------------------------------------------------------------------


def test_position_noise_agrees_where_windows_overlap():
    a = position_noise(7, 3, 10, 20, 32, 40, step=2)
    b = position_noise(7, 3, 30, 45, 32, 40, step=2)
    assert a.shape == (3, 32, 40) and a.dtype == torch.float32
    assert torch.equal(a[:, 20:, 25:], b[:, :12, :15])
    assert not torch.equal(a[:, :12, :15], b[:, :12, :15])
    # a halo beyond the scene edge (negative coordinates) reads the same noise where it overlaps the scene
    c = position_noise(7, 3, -4, -6, 20, 30, step=2)
    d = position_noise(7, 3, 0, 0, 16, 24, step=2)
    assert torch.equal(c[:, 4:, 6:], d)


def test_position_noise_is_standard_normal_and_uncorrelated():
    n = position_noise(0, 4, 0, 0, 256, 256, dtype=torch.float64)
    assert abs(n.mean().item()) < 0.01 and abs(n.std().item() - 1) < 0.01
    assert abs((n.abs() < 1).double().mean().item() - 0.6827) < 0.005
    assert abs((n**4).mean().item() - 3) < 0.05  # Gaussian kurtosis

    def corr(u, v):
        return torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1].abs().item()

    assert corr(n[:, :, 1:], n[:, :, :-1]) < 0.01 and corr(n[:, 1:], n[:, :-1]) < 0.01
    assert corr(n[1:], n[:-1]) < 0.01  # channels
    other_step = position_noise(0, 4, 0, 0, 256, 256, step=1, dtype=torch.float64)
    other_seed = position_noise(1, 4, 0, 0, 256, 256, dtype=torch.float64)
    assert corr(n, other_step) < 0.01 and corr(n, other_seed) < 0.01
    assert not torch.equal(n, other_step)


def test_position_noise_fn_batches_windows():
    draw = position_noise_fn(5, [(0, 0), (3, 4)])
    batch = draw((2, 2, 6, 6), 1)
    assert torch.equal(batch[1], position_noise(5, 2, 3, 4, 6, 6, step=1))
    with pytest.raises(ValueError, match="2 origins"):
        draw((3, 2, 6, 6), 1)


def test_tiled_rddm_sampling_is_seamless_with_position_noise():
    """With a pixel-wise denoiser, sampling two overlapping crops equals sampling the whole image there."""
    s = ResidualSchedule.rddm(100, 1.0)
    g = torch.Generator().manual_seed(0)
    x_in = torch.rand(1, 3, 24, 40, generator=g) * 2 - 1
    denoise = lambda x, t, c: 0.2 * (x - c) + 0.01 * t.view(-1, 1, 1, 1)
    run = lambda image, origins: rddm_sample(denoise, s, image, steps=4, eta=1.0,
                                             noise_fn=position_noise_fn(42, origins))
    whole = run(x_in, [(0, 0)])
    tiles = run(torch.cat([x_in[..., 0:16, 0:24], x_in[..., 8:24, 16:40]]), [(0, 0), (8, 16)])
    assert torch.equal(tiles[0], whole[0, :, 0:16, 0:24]) and torch.equal(tiles[1], whole[0, :, 8:24, 16:40])
