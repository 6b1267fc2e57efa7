"""MRC reading/writing, image stacks from .mrcs/.txt, and atomic writes."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryonoo.io import (
    MRCSource,
    ParticleFileError,
    Subset,
    TxtSource,
    atomic_write,
    check_finite,
    open_images,
    read_mrc,
    read_mrc_header,
    write_mrc,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_write_read_round_trip_bit_exact(tmp_path, rng, dtype):
    vol = rng.normal(size=(12, 12, 12)).astype(dtype)
    write_mrc(tmp_path / "v.mrc", vol, voxel_size=1.7, dtype=dtype)
    for mmap in (True, False):
        data, info = read_mrc(tmp_path / "v.mrc", mmap=mmap)
        assert data.dtype == np.dtype(dtype) and data.shape == (12, 12, 12)
        assert np.array_equal(np.asarray(data), vol)
        assert info.voxel_size == pytest.approx(1.7, rel=1e-6)
        assert info.mode == (12 if dtype == np.float16 else 2)
        assert not info.is_stack
    with mrcfile.open(tmp_path / "v.mrc") as m:  # a strict, standard-conforming file
        assert m.voxel_size.x == pytest.approx(1.7, rel=1e-6)


def test_write_stack_is_image_stack_and_float32_default(tmp_path, rng):
    stack = rng.normal(size=(5, 8, 8))  # float64 in → float32 on disk
    write_mrc(tmp_path / "s.mrcs", stack, voxel_size=2.5)
    data, info = read_mrc(tmp_path / "s.mrcs")
    assert info.is_stack and info.dtype == np.float32 and info.shape == (5, 8, 8)
    assert np.array_equal(data, stack.astype(np.float32))
    assert info.voxel_size_xyz[:2] == pytest.approx((2.5, 2.5))
    assert mrcfile.validate(str(tmp_path / "s.mrcs"), print_file=io.StringIO())


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="float32 or float16"):
        write_mrc(tmp_path / "x.mrc", np.zeros((2, 2, 2)), dtype=np.int16)
    with pytest.raises(ValueError, match="shape"):
        write_mrc(tmp_path / "x.mrc", np.zeros((2, 2, 2, 2)))
    assert not (tmp_path / "x.mrc").exists()


def test_read_is_memory_mapped(tmp_path, rng):
    write_mrc(tmp_path / "s.mrcs", rng.normal(size=(20, 16, 16)))
    data, _ = read_mrc(tmp_path / "s.mrcs")
    assert isinstance(data, np.memmap)
    assert not data.flags.writeable
    src = MRCSource(tmp_path / "s.mrcs")
    assert isinstance(src.data, np.memmap)


def _truncate(src: Path, dst: Path, nbytes: int) -> int:
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) - nbytes])
    return len(raw)


def test_truncated_file_is_caught(tmp_path, rng):
    write_mrc(tmp_path / "s.mrcs", rng.normal(size=(10, 16, 16)))
    full = _truncate(tmp_path / "s.mrcs", tmp_path / "cut.mrcs", 100)
    for call in (read_mrc, read_mrc_header, open_images):
        with pytest.raises(ParticleFileError) as err:
            call(tmp_path / "cut.mrcs")
        msg = str(err.value)
        assert "cut.mrcs" in msg and str(full) in msg and str(full - 100) in msg
        assert "truncated" in msg


def test_not_an_mrc_file(tmp_path):
    (tmp_path / "tiny.mrc").write_bytes(b"hello")
    with pytest.raises(ParticleFileError, match=r"tiny\.mrc"):
        read_mrc(tmp_path / "tiny.mrc")
    bad = bytearray(1024 + 64)
    bad[0:4] = np.int32(4).tobytes()
    bad[4:8] = np.int32(4).tobytes()
    bad[8:12] = np.int32(1).tobytes()
    bad[12:16] = np.int32(3).tobytes()  # mode 3 (complex int16) has no numpy dtype
    (tmp_path / "mode3.mrc").write_bytes(bytes(bad))
    with pytest.raises(ParticleFileError, match="mode 3"):
        read_mrc(tmp_path / "mode3.mrc")


def test_non_square_images_rejected(tmp_path):
    write_mrc(tmp_path / "rect.mrcs", np.zeros((3, 8, 10)))
    with pytest.raises(ParticleFileError, match=r"rect\.mrcs.*square"):
        open_images(tmp_path / "rect.mrcs")


def test_mrc_source_indexing(tmp_path, rng):
    stack = rng.normal(size=(30, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", stack, voxel_size=3.0)
    src = open_images(tmp_path / "s.mrcs")
    assert (len(src), src.box, src.apix, src.dtype) == (30, 8, 3.0, np.float32)
    for idx in ([4, 5, 6], [7, 2, 2, 29], np.array([-1, 0]), slice(3, 9, 2), []):
        expect = stack[idx] if not isinstance(idx, list) or idx else stack[:0]
        got = src.images(idx)
        assert got.dtype == np.float32 and np.array_equal(got, expect)
        assert type(got) is np.ndarray and got.flags.writeable and got.flags.c_contiguous
    assert np.array_equal(src[3], stack[3])
    with pytest.raises(IndexError, match="30"):
        src.images([30])
    sub = open_images(tmp_path / "s.mrcs", indices=[9, 1, 5])
    assert isinstance(sub, Subset) and len(sub) == 3
    assert np.array_equal(sub.images([2, 0]), stack[[5, 9]])


def test_txt_source_concatenates_with_relative_paths(tmp_path, rng):
    (tmp_path / "sub").mkdir()
    a = rng.normal(size=(4, 6, 6)).astype(np.float32)
    b = rng.normal(size=(3, 6, 6)).astype(np.float32)
    write_mrc(tmp_path / "sub" / "a.mrcs", a)
    write_mrc(tmp_path / "b.mrcs", b)
    (tmp_path / "list.txt").write_text("sub/a.mrcs\n\n" + str(tmp_path / "b.mrcs") + "\n")
    src = open_images(tmp_path / "list.txt")
    assert isinstance(src, TxtSource) and len(src) == 7
    both = np.concatenate([a, b])
    idx = [6, 0, 3, 4, 4]
    assert np.array_equal(src.images(idx), both[idx])
    (tmp_path / "bad.txt").write_text("a.mrcs\nmissing.mrcs\n")
    with pytest.raises(ParticleFileError, match=r"bad\.txt, line 1"):
        open_images(tmp_path / "bad.txt")


@pytest.mark.filterwarnings("ignore:Data array contains NaN:RuntimeWarning")
def test_check_finite(tmp_path, rng):
    stack = rng.normal(size=(12, 6, 6)).astype(np.float32)
    stack[2, 1, 1] = np.nan
    stack[5] = 3.0
    stack[11, 0, 0] = np.inf
    write_mrc(tmp_path / "s.mrcs", stack)
    src = open_images(tmp_path / "s.mrcs")
    assert check_finite(src, batch_size=5).tolist() == [2, 5, 11]


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(target) as f:
            f.write(b"partial data")
            raise RuntimeError("midway")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_success_replaces(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert target.stat().st_mode & 0o777 == 0o640  # permissions of the replaced file kept


def test_writer_failure_midway_keeps_previous_mrc(tmp_path, rng, monkeypatch):
    vol = rng.normal(size=(4, 4, 4)).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", vol)

    def broken_new(name, overwrite=False):  # writes part of a file, then fails (disk full)
        Path(name).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mrcfile, "new", broken_new)
    with pytest.raises(OSError, match=r"v\.mrc.*No space left"):
        write_mrc(tmp_path / "v.mrc", vol * 2)
    monkeypatch.undo()
    assert np.array_equal(read_mrc(tmp_path / "v.mrc")[0], vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc"]


def test_unwritable_directory_names_path(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    for target in (blocker / "out.mrc", tmp_path / "missing_dir" / "out.mrc"):
        with pytest.raises(OSError) as err:
            write_mrc(target, np.zeros((2, 2, 2)))
        assert str(target) in str(err.value)
    with pytest.raises(ValueError, match="write mode"):
        with atomic_write(tmp_path / "x", "ab"):
            pass


def test_sources_pickle_without_data(tmp_path, rng):
    stack = rng.normal(size=(50, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", stack)
    (tmp_path / "l.txt").write_text("s.mrcs\ns.mrcs\n")
    for src in (open_images(tmp_path / "s.mrcs"), open_images(tmp_path / "l.txt")):
        src.images([0, 1])  # opens (and caches) the memory maps
        blob = pickle.dumps(src)
        assert len(blob) < stack.nbytes / 4
        again = pickle.loads(blob)
        assert np.array_equal(again.images([3, 1]), stack[[3, 1]])


def test_big_endian_and_integer_modes(tmp_path, rng):
    stack = rng.normal(size=(3, 6, 6)).astype(">f4")
    with mrcfile.new(tmp_path / "be.mrcs") as m:
        m.set_data(stack)
    data, info = read_mrc(tmp_path / "be.mrcs")
    assert info.dtype.byteorder == ">" and np.array_equal(data, stack)
    assert read_mrc(tmp_path / "be.mrcs", mmap=False)[0].dtype == np.dtype("=f4")
    ints = rng.integers(-100, 100, size=(4, 6, 6)).astype(np.int16)
    with mrcfile.new(tmp_path / "i.mrcs") as m:
        m.set_data(ints)
    src = open_images(tmp_path / "i.mrcs")
    assert src.dtype == np.int16 and np.array_equal(src.images([2, 0]), ints[[2, 0]])
    assert open_images(tmp_path / "be.mrcs").images([1]).dtype == np.float32
