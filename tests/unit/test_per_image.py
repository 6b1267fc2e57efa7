"""Per-image FSC protocol: a model that returns the exact ground truth scores the maximum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryonoo.data.phantoms import PHANTOMS
from cryonoo.data.simulate import SimulationConfig, simulate_phantom
from cryonoo.eval.per_image import load_gt_volumes, per_image_fsc, pick_one_per_label
from cryonoo.io.dataset import open_dataset


class GroundTruthLookup:
    """Encodes an image to its conformation label (by exact match); decodes a label to its GT."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, gt: torch.Tensor, shift: int):
        self.images, self.labels, self.gt, self.shift = images, labels, gt, shift

    def eval(self):
        return self

    def encode(self, images, ctf=None, trans=None):
        d = torch.cdist(images.flatten(1), self.images.flatten(1))
        return torch.as_tensor(self.labels[d.argmin(1).numpy()], dtype=torch.float32)[:, None]

    def volume(self, z, norm_std=1.0):
        return self.gt[(int(z.item()) + self.shift) % len(self.gt)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = SimulationConfig(box=16, n_images=120, snr=1.0, seed=0, oversample=1)
    phantom = PHANTOMS.build("igg-1d", n_conformations=6)
    return simulate_phantom(tmp_path_factory.mktemp("d"), phantom, cfg)


@pytest.mark.parametrize("split", ["train", "test"])
def test_ground_truth_lookup_is_perfect(data, split):
    dataset = open_dataset(data.root, ind=split, lazy=False)
    labels = data.labels
    gt = load_gt_volumes(data.gt_volumes)
    model = GroundTruthLookup(
        dataset.images(np.arange(len(dataset))), labels[dataset.indices], gt, shift=0
    )
    result = per_image_fsc(model, dataset, labels, gt, norm_std=1.0, seed=0)
    assert sorted(result.labels.tolist()) == sorted(set(labels[dataset.indices].tolist()))
    np.testing.assert_allclose(result.curves, 1.0, atol=1e-9)
    summary = result.summary()
    assert summary["mean"] == pytest.approx(0.5 - 1 / 16) == summary["max_auc"]
    assert summary["std"] == pytest.approx(0.0, abs=1e-9)
    # each chosen image really has the label it was scored against
    np.testing.assert_array_equal(labels[dataset.indices[result.positions]], result.labels)
    # decoding the neighbouring conformation instead scores lower
    wrong = GroundTruthLookup(model.images, model.labels, gt, shift=3)
    assert (
        per_image_fsc(wrong, dataset, labels, gt, norm_std=1.0).summary()["mean"]
        < 0.9 * (summary["mean"])
    )


def test_pick_one_per_label_is_seeded_and_covers_classes():
    labels = np.array([2, 0, 1, 2, 0, 1, 1, 2])
    classes, pos = pick_one_per_label(labels, seed=1)
    assert classes.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(labels[pos], classes)
    assert np.array_equal(pick_one_per_label(labels, seed=1)[1], pos)
    picks = {tuple(pick_one_per_label(labels, seed=s)[1]) for s in range(10)}
    assert len(picks) > 1


def test_gt_volume_errors(tmp_path):
    with pytest.raises(ValueError, match="no ground-truth"):
        load_gt_volumes([])
