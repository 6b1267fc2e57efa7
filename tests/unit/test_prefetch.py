"""Reading ahead on a thread: same items, same order, errors where they happened, clean stops."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from cryonoo.io.dataset import ParticleDataset
from cryonoo.io.mrc import write_mrc
from cryonoo.io.prefetch import prefetched
from cryonoo.io.stack import open_images
from cryonoo.models.vae import HetVAE
from cryonoo.train.encode import encode_dataset


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetched_yields_every_item_in_order(depth):
    assert list(prefetched(range(50), depth)) == list(range(50))
    assert list(prefetched([], depth)) == []


def test_prefetched_reads_ahead_of_the_consumer():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    it = prefetched(items(), depth=3)
    assert next(it) == 0
    for _ in range(200):  # the producer fills the queue while the consumer holds item 0
        if len(produced) >= 4:
            break
        threading.Event().wait(0.01)
    assert len(produced) >= 4  # item 0 handed out + 3 waiting
    assert len(produced) <= 5  # never more than depth ahead (one more may be in hand)
    assert list(it) == list(range(1, 10))


def test_prefetched_reraises_the_producers_error_at_its_place():
    def items():
        yield 1
        yield 2
        raise OSError("corrupt stack at image 3")

    got = []
    with pytest.raises(OSError, match="corrupt stack"):
        for x in prefetched(items(), depth=2):
            got.append(x)
    assert got == [1, 2]


def test_prefetched_stops_its_thread_when_the_consumer_stops_early():
    before = threading.active_count()
    it = prefetched(iter(range(10_000)), depth=2)
    assert next(it) == 0
    it.close()  # what `break` out of a for loop does
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="depth"):
        list(prefetched(range(3), -1))


def test_encode_dataset_gives_the_same_latents_with_and_without_reading_ahead(tmp_path):
    torch.manual_seed(0)
    box = 16
    model = HetVAE(box + 1, zdim=2, enc_layers=1, enc_dim=16, dec_layers=1, dec_dim=16)
    images = np.random.default_rng(1).standard_normal((70, box, box)).astype(np.float32)
    write_mrc(tmp_path / "p.mrcs", images)
    source = open_images(tmp_path / "p.mrcs")
    ds = ParticleDataset(source, torch.eye(3).repeat(70, 1, 1), lazy=True, norm_std=1.0)
    mu0, lv0 = encode_dataset(model, ds, torch.device("cpu"), batch_size=16, prefetch=0)
    mu2, lv2 = encode_dataset(model, ds, torch.device("cpu"), batch_size=16, prefetch=2)
    assert mu0.shape == (70, 2)
    np.testing.assert_array_equal(mu0, mu2)
    np.testing.assert_array_equal(lv0, lv2)
