"""Both doors, one result: cryoxr's readers and xarray's engine="cryoxr"."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import mrcfile
import numpy as np
import pytest
import xarray as xr
from xarray.core import indexing

import cryoxr
import cryoxr.image as image_module
from cryoxr.io import open_image, read_mrc, read_ome_zarr
from cryoxr.io.mrc.array import MrcArray
from cryoxr.io.ome_zarr.read import _ZarrChunks
from cryoxr.io.xarray_backend import CryoxrBackendEntrypoint
from cryoxr.testing import raise_if_dask_computes


@pytest.fixture(params=["mrc", "ome-zarr"])
def image_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    values = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    tomo = cryoxr.Tomogram.from_array(values, pixel_spacing=4.2, experiment_id="TS_07")
    if request.param == "mrc":
        return tomo.to_mrc(tmp_path / "TS_07.mrc")
    return tomo.to_zarr(tmp_path / "TS_07.ome.zarr", levels=2)


def test_both_doors_agree(image_path: Path) -> None:
    direct = read_ome_zarr(image_path) if image_path.name.endswith(".zarr") else open_image(image_path)
    with raise_if_dask_computes():
        through_xarray = xr.open_dataarray(image_path, engine="cryoxr")
    assert not isinstance(through_xarray.variable._data, da.Array)
    xr.testing.assert_identical(through_xarray.drop_attrs(), direct.data.drop_attrs())
    assert through_xarray.attrs["pixel_spacing"] == pytest.approx(4.2)
    assert cryoxr.Image(through_xarray).experiment_id == "TS_07"


def test_engine_is_registered_and_guesses_mrc(tmp_path: Path) -> None:
    assert "cryoxr" in xr.backends.list_engines()
    backend = CryoxrBackendEntrypoint()
    assert backend.guess_can_open(tmp_path / "a.mrc")
    assert backend.guess_can_open(tmp_path / "a.rec")
    assert not backend.guess_can_open(tmp_path / "a.nc")
    assert not backend.guess_can_open(tmp_path / "a.zarr")  # xarray's zarr engine owns it


def test_pyramid_level(tmp_path: Path) -> None:
    tomo = cryoxr.Tomogram.from_array(np.ones((8, 8, 8), np.float32), pixel_spacing=2.0, experiment_id="t")
    path = tomo.to_zarr(tmp_path / "t.ome.zarr", levels=2)
    level1 = xr.open_dataarray(path, engine="cryoxr", level=1)
    assert level1.shape == (4, 4, 4)
    assert level1.attrs["pixel_spacing"] == pytest.approx(4.0)


class _Reads:
    """Records the keys each read of an MRC data block or a zarr array was asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[tuple[str, object]] = []
        for cls in (MrcArray, _ZarrChunks):
            original = cls.__getitem__

            def counting(this: object, key: object, _original=original, _name=cls.__name__) -> np.ndarray:
                self.keys.append((_name, key))
                return _original(this, key)

            monkeypatch.setattr(cls, "__getitem__", counting)


def _planes(key: object) -> set[int]:
    """The z planes an outer-indexing key (int, slice or integer array first) touches."""
    first = key[0] if isinstance(key, tuple) else key
    if isinstance(first, slice):
        return set(range(6)[first])
    return {int(i) for i in np.atleast_1d(first)}


def test_engine_reads_without_dask_and_nothing_at_open(
    image_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _Reads(monkeypatch)
    with raise_if_dask_computes():
        opened = xr.open_dataarray(image_path, engine="cryoxr")
        assert reads.keys == []  # opening read no voxels
        assert opened.chunks is None
        assert not isinstance(opened.variable._data, da.Array)
        assert isinstance(opened.variable._data, indexing.ExplicitlyIndexed)  # xarray's lazy indexing
        plane = opened.sel(z=opened.z[2]).values
    assert len(reads.keys) == 1  # one read, of plane 2 only
    assert _planes(reads.keys[0][1]) == {2}
    expected = (
        read_ome_zarr(image_path, chunks=None).data.values[2]
        if image_path.name.endswith(".zarr")
        else mrcfile.mmap(image_path, mode="r").data[2]
    )
    np.testing.assert_array_equal(plane, expected)


def test_engine_slices_equal_mrcfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    path = tmp_path / "v.mrc"
    mrcfile.write(path, values, voxel_size=2.0)
    reads = _Reads(monkeypatch)
    opened = xr.open_dataarray(path, engine="cryoxr")
    with mrcfile.mmap(path, mode="r") as mrc:
        np.testing.assert_array_equal(opened[1:3].values, mrc.data[1:3])
        assert _planes(reads.keys[-1][1]) == {1, 2}
        np.testing.assert_array_equal(opened[:, 4].values, mrc.data[:, 4])
        np.testing.assert_array_equal(opened[3, 1:4, [0, 6]].values, mrc.data[3, 1:4][:, [0, 6]])
        assert _planes(reads.keys[-1][1]) == {3}
        np.testing.assert_array_equal(opened.values, mrc.data)
    assert opened.dtype == np.int16


def test_dask_only_with_chunks(image_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _Reads(monkeypatch)
    with raise_if_dask_computes():
        chunked = xr.open_dataarray(image_path, engine="cryoxr", chunks={})
    assert reads.keys == []
    assert isinstance(chunked.data, da.Array)
    # the readers' own chunks: one slab of the small MRC volume, the stored zarr chunks
    direct = read_ome_zarr(image_path) if image_path.name.endswith(".zarr") else open_image(image_path)
    assert chunked.chunks == direct.data.chunks
    xr.testing.assert_identical(chunked.drop_attrs().compute(), direct.data.drop_attrs().compute())


@pytest.mark.parametrize(
    ("name", "shape", "stack", "patch"),
    [
        ("vol.mrc", (5, 6, 7), False, {}),
        ("tilts.mrcs", (3, 6, 7), True, {}),
        ("mic.mrc", (1, 6, 7), False, {}),
        ("swapped.mrc", (5, 6, 7), False, {"mapc": 2, "mapr": 1}),  # a lazy transpose
        ("labelled.rec", (4, 6, 7), False, {"nlabl": 1, "label": [b"made by hand"] + [b""] * 9}),
    ],
)
def test_engine_dataset_is_read_mrc_without_the_wrapper(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    shape: tuple[int, ...],
    stack: bool,
    patch: dict,
) -> None:
    """The engine builds its Dataset straight from the header (no Image to validate) and
    gives exactly what ``read_mrc(chunks=None)`` gives: values, coords, attrs."""
    from cryoxr.testing import patch_mrc_header, random_array, write_mrc_with_mrcfile

    path = write_mrc_with_mrcfile(
        tmp_path / name,
        random_array(np.random.default_rng(3), shape, np.float32),
        voxel_size=3.5,
        stack=stack,
    )
    if patch:
        patch_mrc_header(path, **patch)
    direct = read_mrc(path, chunks=None).data

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the engine validated an image it had just built")

    monkeypatch.setattr(image_module, "validate_image", refuse)
    with raise_if_dask_computes():
        ds = xr.open_dataset(path, engine="cryoxr")
    da_ = ds[direct.name]
    xr.testing.assert_identical(da_, direct)
    assert ds.attrs == direct.attrs
    if "swapped" not in name:  # what chunks={} chunks along: read_mrc's own dask chunks
        assert da_.encoding["preferred_chunks"] == dict(
            zip(da_.dims, read_mrc(path).data.data.chunksize, strict=True)
        )
    np.testing.assert_array_equal(da_[1].values, direct[1].values)
