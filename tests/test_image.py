"""Image / Micrograph / Tomogram: construction from any array, laziness, cryotypes parity."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from cryotypes.image import validate_image as cryotypes_validate_image
from hypothesis import given, settings
from hypothesis import strategies as st

import cryoxr
from cryoxr.errors import CryoxrError, InvalidValueError, SchemaError
from cryoxr.image import Image, Micrograph, Tomogram, bin_image, validate_image
from cryoxr.testing import raise_if_dask_computes


def test_tomogram_from_numpy_has_dims_coords_attrs() -> None:
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    tomo = Tomogram.from_array(array, pixel_spacing=13.48, experiment_id="TS_01", source="x.mrc")
    d = tomo.data
    assert isinstance(d, xr.DataArray)
    assert isinstance(d.data, da.Array)
    assert d.dims == ("z", "y", "x")
    for dim, size in zip("zyx", array.shape, strict=True):
        assert d.coords[dim].dtype == np.float64
        np.testing.assert_allclose(d.coords[dim].values, np.arange(size) * 13.48)
        assert d.coords[dim].attrs["units"] == "angstrom"
    assert (tomo.experiment_id, tomo.pixel_spacing, tomo.source, tomo.stack) == (
        "TS_01",
        13.48,
        "x.mrc",
        False,
    )
    np.testing.assert_array_equal(d.values, array)


def test_micrograph_and_stack_dims() -> None:
    m = Micrograph.from_array(np.zeros((7, 9)), pixel_spacing=1.0, experiment_id="m")
    assert m.data.dims == ("y", "x")
    assert not m.stack
    s = Image.from_array(np.zeros((3, 7, 9)), pixel_spacing=1.0, experiment_id="ts", stack=True)
    assert s.data.dims == ("image", "y", "x")
    assert s.stack
    assert s.data.coords["image"].values.tolist() == [0, 1, 2]
    assert s.data.chunks == ((1, 1, 1), (7,), (9,))  # one tilt per chunk


@pytest.mark.parametrize("kind", ["numpy", "dask", "memmap", "zarr"])
def test_from_array_sources_read_nothing(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    shape = (6, 8, 10)
    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if kind == "numpy":
        array = values
    elif kind == "dask":
        array = da.from_array(values, chunks=3)
    elif kind == "memmap":
        array = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=shape)
        array[:] = values
        array.flush()
        array = np.load(tmp_path / "a.npy", mmap_mode="r")
    else:
        array = zarr.create_array(tmp_path / "a.zarr", shape=shape, chunks=(3, 4, 5), dtype="float32")
        array[:] = values
    with raise_if_dask_computes():
        tomo = Tomogram.from_array(array, pixel_spacing=2.0, experiment_id="t")
        sub = tomo.sel(z=4.0, method="nearest")
    assert sub.data.dims == ("y", "x")
    np.testing.assert_array_equal(sub.data.values, values[2])
    np.testing.assert_array_equal(tomo.data.values, values)


READS: list[object] = []


class ReadSpy:
    """An array that records every read (top-level, so dask pickles it by reference)."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: object) -> np.ndarray:
        READS.append(key)
        return np.asarray(self.array[key])


def test_zarr_reads_only_the_selected_chunks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    array = zarr.create_array(tmp_path / "a.zarr", shape=(8, 8, 8), chunks=(1, 8, 8), dtype="float32")
    array[:] = 1.0
    READS.clear()
    tomo = Tomogram.from_array(ReadSpy(array), pixel_spacing=1.0, experiment_id="t", chunks=(1, 8, 8))
    assert READS == []
    np.testing.assert_array_equal(tomo.isel(z=3).data.values, np.ones((8, 8)))
    assert len(READS) == 1


def test_passes_cryotypes_validate_image() -> None:
    tomo = Tomogram.from_array(np.zeros((4, 4, 4)), pixel_spacing=1.0, experiment_id="t")
    assert cryotypes_validate_image(tomo, ndim=3, stack=False) is tomo
    micro = Micrograph.from_array(np.zeros((4, 4)), pixel_spacing=1.0, experiment_id="m")
    assert cryotypes_validate_image(micro, ndim=2, stack=False) is micro
    stack = Image.from_array(np.zeros((2, 4, 4)), pixel_spacing=1.0, experiment_id="s", stack=True)
    assert cryotypes_validate_image(stack, ndim=2, stack=True) is stack


def test_wrap_existing_dataarray_round_trips_attrs() -> None:
    tomo = Tomogram.from_array(
        np.zeros((2, 3, 4)), pixel_spacing=3.0, experiment_id="t", attrs={"origin": [1, 2, 3]}
    )
    again = Tomogram(tomo.data)
    assert again.experiment_id == "t"
    assert again.data.attrs["origin"] == [1, 2, 3]
    assert "Tomogram 't'" in repr(again)


def test_sel_by_angstrom_keeps_place_in_parent() -> None:
    tomo = Tomogram.from_array(np.arange(64.0).reshape(4, 4, 4), pixel_spacing=10.0, experiment_id="t")
    crop = tomo.sel(x=slice(10, 20), y=slice(20, 30))
    assert isinstance(crop, Tomogram)
    assert crop.shape == (4, 2, 2)
    assert crop.data.x.values.tolist() == [10.0, 20.0]
    np.testing.assert_array_equal(crop.data.values, np.arange(64.0).reshape(4, 4, 4)[:, 2:4, 1:3])


def test_bin_is_lazy_and_correct() -> None:
    values = np.random.default_rng(1).normal(size=(8, 6, 4))
    tomo = Tomogram.from_array(values, pixel_spacing=2.0, experiment_id="t", chunks=2)
    with raise_if_dask_computes():
        binned = tomo.bin(2)
    assert binned.pixel_spacing == 4.0
    assert binned.shape == (4, 3, 2)
    expected = values.reshape(4, 2, 3, 2, 2, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(binned.data.values, expected)
    np.testing.assert_allclose(binned.data.x.values, [1.0, 5.0])
    validate_image(binned.data)


def test_bin_stack_keeps_image_dim_and_trims() -> None:
    stack = Image.from_array(np.ones((3, 5, 5), np.float32), pixel_spacing=1.0, experiment_id="s", stack=True)
    binned = bin_image(stack.data, 2)
    assert binned.sizes == {"image": 3, "y": 2, "x": 2}
    assert binned.dtype == np.float32


BAD_IMAGES = [
    (
        lambda: Tomogram.from_array(np.zeros((2, 2, 2, 2)), pixel_spacing=1.0, experiment_id="t"),
        "must be 2D or 3D",
    ),
    (
        lambda: Tomogram.from_array(np.zeros((2, 2)), pixel_spacing=1.0, experiment_id="t"),
        "expected a 3D array",
    ),
    (
        lambda: Micrograph.from_array(np.zeros((2, 2, 2)), pixel_spacing=1.0, experiment_id="t"),
        "expected a 2D array",
    ),
    (lambda: Tomogram.from_array(np.zeros((2, 2, 2)), pixel_spacing=0.0, experiment_id="t"), "pixel_spacing"),
    (
        lambda: Tomogram.from_array(np.zeros((2, 2, 2)), pixel_spacing=-1.0, experiment_id="t"),
        "pixel_spacing",
    ),
    (
        lambda: Tomogram.from_array(np.zeros((2, 2, 2)), pixel_spacing=float("nan"), experiment_id="t"),
        "pixel_spacing",
    ),
    (lambda: Tomogram.from_array(np.zeros((2, 2, 2)), pixel_spacing=1.0, experiment_id=""), "experiment_id"),
    (lambda: Image(xr.DataArray(np.zeros((2, 2)), dims=("a", "b"))), "dims must be one of"),
    (lambda: Image(xr.DataArray(np.zeros((2, 2)), dims=("y", "x"))), "attrs must hold 'pixel_spacing'"),
]


@pytest.mark.parametrize(("build", "words"), BAD_IMAGES)
def test_bad_images_raise_clear_errors(build, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CryoxrError, match=words) as info:
        build()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, InvalidValueError | SchemaError)


def test_coords_must_follow_spacing() -> None:
    tomo = Micrograph.from_array(np.zeros((3, 3)), pixel_spacing=1.0, experiment_id="m")
    bad = tomo.data.assign_coords(x=[0.0, 1.0, 5.0])
    with pytest.raises(InvalidValueError, match="coordinate 'x'"):
        Image(bad)


def test_public_names_documented() -> None:
    for name in cryoxr.__all__:
        obj = getattr(cryoxr, name)
        assert obj.__doc__, f"cryoxr.{name} has no docstring"


def test_memmap_is_neither_read_nor_copied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dask copies ndarrays it wraps; a 256 MiB memmap must stay on disk until a chunk is read."""
    import pickle

    import psutil

    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(256, 512, 512))
    big[100] = 7.0
    big.flush()
    del big
    mm = np.load(path, mmap_mode="r")
    rss = psutil.Process().memory_info().rss
    tomo = Tomogram.from_array(mm, pixel_spacing=1.0, experiment_id="t", chunks=(16, 512, 512))
    assert psutil.Process().memory_info().rss - rss < 64 * 2**20
    assert float(tomo.data[100].max()) == 7.0
    # a task shipped to another process carries the path, not the voxels
    source = next(
        v for v in dict(tomo.data.data.__dask_graph__()).values() if type(v).__name__ == "ArraySource"
    )
    assert len(pickle.dumps(source)) < 10_000
    assert float(pickle.loads(pickle.dumps(source))[100:101].max()) == 7.0


def test_numpy_input_is_not_copied() -> None:
    array = np.zeros((8, 8, 8))
    tomo = Tomogram.from_array(array, pixel_spacing=1.0, experiment_id="t", chunks=4)
    array[0, 0, 0] = 5.0  # the image reads the caller's array, as numpy views do
    assert float(tomo.data[0, 0, 0]) == 5.0


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=3),
    stack=st.booleans(),
    spacing=st.floats(1e-3, 1e4, allow_nan=False),
)
def test_from_array_builds_valid_images(shape: list[int], stack: bool, spacing: float) -> None:
    """from_array skips re-validating what it built: prove what it builds is valid."""
    stack = stack and len(shape) == 3
    image = Image.from_array(
        np.zeros(shape, np.float32), pixel_spacing=spacing, experiment_id="t", stack=stack
    )
    assert validate_image(image.data) is image.data
    assert Image(image.data).data.identical(image.data)
