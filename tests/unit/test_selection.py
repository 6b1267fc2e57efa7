"""Particle selections: criteria, and subsets written back as index .pkl, .star and .cs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cryonoo.analysis.selection import (
    select_indices,
    write_cs_subset,
    write_index_pkl,
    write_star_subset,
)
from cryonoo.io.cryodrgn import load_indices
from cryonoo.io.cryosparc import read_cs
from cryonoo.io.mrc import ParticleFileError
from cryonoo.io.star import read_star, read_star_raw, write_star_blocks

STAR_SAMPLES = ["relion31.star", "relion31.v2.star", "toy_projections.star"]
CS_SAMPLE = "cryosparc_P12_J24_001_particles.cs"

STAR31 = """
data_optics
loop_
_rlnOpticsGroup
_rlnOpticsGroupName
_rlnImagePixelSize
1 "group one" 2.000
data_particles
loop_
_rlnImageName
_rlnDefocusU
_rlnOpticsGroup
_rlnMicrographName
000001@a.mrcs 10000.000000 1 "mic one.mrc"
000002@a.mrcs 1.5e+04 1 m2.mrc
000003@b.mrcs 12000 1 m3.mrc
"""


def _assert_no_file(directory):
    assert list(directory.iterdir()) == [], list(directory.iterdir())


# --------------------------------------------------------------------------- select_indices
def test_clusters_box_polygon_and_index_intersect():
    labels = np.array([0, 1, 2, 0, 1, 2, 3])
    sel = select_indices(7, labels=labels, clusters=[0, 2])
    assert sel.tolist() == [0, 2, 3, 5] and sel.dtype == np.int64
    xy = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6]], float)
    assert select_indices(7, coords=xy, box=(0.5, 4.5, 0.5, 4.5)).tolist() == [1, 2, 3, 4]
    tri = [(-1, -1), (3.5, -1), (3.5, 9)]
    assert select_indices(7, coords=xy, polygon=tri).tolist() == [0, 1, 2, 3]
    assert select_indices(7, index=[5, 1, 3]).tolist() == [1, 3, 5]
    both = select_indices(7, labels=labels, clusters=[0, 2], coords=xy, box=(0.5, 4.5, 0, 9))
    assert both.tolist() == [2, 3]
    assert select_indices(3).tolist() == [0, 1, 2]


def test_invert_complements():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    sel = select_indices(50, labels=labels, clusters=[1, 3])
    inv = select_indices(50, labels=labels, clusters=[1, 3], invert=True)
    assert np.intersect1d(sel, inv).size == 0
    assert np.union1d(sel, inv).tolist() == list(range(50))


def test_box_and_its_corner_polygon_agree():
    xy = np.random.default_rng(1).normal(size=(2000, 2))
    xmin, xmax, ymin, ymax = -0.7, 1.1, -0.3, 0.9
    corners = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]
    box = select_indices(2000, coords=xy, box=(xmin, xmax, ymin, ymax))
    poly = select_indices(2000, coords=xy, polygon=corners)
    assert 100 < box.size < 1900 and np.array_equal(box, poly)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"index": [0, 1, 2, 3], "invert": True}, "nothing selected"),
        ({"labels": [0, 0, 1, 1], "clusters": [5]}, "not in the labels"),
        ({"coords": np.zeros((4, 2)), "polygon": [(0, 0), (1, 1)]}, "at least 3 vertices"),
        ({"coords": np.zeros((3, 2)), "box": (0, 1, 0, 1)}, r"shape \(4, 2\)"),
        ({"coords": np.zeros((4, 3)), "box": (0, 1, 0, 1)}, r"shape \(4, 2\)"),
        ({"box": (0, 1, 0, 1)}, "needs coords"),
        ({"coords": np.zeros((4, 2)), "box": (1, 0, 0, 1)}, "xmin ≤ xmax"),
        ({"index": [0, 4]}, "out of range"),
        ({"index": [-1]}, "negative"),
        ({"index": [1, 1]}, "appears 2 times"),
        ({"index": [0.5]}, "integer"),
        ({"labels": [0, 1, 2], "clusters": [0]}, r"shape \(4,\)"),
        ({"labels": [0, 1, 2, 3]}, "both labels"),
        ({"coords": np.ones((4, 2)), "box": (5, 6, 5, 6)}, "nothing selected"),
    ],
)
def test_bad_selections_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_indices(4, **kwargs)


# --------------------------------------------------------------------------- writers
def test_index_pkl_is_zero_based_int(tmp_path):
    write_index_pkl(tmp_path / "sel.ind.pkl", np.array([0, 3, 7]))
    with open(tmp_path / "sel.ind.pkl", "rb") as f:
        arr = pickle.load(f)
    assert arr.tolist() == [0, 3, 7] and arr.dtype == np.int64
    assert load_indices(tmp_path / "sel.ind.pkl", 8).tolist() == [0, 3, 7]


@pytest.mark.parametrize("bad", [[], [1, 1], [-2], [0.5]])
def test_bad_index_pkl_leaves_no_file(tmp_path, bad):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError):
        write_index_pkl(out / "sel.ind.pkl", np.array(bad))
    _assert_no_file(out)


def test_star_blocks_rewrite_is_lossless(tmp_path):
    src = tmp_path / "in.star"
    src.write_text(STAR31)
    write_star_blocks(tmp_path / "out.star", read_star_raw(src))
    a, b = read_star_raw(src), read_star_raw(tmp_path / "out.star")
    assert list(a.blocks) == list(b.blocks)
    for name in a.blocks:
        assert a.blocks[name].labels == b.blocks[name].labels
        for lab, col in a.blocks[name].columns.items():
            assert b.blocks[name].columns[lab].tolist() == col.tolist()
    assert b.particles.column("_rlnDefocusU").tolist() == ["10000.000000", "1.5e+04", "12000"]
    assert b.particles.column("_rlnMicrographName")[0] == "mic one.mrc"


@pytest.mark.samples
@pytest.mark.parametrize("name", STAR_SAMPLES)
def test_star_subset_round_trip(samples, tmp_path, name):
    src = samples / name
    orig, raw = read_star(src), read_star_raw(src)
    n = len(orig)
    idx = np.array([n - 1, 0, 2]) if n > 3 else np.array([n - 1, 0])
    write_star_subset(src, idx, tmp_path / "sub.star", n=n)
    sub, sub_raw = read_star(tmp_path / "sub.star"), read_star_raw(tmp_path / "sub.star")
    assert list(sub.blocks) == list(orig.blocks)  # RELION 3.0 stays single-table
    assert sub.particles.labels == orig.particles.labels and len(sub) == idx.size
    for lab in orig.particles.labels:
        np.testing.assert_array_equal(sub.particles.column(lab), orig.particles.column(lab)[idx])
        assert sub_raw.particles.column(lab).tolist() == raw.particles.column(lab)[idx].tolist()
    if orig.optics is not None:
        assert sub_raw.optics.labels == raw.optics.labels
        for lab, col in raw.optics.columns.items():
            assert sub_raw.optics.column(lab).tolist() == col.tolist()
    names = sub.particles.column("_rlnImageName")
    assert names.tolist() == orig.particles.column("_rlnImageName")[idx].tolist()


@pytest.mark.samples
def test_cs_subset_round_trip(samples, tmp_path):
    src = samples / CS_SAMPLE
    cs = read_cs(src)
    idx = np.array([5, 0, len(cs) - 1, 17])
    out = tmp_path / "sub.cs"
    write_cs_subset(src, idx, out, n=len(cs))
    assert [p.name for p in tmp_path.iterdir()] == ["sub.cs"]  # no .npy appended
    sub = read_cs(out)
    assert sub.dtype == cs.dtype and sub.shape == (4,)
    assert sub.tobytes() == cs[idx].tobytes()


@pytest.mark.samples
@pytest.mark.parametrize("name", [*STAR_SAMPLES, CS_SAMPLE])
def test_row_count_mismatch_names_both_counts(samples, tmp_path, name):
    src = samples / name
    rows = len(read_cs(src)) if name.endswith(".cs") else len(read_star(src))
    write = write_cs_subset if name.endswith(".cs") else write_star_subset
    with pytest.raises(ParticleFileError, match=rf"{rows} particles in the file but {rows + 1}"):
        write(src, [0], tmp_path / "sub", n=rows + 1)
    _assert_no_file(tmp_path)


@pytest.mark.samples
@pytest.mark.parametrize("name", ["relion31.star", CS_SAMPLE])
@pytest.mark.parametrize(
    ("bad", "message"),
    [([], "nothing selected"), ([0, 0], "appears 2 times"), ([10**6], "out of range")],
)
def test_bad_subset_indices_leave_no_file(samples, tmp_path, name, bad, message):
    write = write_cs_subset if name.endswith(".cs") else write_star_subset
    with pytest.raises(ValueError, match=message):
        write(samples / name, np.array(bad, dtype=np.int64), tmp_path / "sub")
    _assert_no_file(tmp_path)


def test_local_density_is_the_count_of_each_particles_bin():
    from cryonoo.analysis.selection import local_density

    rng = np.random.default_rng(4)
    xy = rng.normal(size=(3000, 2))
    bins = 16
    density = local_density(xy, bins)
    # by hand: the bin edges of the range, each particle's bin, the particles sharing it
    xe = np.linspace(xy[:, 0].min(), xy[:, 0].max(), bins + 1)
    ye = np.linspace(xy[:, 1].min(), xy[:, 1].max(), bins + 1)
    ix = np.minimum(np.digitize(xy[:, 0], xe) - 1, bins - 1)
    iy = np.minimum(np.digitize(xy[:, 1], ye) - 1, bins - 1)
    same = (ix[:, None] == ix[None, :]) & (iy[:, None] == iy[None, :])
    np.testing.assert_array_equal(density, same.sum(1))


def test_density_quantile_drops_the_sparse_outliers():
    rng = np.random.default_rng(5)
    core = rng.normal(scale=0.3, size=(2000, 2))
    outliers = rng.uniform(-8, 8, size=(100, 2))
    xy = np.concatenate([core, outliers])
    kept = select_indices(len(xy), coords=xy, density_quantile=0.1)
    assert np.isin(np.arange(2000, 2100), kept).mean() < 0.1  # outliers mostly gone
    assert np.isin(np.arange(2000), kept).mean() > 0.85
    inverted = select_indices(len(xy), coords=xy, density_quantile=0.1, invert=True)
    assert np.intersect1d(kept, inverted).size == 0 and kept.size + inverted.size == len(xy)
    with pytest.raises(ValueError, match="density quantile"):
        select_indices(len(xy), coords=xy, density_quantile=1.0)
    with pytest.raises(ValueError, match="coords"):
        select_indices(len(xy), density_quantile=0.1)
