import math

import numpy as np
import pytest
import torch

from cryonoo.eval.labels import knn_predict, label_recovery

D = 8


def _trajectory(n: int, seed: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Ordered labels 0…99 and latents that are a noisy monotone function of them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 100, n).astype(np.float64)
    t = y / 99.0
    z = np.concatenate([np.stack([t, t**2, np.tanh(2 * t)], 1), np.zeros((n, D - 3))], 1)
    return z + noise * rng.standard_normal((n, D)), y


def test_knn_predict_small_case(device: torch.device) -> None:
    train_z = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]], device=device)
    train_y = np.array([0.0, 2.0, 4.0, 10.0, 30.0])
    query = torch.tensor([[0.9], [10.4]], device=device)
    reg = knn_predict(train_z, train_y, query, k=2)
    assert reg.device.type == device.type and reg.dtype == torch.float64
    torch.testing.assert_close(reg.cpu(), torch.tensor([1.0, 20.0], dtype=torch.float64))
    cls = knn_predict(train_z, np.array([3, 3, 1, 7, 7]), query, k=3, mode="classify")
    assert cls.cpu().tolist() == [3.0, 7.0]
    tie = knn_predict(
        train_z, np.array([5, 2, 9, 9, 9]), torch.tensor([[0.5]]), k=2, mode="classify"
    )
    assert tie.tolist() == [2.0]  # 1-1 tie goes to the smaller label


def test_monotone_latents_recover_labels() -> None:
    z_tr, y_tr = _trajectory(2000, 0)
    z_te, y_te = _trajectory(500, 1)
    r = label_recovery(z_tr, y_tr, z_te, y_te)
    assert r["metric"] == "r2" and r["k"] == 15
    assert r["seen"] > 0.95 and r["unseen"] > 0.95 and abs(r["gap"]) < 0.03
    assert r["spearman_pc1_train"] > 0.95 and r["spearman_pc1_test"] > 0.95
    assert (r["n_fit"], r["n_seen"], r["n_unseen"]) == (1000, 1000, 500)


def test_independent_latents_give_nothing() -> None:
    rng = np.random.default_rng(2)
    _, y_tr = _trajectory(2000, 3)
    _, y_te = _trajectory(500, 4)
    r = label_recovery(rng.standard_normal((2000, D)), y_tr, rng.standard_normal((500, D)), y_te)
    assert -0.2 < r["seen"] <= 0.1 and -0.2 < r["unseen"] <= 0.1
    assert r["spearman_pc1_train"] < 0.1 and r["spearman_pc1_test"] < 0.15


def test_shifted_or_scrambled_test_set() -> None:
    z_tr, y_tr = _trajectory(2000, 5)
    z_te, y_te = _trajectory(500, 6)
    shifted = label_recovery(z_tr, y_tr, z_te + 0.5, y_te)
    scrambled = label_recovery(z_tr, y_tr, z_te, np.random.default_rng(0).permutation(y_te))
    for r in (shifted, scrambled):
        assert r["seen"] > 0.95 and r["unseen"] < 0.3 and r["gap"] > 0.6
    assert scrambled["spearman_pc1_test"] < 0.15 < 0.95 < scrambled["spearman_pc1_train"]


def test_discrete_clusters() -> None:
    rng = np.random.default_rng(7)
    centers = 10.0 * rng.standard_normal((5, D))
    y_tr, y_te = rng.integers(0, 5, 600), rng.integers(0, 5, 200)
    z_tr = centers[y_tr] + 0.1 * rng.standard_normal((600, D))
    z_te = centers[y_te] + 0.1 * rng.standard_normal((200, D))
    r = label_recovery(torch.from_numpy(z_tr), torch.from_numpy(y_tr), z_te, y_te)
    assert r["metric"] == "accuracy" and r["seen"] == 1.0 and r["unseen"] == 1.0 and r["gap"] == 0
    forced = label_recovery(z_tr, y_tr, z_te, y_te, discrete=False)
    assert forced["metric"] == "r2"
    wrong = label_recovery(z_tr, y_tr, z_te, (y_te + 1) % 5)
    assert wrong["unseen"] == 0.0


def test_seeds_reproduce_and_differ() -> None:
    z_tr, y_tr = _trajectory(400, 8, noise=0.3)
    z_te, y_te = _trajectory(100, 9, noise=0.3)
    a = label_recovery(z_tr, y_tr, z_te, y_te, seed=4)
    assert a == label_recovery(z_tr, y_tr, z_te, y_te, seed=4)
    assert a["seen"] != label_recovery(z_tr, y_tr, z_te, y_te, seed=5)["seen"]


def test_small_sets_and_constant_labels() -> None:
    z_tr, y_tr = _trajectory(10, 10)
    r = label_recovery(z_tr, y_tr, z_tr[:3], np.zeros(3), k=15, discrete=False)
    assert r["k"] == 5 and math.isnan(r["unseen"]) and math.isnan(r["spearman_pc1_test"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_train": np.zeros(49)}, "y_train"),
        ({"y_test": np.zeros(21)}, "y_test"),
        ({"z_test": np.zeros((20, 3))}, "z_test"),
        ({"z_train": np.full((50, D), np.inf)}, "z_train"),
        ({"y_test": np.full(20, np.nan)}, "y_test"),
        ({"k": 0}, "k"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {
        "z_train": np.zeros((50, D)),
        "y_train": np.zeros(50),
        "z_test": np.zeros((20, D)),
        "y_test": np.zeros(20),
    } | kwargs
    with pytest.raises(ValueError, match=match):
        label_recovery(**args)


def test_knn_bad_input() -> None:
    with pytest.raises(ValueError, match="mode"):
        knn_predict(np.zeros((5, 2)), np.zeros(5), np.zeros((1, 2)), k=1, mode="vote")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k"):
        knn_predict(np.zeros((5, 2)), np.zeros(5), np.zeros((1, 2)), k=6)
