"""cryoxr.io.ome_zarr.read: ome-zarr-py and portal-like stores as input, laziness, bytes read."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
import zarr.storage
from ome_zarr.format import FormatV04, FormatV05

from cryoxr import Micrograph, Tomogram
from cryoxr.io.ome_zarr import COMPRESSORS, open_ome_zarr_pyramid, read_ome_zarr, write_ome_zarr
from cryoxr.testing import raise_if_dask_computes

with warnings.catch_warnings():  # ome-zarr-py builds a deprecated Scaler at import
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_multiscale


def _write_multiscale(*args: Any, **kwargs: Any) -> None:
    """ome-zarr-py's writer, with explicit per-level transforms (deprecated there, not removed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The 'coordinate_transformations' argument", DeprecationWarning)
        write_multiscale(*args, **kwargs)


FORMATS = {"0.4": FormatV04, "0.5": FormatV05}


def _reference_mean(x: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    trimmed = x[tuple(slice(0, n - n % f) for n, f in zip(x.shape, factors, strict=True))]
    shape: list[int] = []
    for n, f in zip(trimmed.shape, factors, strict=True):
        shape += [n // f, f]
    return trimmed.reshape(shape).mean(axis=tuple(range(1, 2 * x.ndim, 2)))


# -- ome-zarr-py writes, cryoxr reads -------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize(("unit", "factor"), [("nanometer", 10.0), ("angstrom", 1.0), ("micrometer", 1e4)])
def test_reads_what_ome_zarr_py_writes(
    tmp_path: Path, rng: np.random.Generator, version: str, unit: str, factor: float
) -> None:
    level0 = rng.normal(size=(16, 20, 24)).astype(np.float32)
    pyramid = [level0, _reference_mean(level0, (2, 2, 2)).astype(np.float32)]
    store = tmp_path / "ext.ome.zarr"
    group = zarr.open_group(store, mode="w", zarr_format=2 if version == "0.4" else 3)
    s0 = 0.125
    _write_multiscale(
        pyramid,
        group,
        fmt=FORMATS[version](),
        axes=[{"name": a, "type": "space", "unit": unit} for a in "zyx"],
        coordinate_transformations=[
            [{"type": "scale", "scale": [s0] * 3}],
            [{"type": "scale", "scale": [2 * s0] * 3}, {"type": "translation", "translation": [s0 / 2] * 3}],
        ],
        storage_options={"chunks": (8, 8, 8)},
        name="from_ome_zarr_py",
    )
    with raise_if_dask_computes():
        levels = open_ome_zarr_pyramid(store)
    assert [level.pixel_spacing for level in levels] == [s0 * factor, 2 * s0 * factor]
    assert levels[0].experiment_id == "from_ome_zarr_py"
    assert levels[1].data.attrs["ome_translation"] == [s0 / 2 * factor] * 3
    assert levels[0].data.attrs["ome_version"] == version
    np.testing.assert_array_equal(levels[0].data.values, level0)
    np.testing.assert_array_equal(levels[1].data.values, pyramid[1])
    assert read_ome_zarr(store, level=-1).shape == (8, 10, 12)


def test_reads_a_portal_like_store(tmp_path: Path, rng: np.random.Generator) -> None:
    # CryoET Data Portal: NGFF 0.4, zarr v2, blosc-lz4, scale only (no half-voxel translation)
    store = tmp_path / "TS_026.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=2)
    data = rng.normal(size=(12, 14, 16)).astype(np.float32)
    root.create_array("0", data=data, chunks=(8, 8, 8), compressors=COMPRESSORS["blosc-lz4"](2))  # type: ignore[misc]
    root.create_array("1", data=data[::2, ::2, ::2], chunks=(8, 8, 8))
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [{"scale": [13.48 * 2**i] * 3, "type": "scale"}],
                }
                for i in range(2)
            ],
            "metadata": {},
        }
    ]
    tomo = read_ome_zarr(store)
    assert tomo.experiment_id == "TS_026"
    assert tomo.pixel_spacing == 13.48
    assert tomo.data.attrs["ome_translation"] == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(tomo.data.values, data)
    assert read_ome_zarr(store, level=1).pixel_spacing == 26.96


def test_drops_leading_length_one_channel_axis(tmp_path: Path) -> None:
    store = tmp_path / "c.ome.zarr"
    group = zarr.open_group(store, mode="w", zarr_format=3)
    _write_multiscale(
        [np.ones((1, 4, 6), np.uint16)],
        group,
        fmt=FormatV05(),
        axes=[
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"},
        ],
        coordinate_transformations=[[{"type": "scale", "scale": [1.0, 0.5, 0.5]}]],
        storage_options={"chunks": (1, 4, 6)},
    )
    image = read_ome_zarr(store)
    assert isinstance(image, Micrograph)
    assert image.pixel_spacing == 5.0
    assert image.data.attrs["ome_translation"] == [0.0, 0.0]
    assert read_ome_zarr(store, chunks=None).data.values.sum() == 24


# -- laziness and bytes read --------------------------------------------------------------


class _CountingStore(zarr.storage.WrapperStore[Any]):
    """Counts the chunk bytes read through it."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.chunk_bytes = 0
        self.chunk_reads = 0

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        buffer = await self._store.get(key, prototype, byte_range)
        if buffer is not None and not key.endswith(("zarr.json", ".zattrs", ".zarray", ".zgroup")):
            self.chunk_bytes += len(buffer)
            self.chunk_reads += 1
        return buffer


@pytest.mark.parametrize("chunks", ["auto", None])
def test_open_select_read_only_one_slice(tmp_path: Path, chunks: Any) -> None:
    data = da.arange(64 * 64 * 64, dtype=np.float32, chunks=4096).reshape(64, 64, 64).rechunk((16, 64, 64))
    tomo = Tomogram.from_array(data, pixel_spacing=5.0, experiment_id="t")
    path = write_ome_zarr(tomo, tmp_path / "t.ome.zarr", chunks=(16, 16, 16), compressor=None, levels=1)
    store = _CountingStore(zarr.storage.LocalStore(path, read_only=True))
    with raise_if_dask_computes():
        opened = read_ome_zarr(store, chunks=chunks)
        plane = opened.sel(z=50.0)
        box = opened.isel(z=slice(0, 16), y=slice(16, 32), x=slice(32, 48))
    assert store.chunk_reads == 0
    assert plane.shape == (64, 64)
    np.testing.assert_array_equal(plane.data.values, data[10].compute())
    assert store.chunk_reads == 16  # the 4 x 4 chunks that hold z = 10, uncompressed
    assert store.chunk_bytes == 16 * 16**3 * 4
    np.testing.assert_array_equal(box.data.values, data[:16, 16:32, 32:48].compute())
    assert store.chunk_reads == 17
