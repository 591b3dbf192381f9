"""cryoxr.io.mrc.array: laziness, bytes read per selection, pickling, zero-copy planes."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import dask
import mrcfile
import numpy as np
import pytest
import xarray as xr

from cryoxr import Tomogram
from cryoxr.io.mrc import MrcArray, read_mrc, write_mrc
from cryoxr.io.mrc.array import NanCheckedArray
from cryoxr.testing import raise_if_dask_computes
from cryoxr.testing import write_mrc_with_mrcfile as _mrcfile_write


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


# -- NaN-skipping reductions: the plain reduction first ----------------------------------


def _float_volume(tmp_path: Path, *, nan_at: tuple[int, int, int] | None) -> tuple[Path, np.ndarray]:
    values = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) / 7
    if nan_at is not None:
        values[nan_at] = np.nan
    return _nan_write(tmp_path / "f.mrc", values), values


def _nan_write(path: Path, values: np.ndarray) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Data array contains NaN", RuntimeWarning)  # mrcfile's header stats
        return _mrcfile_write(path, values)


@pytest.mark.parametrize("chunks", [(1, 5, 6), (2, 2, 6), (4, 5, 4)])  # planes, rows, boxes
@pytest.mark.parametrize("nan_at", [None, (2, 1, 3)])
def test_reductions_as_typed_equal_numpy_nan_reductions(tmp_path: Path, nan_at: Any, chunks: Any) -> None:
    path, values = _float_volume(tmp_path, nan_at=nan_at)
    data = read_mrc(path, chunks=chunks).data  # NaN in one of the chunks
    assert all(isinstance(block, NanCheckedArray) for block in dask.compute(*data.data.to_delayed().ravel()))
    np.testing.assert_allclose(float(data.mean()), np.nanmean(values.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(float(data.std()), np.nanstd(values.astype(np.float64)), rtol=1e-5)
    assert float(data.max()) == np.nanmax(values)
    assert float(data.min()) == np.nanmin(values)
    np.testing.assert_allclose(data.sum("z").values, np.nansum(values, axis=0), rtol=1e-6)
    # skipna=False still propagates NaN
    assert np.isnan(float(data.mean(skipna=False))) == (nan_at is not None)


def test_nan_free_planes_skip_the_nan_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cryoxr.io.mrc.array as mrc_array

    path, values = _float_volume(tmp_path, nan_at=None)
    chunk = read_mrc(path).data.data.blocks[0].compute()
    assert isinstance(chunk, mrc_array.NanCheckedArray)  # whole planes, as the reader maps them
    nan_passes: list[str] = []
    for name in ("nansum", "nanmax"):
        original = getattr(np, name)

        def counting(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            nan_passes.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setitem(
            mrc_array._PLAIN_FIRST,
            original,
            mrc_array._plain_first(getattr(np, name.removeprefix("nan")), counting),
        )
    data = read_mrc(path).data
    assert float(data.max()) == values.max()
    np.testing.assert_allclose(float(data.mean()), values.astype(np.float64).mean(), rtol=1e-6)
    assert nan_passes == []  # numpy's NaN-skipping functions never ran
    with_nan = values.copy()
    with_nan[0, 0, 0] = np.nan
    path = _nan_write(tmp_path / "n.mrc", with_nan)
    assert float(read_mrc(path).data.max()) == np.nanmax(with_nan)
    assert nan_passes == ["nanmax"]  # the plain max found NaN: computed again, skipping it


def test_nannumel_sum_is_reused_by_nansum(tmp_path: Path) -> None:
    from dask.array.reductions import nannumel

    path, values = _float_volume(tmp_path, nan_at=None)
    chunk = read_mrc(path).data.data.blocks[0].compute()
    count = nannumel(chunk, axis=(0, 1, 2), keepdims=True, dtype=np.float32)
    assert count.item() == values.size
    first = np.nansum(chunk, axis=(0, 1, 2), keepdims=True, dtype=np.float32)
    assert first is np.nansum(chunk, axis=(0, 1, 2), keepdims=True, dtype=np.float32)  # the kept sum
    np.testing.assert_allclose(first.item(), values.sum(dtype=np.float64), rtol=1e-6)
    other = np.nansum(chunk, axis=0)  # other axes: computed, not the kept one
    np.testing.assert_allclose(other, values.sum(axis=0), rtol=1e-6)
