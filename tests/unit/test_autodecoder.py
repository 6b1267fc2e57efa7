"""The autodecoder baseline: protocol, training, test-time optimization of new latents."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cryonoo.models.autodecoder import AutoDecoder
from cryonoo.models.vae import HetVAE
from cryonoo.models.zoo import MODELS, has_encoder
from cryonoo.physics.rotations import random_rotations
from cryonoo.physics.simulate import volume_spectrum
from cryonoo.physics.slice import extract_central_slices
from cryonoo.train.build import base_model, build_model
from cryonoo.train.encode import encode_dataset
from cryonoo.train.recipes import TrainConfig, get_recipe
from cryonoo.types import Batch, ReconstructionModel

D = 17
N = 256
CTF = [4.0, 15000.0, 14500.0, 20.0, 300.0, 2.7, 0.1, 0.0]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and immune to contention
    yield
    torch.set_num_threads(threads)


def _blobs(box: int, shift: float) -> Tensor:
    """Two Gaussian blobs, the second moved by ``shift`` px along x, ``[z, y, x]``."""
    ax = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    centers = [(-2.0, 1.0, 0.0), (2.0 + shift, -1.0, 1.0)]
    r2 = [(x - a).square() + (y - b).square() + (z - c).square() for a, b, c in centers]
    return sum(torch.exp(-d / 4.5) for d in r2)


def _phantom_batch(n: int = N, seed: int = 0) -> Batch:
    """``n`` noise-free projections of a two-state phantom with a CTF, normalized."""
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(n, generator=g)
    labels = torch.arange(n) % 2
    spectra = [volume_spectrum(_blobs(D - 1, s)) for s in (0.0, 3.0)]
    images = torch.empty(n, D, D)
    for k, spec in enumerate(spectra):
        sel = labels == k
        images[sel] = extract_central_slices(spec, rot[sel])
    ctf = torch.tensor([CTF]).repeat(n, 1)
    from cryonoo.physics.ctf import ctf_from_params
    from cryonoo.physics.lattice import lattice_coords

    c = ctf_from_params(lattice_coords(D)[:, :2], ctf).reshape(n, D, D)
    images = images * c
    return Batch(images / images.std(), rot, None, ctf, torch.arange(n))


def _model(**kw) -> AutoDecoder:
    base = {"n_images": N, "zdim": 2, "dec_layers": 2, "dec_dim": 32, "seed": 0}
    return AutoDecoder(D, **{**base, **kw})


@pytest.fixture(scope="module")
def trained() -> tuple[AutoDecoder, Batch, list[float]]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = _phantom_batch()
        model = _model(latent_l2=1e-4)
        opt = torch.optim.Adam(model.param_groups(latent_lr=3e-2), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(250):
            idx = torch.randint(0, N, (32,), generator=g)
            batch = Batch(data.images[idx], data.rot[idx], None, data.ctf[idx], idx)
            out = model.training_step(batch)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(float(out.terms["recon"]))
    finally:
        torch.set_num_threads(threads)
    return model.eval(), data, losses


def test_protocol_shapes_and_config():
    model = _model()
    assert isinstance(model, ReconstructionModel)
    batch = _phantom_batch(8)
    out = model.training_step(batch)
    assert out.z.shape == (8, 2) and out.render.shape == (8, D, D)
    assert set(out.terms) == {"recon", "prior", "loss"}
    out.loss.backward()
    assert model.embedding.weight.grad[8:].abs().sum() == 0  # only the batch's rows
    assert model.render(out.z.detach(), batch.rot, batch.ctf).shape == (8, D, D)
    assert model.volume(torch.zeros(2)).shape == (D - 1,) * 3
    twin = AutoDecoder(**model.config())
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.latent_table(), model.latent_table())
    assert model.latent_table().shape == (N, 2) and model.latent_table().abs().max() < 0.1


def test_clear_errors():
    model = _model()
    batch = _phantom_batch(4)
    with pytest.raises(ValueError, match="needs the poses"):
        model.encode(batch.images, batch.ctf)
    with pytest.raises(ValueError, match=r"batch\.index is None"):
        model.training_step(Batch(batch.images, batch.rot))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        model.training_step(Batch(batch.images, batch.rot, index=torch.tensor([0, 1, 2, 256])))
    with pytest.raises(ValueError, match="n_images is required"):
        AutoDecoder(D, None)
    with pytest.raises(ValueError, match="steps"):
        model.fit_latents(batch.images, batch.rot, steps=-1)
    with pytest.raises(ValueError, match="init must be one of"):
        model.fit_latents(batch.images, batch.rot, init="ones")
    with pytest.raises(ValueError, match="no encoder to encode particles"):
        encode_dataset(model, None, torch.device("cpu"))
    ssl_recipe = TrainConfig().replace({"model.kind": "autodecoder"}, name="x")
    with pytest.raises(ValueError, match="self-distillation needs an encoder"):
        build_model(ssl_recipe, D, noise_sigma=1.0, n_images=4)


def test_registry_and_trainer_build_both_models():
    kw = {"D": D, "n_images": 5, "zdim": 2, "enc_dim": 8, "dec_dim": 8, "enc_layers": 1}
    assert isinstance(MODELS.build_accepted("vae", **kw), HetVAE)
    assert isinstance(MODELS.build_accepted("autodecoder", **kw), AutoDecoder)
    assert has_encoder(HetVAE) and has_encoder(MODELS.build_accepted("vae", **kw))
    assert not has_encoder(AutoDecoder) and not has_encoder(torch.nn.Linear(2, 2))
    model = build_model(get_recipe("autodecoder"), D, n_images=7)
    assert isinstance(base_model(model), AutoDecoder) and model.embedding.num_embeddings == 7
    groups = model.param_groups(0.5)
    assert groups[1]["lr"] == 0.5 and groups[1]["params"][0] is model.embedding.weight


def test_training_loss_decreases(trained):
    _, _, losses = trained
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_fit_latents_recovers_latents_that_reproduce_images(trained):
    model, data, _ = trained
    idx = torch.arange(16)
    z_true = model.latent_table()[idx]
    images = model.render(z_true, data.rot[idx], data.ctf[idx]).detach()
    z0 = torch.zeros_like(z_true)
    with torch.no_grad():  # fit_latents enables gradients itself
        z_fit = model.fit_latents(images, data.rot[idx], data.ctf[idx], steps=150, lr=0.05)

    def err(z: Tensor) -> float:
        with torch.no_grad():
            return float((model.render(z, data.rot[idx], data.ctf[idx]) - images).pow(2).sum())

    assert err(z_fit) < err(z0) / 1000, (err(z_fit), err(z0))
    # the two states stay apart after fitting
    labels = idx % 2
    gap = (z_fit[labels == 0].mean(0) - z_fit[labels == 1].mean(0)).norm()
    true_gap = (z_true[labels == 0].mean(0) - z_true[labels == 1].mean(0)).norm()
    assert gap > 0.8 * true_gap


def test_fit_latents_leaves_the_model_untouched(trained):
    model, data, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.decoder.parameters()]  # left by the training steps
    model.train()
    model.fit_latents(data.images[:8], data.rot[:8], data.ctf[:8], steps=5)
    assert model.training  # mode restored
    assert all(p.requires_grad for p in model.parameters())
    assert all(
        torch.equal(g, p.grad) for g, p in zip(grads, model.decoder.parameters(), strict=True)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


def test_fit_latents_deterministic_and_per_image(trained):
    model, data, _ = trained
    args = (data.images[:6], data.rot[:6], data.ctf[:6], None, 20, 0.05)
    a = model.fit_latents(*args, torch.Generator().manual_seed(3), init="random")
    b = model.fit_latents(*args, torch.Generator().manual_seed(3), init="random")
    c = model.fit_latents(*args, torch.Generator().manual_seed(4), init="random")
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every image is fitted independently of the rest of its batch
    full = model.fit_latents(*args)
    part = model.fit_latents(data.images[:2], data.rot[:2], data.ctf[:2], None, 20, 0.05)
    torch.testing.assert_close(part, full[:2], rtol=1e-4, atol=1e-5)
    assert torch.equal(model.encode(*args[:1], args[2], rot=args[1], steps=20, lr=0.05), full)


def test_on_step_records_the_budgets_of_one_run(trained):
    model, data, _ = trained
    args = (data.images[:4], data.rot[:4], data.ctf[:4], None)
    seen: dict[int, Tensor] = {}
    last = model.fit_latents(*args, 12, 0.05, on_step=lambda k, z: seen.setdefault(k, z))
    assert sorted(seen) == list(range(1, 13)) and torch.equal(seen[12], last)
    torch.testing.assert_close(seen[5], model.fit_latents(*args, 5, 0.05))
    assert not torch.equal(seen[5], seen[12])
