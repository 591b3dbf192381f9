"""cryoxr.io.mrc.array: laziness, bytes read per selection, pickling, zero-copy planes."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import dask
import mrcfile
import numpy as np
import pytest
import xarray as xr

from cryoxr import Tomogram
from cryoxr.io.mrc import MrcArray, read_mrc, write_mrc
from cryoxr.testing import raise_if_dask_computes


def _mrcfile_write(path: Path, data: np.ndarray, *, voxel_size: float = 2.5, stack: bool = False) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


@pytest.fixture
def gib_mrc(tmp_path: Path) -> Path:
    """A 1 GiB float32 volume, sparse on disk: only the header is ever written."""
    path = tmp_path / "big.mrc"
    with mrcfile.new_mmap(path, shape=(256, 1024, 1024), mrc_mode=2) as mrc:
        mrc.voxel_size = 4.0
    return path


class _CountingMrcArray(MrcArray):
    __slots__ = ()
    bytes_read: list[int] = []  # noqa: RUF012 - shared by design: one counter per test

    def __getitem__(self, key: Any) -> np.ndarray:
        out = super().__getitem__(key)
        self.bytes_read.append(out.nbytes)
        return out


def test_open_and_select_compute_nothing(gib_mrc: Path) -> None:
    with raise_if_dask_computes():
        tomo = read_mrc(gib_mrc)
        assert tomo.data.nbytes == 2**30
        z = tomo.sel(z=400.0)
        box = tomo.isel(z=slice(10, 74), y=slice(100, 164), x=slice(0, 64))
        binned = tomo.bin(2)
    assert z.shape == (1024, 1024)
    assert box.shape == (64, 64, 64)
    assert binned.shape == (128, 512, 512)
    assert tomo.data.chunks is not None
    assert tomo.data.chunks[0][0] == 16  # slabs of whole planes, 64 MiB
    assert tomo.data.chunks[1:] == ((1024,), (1024,))


@pytest.mark.parametrize(
    ("selection", "expected_bytes"),
    [
        ({"z": 100}, 1024 * 1024 * 4),
        ({"y": 7}, 256 * 1024 * 4),
        ({"z": slice(10, 74), "y": slice(100, 164), "x": slice(0, 64)}, 64**3 * 4),
    ],
)
@pytest.mark.parametrize("chunks", ["auto", None])
def test_selection_reads_only_its_bytes(
    gib_mrc: Path,
    monkeypatch: pytest.MonkeyPatch,
    selection: dict[str, Any],
    expected_bytes: int,
    chunks: Any,
) -> None:
    monkeypatch.setattr("cryoxr.io.mrc.read.MrcArray", _CountingMrcArray)  # read_mrc builds it there
    _CountingMrcArray.bytes_read = []
    tomo = read_mrc(gib_mrc, chunks=chunks)
    values = tomo.data.isel(selection).values
    assert values.nbytes == expected_bytes
    assert sum(_CountingMrcArray.bytes_read) == expected_bytes


def test_mrc_array_pickles_small_and_tokenizes_stably(gib_mrc: Path) -> None:
    array = MrcArray(str(gib_mrc), 1024, (256, 1024, 1024), np.dtype("<f4"))
    blob = pickle.dumps(array)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert again[3, :2, :2].shape == (2, 2)
    assert dask.base.tokenize(array) == dask.base.tokenize(again)
    assert again[0:0].shape == (0, 1024, 1024)
    assert again[::100, 0, 0].shape == (3,)
    assert again[-1, ..., 5].shape == (1024,)
    with pytest.raises(IndexError):
        again[256]


def test_read_is_under_xarray_engine_free_indexing(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    path = _mrcfile_write(tmp_path / "a.mrc", data)
    lazy = read_mrc(path, chunks=None)
    assert isinstance(lazy.data, xr.DataArray)
    np.testing.assert_array_equal(lazy.data.isel(x=[0, 4], z=1).values, data[1][:, [0, 4]])
    np.testing.assert_array_equal(lazy.sel(z=2.5).data.values, data[1])


def test_whole_planes_are_zero_copy_read_only_views(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    tomo = read_mrc(_mrcfile_write(tmp_path / "a.mrc", data), chunks=None)
    plane = tomo.data.isel(z=2).values
    np.testing.assert_array_equal(plane, data[2])
    assert not plane.flags.writeable
    # the file can be replaced while a view lives; the view keeps the old bytes
    write_mrc(
        Tomogram.from_array(data * 0, pixel_spacing=2.5, experiment_id="a"),
        tmp_path / "a.mrc",
        overwrite=True,
    )
    np.testing.assert_array_equal(plane, data[2])
