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
from cryoxr.errors import FormatError
from cryoxr.io.ome_zarr import COMPRESSORS, open_ome_zarr_pyramid, read_ome_zarr, write_ome_zarr
from cryoxr.io.ome_zarr._store import METADATA_NAMES
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


# -- issue 22: links, pipes, sizes and depths that a store must not make the reader follow --------


def _store(tmp_path: Path, version: str = "0.5") -> Path:
    tomo = Tomogram.from_array(
        np.arange(64, dtype=np.float32).reshape(4, 4, 4), pixel_spacing=1.0, experiment_id="t"
    )
    return write_ome_zarr(tomo, tmp_path / "t.ome.zarr", levels=2, chunks=(2, 2, 2), version=version)


def _a_chunk(store: Path) -> Path:
    return next(p for p in sorted((store / "0").rglob("*")) if p.is_file() and p.name not in METADATA_NAMES)


@pytest.mark.parametrize("chunks", ["auto", None])
def test_chunk_linked_to_dev_zero_or_outside_is_refused(tmp_path: Path, chunks: Any) -> None:
    """Issue 22: a chunk linked to /dev/zero was read whole (OOM kill or a raw MemoryError)."""
    store = _store(tmp_path)
    chunk = _a_chunk(store)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(chunk.read_bytes())
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    image = read_ome_zarr(store, chunks=chunks)  # metadata only: opening is fine
    with pytest.raises(
        FormatError, match=r"is a link to /dev/zero, outside the store.*allow_links_outside=True"
    ):
        image.data.values  # noqa: B018
    # a link to a regular file outside: refused too, read when allowed
    chunk.unlink()
    chunk.symlink_to(outside)
    with pytest.raises(FormatError, match="outside the store"):
        read_ome_zarr(store, chunks=chunks).data.values  # noqa: B018
    allowed = read_ome_zarr(store, chunks=chunks, allow_links_outside=True)
    np.testing.assert_array_equal(allowed.data.values, np.arange(64).reshape(4, 4, 4))
    # even allowed, a device is not a regular file
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    with pytest.raises(FormatError, match="is a character device, not a regular file"):
        read_ome_zarr(store, chunks=chunks, allow_links_outside=True).data.values  # noqa: B018


def test_level_folder_linked_outside_is_refused(tmp_path: Path) -> None:
    """Issue 22: a level folder linked to a folder outside the store was followed silently."""
    store = _store(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (store / "1").rename(elsewhere)
    (store / "1").symlink_to(elsewhere)
    with pytest.raises(FormatError, match=r"/1/zarr\.json: a member of the OME-Zarr store .* is a link to"):
        read_ome_zarr(store, level=1)
    with pytest.raises(FormatError, match="outside the store"):
        open_ome_zarr_pyramid(store)
    assert read_ome_zarr(store, level=1, allow_links_outside=True).shape == (2, 2, 2)
    # a store named through a link is the user's choice: followed
    (tmp_path / "named.ome.zarr").symlink_to(store)
    assert read_ome_zarr(tmp_path / "named.ome.zarr").shape == (4, 4, 4)


@pytest.mark.parametrize("member", ["zarr.json", "chunk"])
def test_pipes_in_a_store_are_refused_at_once(tmp_path: Path, member: str) -> None:
    import os
    import threading

    store = _store(tmp_path)
    target = store / "zarr.json" if member == "zarr.json" else _a_chunk(store)
    target.unlink()
    os.mkfifo(target)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_ome_zarr(store).data.values  # noqa: B018
        except BaseException as err:
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "the reader blocked on a named pipe"
    assert isinstance(outcome[0], FormatError)
    assert "is a named pipe (FIFO), not a regular file" in str(outcome[0])
    assert str(target) in str(outcome[0])


def test_metadata_too_large_or_too_deep(tmp_path: Path) -> None:
    """Issue 22: zarr.json nested 100,000 levels raised a raw RecursionError."""
    store = _store(tmp_path)
    meta = store / "zarr.json"
    meta.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match=r"zarr\.json: zarr metadata: expected JSON, found nesting deeper"):
        read_ome_zarr(store)
    with open(meta, "wb") as f:  # sparse: 17 MiB that cost no disk
        f.truncate(17 * 2**20)
    with pytest.raises(
        FormatError,
        match=r"zarr\.json: zarr metadata file of 17825792 bytes .*expected at most 16777216 bytes",
    ):
        read_ome_zarr(store)
    (tmp_path / "deep").mkdir()
    deep = _store(tmp_path / "deep")
    (deep / "0" / "zarr.json").write_text('{"a": ' * 50_000 + "1" + "}" * 50_000)
    with pytest.raises(FormatError, match="nesting deeper"):
        read_ome_zarr(deep)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_chunk_file_larger_than_it_can_be_is_refused(tmp_path: Path, version: str) -> None:
    """A sparse chunk of 4 GiB (no disk used): refused before it is read, not allocated."""
    store = _store(tmp_path, version)
    chunk = _a_chunk(store)
    with open(chunk, "r+b") as f:
        f.truncate(4 * 2**30)
    image = read_ome_zarr(store)
    bound = 2 * 8 * 4 + 2**20  # twice a 2x2x2 float32 chunk, plus 1 MiB
    with pytest.raises(
        FormatError, match=rf"zarr chunk file of {4 * 2**30} bytes .*expected at most {bound} bytes"
    ):
        image.data.values  # noqa: B018


@pytest.mark.parametrize("nan", [False, True])
def test_reductions_as_typed_skip_nan_only_where_there_is_nan(tmp_path: Path, nan: bool) -> None:
    from cryoxr.io.mrc.array import NanCheckedArray

    values = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8) / 3
    if nan:
        values[1, 2, 3] = np.nan
    tomo = Tomogram.from_array(values, pixel_spacing=2.0, experiment_id="t")
    path = write_ome_zarr(tomo, tmp_path / "t.ome.zarr", chunks=(2, 3, 8))
    data = read_ome_zarr(path).data
    assert isinstance(data.data.blocks[0, 0, 0].compute(), NanCheckedArray)  # the plain reduction first
    np.testing.assert_allclose(float(data.mean()), np.nanmean(values.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(float(data.std()), np.nanstd(values.astype(np.float64)), rtol=1e-5)
    assert float(data.max()) == np.nanmax(values)
    assert np.isnan(float(data.mean(skipna=False))) == nan
