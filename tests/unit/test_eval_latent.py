import itertools
import logging
import math

import numpy as np
import pytest
import torch

import cryonoo.eval.latent as latent_mod
from cryonoo.eval.latent import (
    DEFAULT_BANDWIDTH_GRID,
    cv_bandwidth,
    kde_log_density,
    latent_shift,
    latent_shift_with_null,
    sliced_wasserstein2,
    wasserstein1_exact,
)

D = 8
N_SET = 4000  # per set: n_fit = n_eval = 2000
SHIFT = np.full(D, 1.0 / math.sqrt(D))  # ‖μ‖ = 1


def _gauss(n: int, seed: int, mean: np.ndarray | float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)) + mean


def _reference_kde(x_eval: np.ndarray, x_fit: np.ndarray, h: float) -> np.ndarray:
    """Plain double loop: log of the mean of Gaussian kernels."""
    d = x_fit.shape[1]
    out = np.empty(len(x_eval))
    for i, x in enumerate(x_eval):
        total = 0.0
        for y in x_fit:
            total += math.exp(-np.sum((x - y) ** 2) / (2 * h * h))
        out[i] = math.log(total / len(x_fit)) - 0.5 * d * math.log(2 * math.pi * h * h)
    return out


@pytest.fixture(scope="module", params=[0, 1])
def runs(request: pytest.FixtureRequest) -> dict[str, dict[str, float]]:
    """Null and shifted-Gaussian runs at h = 0.7 for two data/split seeds."""
    s = request.param
    tr = _gauss(N_SET, 10 + s)
    null = latent_shift(tr, _gauss(N_SET, 20 + s), bandwidth=0.7, seed=s, w1_max_points=1000)
    shift = latent_shift(
        tr, _gauss(N_SET, 30 + s, SHIFT), bandwidth=0.7, seed=s, w1_max_points=1000
    )
    return {"null": null, "shift": shift}


def test_kde_matches_double_loop(device: torch.device) -> None:
    rng = np.random.default_rng(0)
    x_eval, x_fit = rng.standard_normal((6, 3)), rng.standard_normal((9, 3)) * 1.5
    for h in (0.3, 1.1):
        got = kde_log_density(torch.from_numpy(x_eval).to(device), torch.from_numpy(x_fit), h)
        assert got.dtype == torch.float64 and got.shape == (6,)
        np.testing.assert_allclose(got.cpu().numpy(), _reference_kde(x_eval, x_fit, h), rtol=1e-12)


def test_kde_chunking_and_far_points(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x_eval, x_fit = rng.standard_normal((50, D)), rng.standard_normal((40, D))
    full = kde_log_density(x_eval, x_fit, 0.5)
    monkeypatch.setattr(latent_mod, "_CHUNK_ELEMENTS", 7 * 40)  # 7 query rows per chunk
    torch.testing.assert_close(kde_log_density(x_eval, x_fit, 0.5), full, rtol=0, atol=1e-12)
    far = kde_log_density(x_eval + 100.0, x_fit, 0.1)  # no underflow to -inf
    assert bool(torch.isfinite(far).all())


def test_cv_bandwidth_gaussian(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cryonoo.eval.latent"):
        h, scores = cv_bandwidth(_gauss(2000, 3), refine=False)
        h_fine, fine = cv_bandwidth(_gauss(2000, 3))
    assert 0.5 <= h <= 0.9 and abs(h_fine - h) <= 0.2 and fine.size == 21
    assert scores.shape == (len(DEFAULT_BANDWIDTH_GRID),) and np.all(np.isfinite(scores))
    assert h == pytest.approx(DEFAULT_BANDWIDTH_GRID[np.argmax(scores)])
    assert "edge" not in caplog.text


def test_cv_bandwidth_warns_at_grid_edge(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cryonoo.eval.latent"):
        h, _ = cv_bandwidth(_gauss(300, 4) * 100.0, folds=3)
    assert h == pytest.approx(9.9)
    assert "edge" in caplog.text


def test_null_is_near_zero(runs: dict[str, dict[str, float]]) -> None:
    r = runs["null"]
    assert abs(r["kld"]) < 0.05 and abs(r["kld_reverse"]) < 0.05
    assert r["tv"] < 0.15 and r["hellinger"] < 0.15 and r["jsd"] < 0.02
    assert r["wd"] < 0.07
    assert r["bandwidth_train"] == r["bandwidth_test"] == 0.7
    assert r["n_train"] == r["n_test"] == N_SET


def test_shifted_gaussians(runs: dict[str, dict[str, float]]) -> None:
    r, null = runs["shift"], runs["null"]
    # metrics.md §4.3 (h = 0.7, n_fit = 5 000): KL 0.333 / 0.351, TV 0.288, Hellinger 0.260
    assert 0.25 < r["kld"] < 0.45 and 0.25 < r["kld_reverse"] < 0.45
    assert 0.24 < r["tv"] < 0.36 and 0.21 < r["hellinger"] < 0.33
    assert 0.04 < r["jsd"] < 0.11
    assert r["wd"] == pytest.approx(1 / math.sqrt(D), abs=0.05)
    for key in ("kld", "kld_reverse", "tv", "hellinger", "jsd", "wd", "w1"):
        assert r[key] > null[key], key


def test_bounds_for_disjoint_sets() -> None:
    r = latent_shift(_gauss(400, 5), _gauss(400, 6, 30.0), bandwidth=0.7)
    assert 0.999 < r["tv"] <= 1.0 and 0.999 < r["hellinger"] <= 1.0
    assert math.log(2) - 1e-3 < r["jsd"] <= math.log(2)
    assert r["kld"] > 100 and r["kld_reverse"] > 100


def test_unequal_sizes_cv_and_null() -> None:
    z_tr, z_te = _gauss(1200, 7), _gauss(500, 8, SHIFT)
    out = latent_shift_with_null(z_tr, z_te, max_points=1000, seed=3)
    shift, null = out["shift"], out["null"]
    # equal sizes by default (the smaller set's), one shared refined bandwidth
    assert shift["n_train"] == shift["n_test"] == 500
    assert null["n_train"] == null["n_test"] == 600
    unequal = latent_shift(z_tr, z_te, max_points=1000, seed=3, equal_size=False)
    assert unequal["n_train"] == 1000 and unequal["n_test"] == 500
    for r in (shift, null):
        assert r["bandwidth_train"] == r["bandwidth_test"] and 0.1 <= r["bandwidth_train"] <= 2
        assert 0 <= r["tv"] <= 1 and 0 <= r["hellinger"] <= 1 and 0 <= r["jsd"] <= math.log(2)
    assert shift["wd"] > null["wd"] and shift["kld"] > null["kld"]
    again = latent_shift_with_null(z_tr, z_te, max_points=1000, seed=3)
    assert again == out


def test_sliced_w2_one_dimensional_quantiles() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((3, 1)), rng.standard_normal((5, 1)) + 0.4
    t = (np.arange(200_000) + 0.5) / 200_000  # midpoint rule on the quantile functions
    qa = np.sort(a[:, 0])[np.floor(t * 3).astype(int)]
    qb = np.sort(b[:, 0])[np.floor(t * 5).astype(int)]
    ref = math.sqrt(np.mean((qa - qb) ** 2))
    assert sliced_wasserstein2(a, b, n_projections=3) == pytest.approx(ref, rel=1e-4)
    c = rng.standard_normal((6, 1))
    equal = math.sqrt(np.mean((np.sort(a[:, 0].repeat(2)) - np.sort(c[:, 0])) ** 2))
    assert sliced_wasserstein2(a.repeat(2, 0), c, n_projections=2) == pytest.approx(equal)
    assert sliced_wasserstein2(b, b) == pytest.approx(0.0, abs=1e-12)


def test_w1_exact_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) + 0.5
    cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
    best = min(cost[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
    assert wasserstein1_exact(a, b) == pytest.approx(best, rel=1e-12)
    assert wasserstein1_exact(a, b[:4]) >= 0.0  # subsampled to 4 each


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z_test": np.zeros((100, 3))}, "z_test"),
        ({"z_train": np.zeros((5, D))}, "z_train"),
        ({"z_test": np.full((100, D), np.nan)}, "z_test"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"bandwidth": float("nan")}, "bandwidth"),
        ({"max_points": 4}, "max_points"),
    ],
)
def test_latent_shift_bad_input(kwargs: dict, match: str) -> None:
    args = {"z_train": _gauss(100, 0), "z_test": _gauss(100, 1)} | kwargs
    with pytest.raises(ValueError, match=match):
        latent_shift(**args)


def test_other_bad_input() -> None:
    with pytest.raises(ValueError, match="x_eval"):
        kde_log_density(np.zeros((3, 2)), np.zeros((4, 3)), 1.0)
    with pytest.raises(ValueError, match="x"):
        cv_bandwidth(np.zeros((3, 2)), folds=5)
    with pytest.raises(ValueError, match="grid"):
        cv_bandwidth(np.zeros((30, 2)), grid=[0.5, -1.0])
    with pytest.raises(ValueError, match="b"):
        sliced_wasserstein2(np.zeros((3, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="a"):
        wasserstein1_exact(np.zeros((3,)), np.zeros((4, 3)))
    with pytest.raises(TypeError, match="z_train"):
        latent_shift([[0.0] * D] * 20, _gauss(20, 0))


def test_cv_bandwidth_refines_below_the_grid_for_small_scale_latents():
    """Latents 100× smaller than unit scale: the optimum is found below the paper's grid."""
    from cryonoo.eval.latent import cv_bandwidth

    x = 0.01 * torch.randn(600, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h, scores = cv_bandwidth(x)
    assert 0.001 < h < 0.01 and scores.size == 21
    h_plain, _ = cv_bandwidth(x, refine=False)
    assert h_plain == pytest.approx(0.1)
