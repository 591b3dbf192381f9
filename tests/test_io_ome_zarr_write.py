"""cryoxr.io.ome_zarr.write: valid NGFF for ome-zarr-py and ome-zarr-models, pyramids, round trips, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dask.array as da
import mrcfile
import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v04.image import Image as ImageModelV04
from ome_zarr_models.v05.image import Image as ImageModelV05

from cryoxr import Image, Micrograph, Tomogram
from cryoxr.errors import FileExistsNoOverwriteError, InvalidValueError
from cryoxr.io.mrc import read_mrc, write_mrc
from cryoxr.io.ome_zarr import (
    COMPRESSORS,
    downsample_mean,
    open_ome_zarr_pyramid,
    read_ome_zarr,
    write_ome_zarr,
)
from cryoxr.testing import raise_if_dask_computes

MODELS = {"0.4": ImageModelV04, "0.5": ImageModelV05}


@pytest.fixture
def tomo(rng: np.random.Generator) -> Tomogram:
    data = rng.normal(size=(37, 41, 43)).astype(np.float32)
    return Tomogram.from_array(data, pixel_spacing=10.0, experiment_id="TS_01", chunks=(20, 41, 43))


def _reference_mean(x: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    trimmed = x[tuple(slice(0, n - n % f) for n, f in zip(x.shape, factors, strict=True))]
    shape: list[int] = []
    for n, f in zip(trimmed.shape, factors, strict=True):
        shape += [n // f, f]
    return trimmed.reshape(shape).mean(axis=tuple(range(1, 2 * x.ndim, 2)))


# -- cryoxr writes, ome-zarr-py and ome-zarr-models read -----------------------------------


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_written_store_is_valid_ngff(tmp_path: Path, tomo: Tomogram, version: str) -> None:
    path = write_ome_zarr(tomo, tmp_path / "t.ome.zarr", version=version, chunks=(16, 16, 16), levels=3)
    group = zarr.open_group(path, mode="r")
    model = MODELS[version].from_zarr(group)  # the NGFF schema, as pydantic models
    assert len((model.attributes.ome if version == "0.5" else model.attributes).multiscales[0].datasets) == 3
    attrs = group.attrs.asdict()
    ms = (attrs["ome"] if version == "0.5" else attrs)["multiscales"][0]
    assert "omero" not in json.dumps(attrs)
    assert ms["axes"] == [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"]
    transforms = [d["coordinateTransformations"] for d in ms["datasets"]]
    # docs/CONVENTIONS.md §11: pixel centres, s0 = 10 -> level 1 (20, 5), level 2 (40, 15)
    assert [t[0]["scale"][0] for t in transforms] == [10.0, 20.0, 40.0]
    assert [t[1]["translation"][0] for t in transforms] == [0.0, 5.0, 15.0]
    if version == "0.5":
        assert group["0"].metadata.dimension_names == ("z", "y", "x")  # type: ignore[union-attr]
    # ome-zarr-py reads it with the same scale
    node = next(iter(Reader(parse_url(str(path)))()))
    assert [d.shape for d in node.data] == [(37, 41, 43), (18, 20, 21), (9, 10, 10)]
    assert node.metadata["coordinateTransformations"][1][0]["scale"] == [20.0, 20.0, 20.0]
    np.testing.assert_array_equal(np.asarray(node.data[0]), tomo.data.values)


def test_pyramid_is_the_2x_mean(tmp_path: Path, tomo: Tomogram) -> None:
    path = write_ome_zarr(tomo, tmp_path / "t.ome.zarr", chunks=(8, 16, 16), levels=4)
    levels = open_ome_zarr_pyramid(path)
    assert [lv.shape for lv in levels] == [(37, 41, 43), (18, 20, 21), (9, 10, 10), (4, 5, 5)]
    expected = tomo.data.values
    for factor, level in zip((1, 2, 4, 8), levels, strict=True):
        assert level.pixel_spacing == 10.0 * factor
        assert level.data.dtype == np.float32
        np.testing.assert_allclose(level.data.values, expected, rtol=1e-5, atol=1e-6)
        expected = _reference_mean(expected, (2, 2, 2)).astype(np.float32)


def test_levels_stop_at_one_pixel(tmp_path: Path) -> None:
    m = Micrograph.from_array(np.ones((4, 16), np.int16), pixel_spacing=1.0, experiment_id="m")
    levels = open_ome_zarr_pyramid(write_ome_zarr(m, tmp_path / "m.zarr", levels=6))
    assert [lv.shape for lv in levels] == [(4, 16), (2, 8), (1, 4)]
    assert all(lv.data.dtype == np.int16 for lv in levels)


def test_stack_and_sharded_store(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 1000, size=(3, 32, 40)).astype(np.uint16)
    stack = Image.from_array(data, pixel_spacing=2.0, experiment_id="ts", stack=True)
    path = write_ome_zarr(stack, tmp_path / "ts.ome.zarr", chunks=(8, 8), shards=(16, 16), levels=2)
    group = zarr.open_group(path, mode="r")
    ImageModelV05.from_zarr(group)
    assert group["0"].shards == (1, 16, 16)  # type: ignore[union-attr]
    assert group["0"].chunks == (1, 8, 8)  # type: ignore[union-attr]
    levels = open_ome_zarr_pyramid(path)
    assert levels[0].stack
    assert levels[1].shape == (3, 16, 20)
    np.testing.assert_array_equal(levels[0].data.values, data)
    np.testing.assert_array_equal(
        levels[1].data.values, np.rint(_reference_mean(data, (1, 2, 2))).astype(np.uint16)
    )
    assert levels[1].data.attrs["ome_translation"] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_compressors(tmp_path: Path, tomo: Tomogram, compressor: str | None, version: str) -> None:
    path = tomo.to_zarr(tmp_path / "t.zarr", compressor=compressor, version=version, levels=1)
    np.testing.assert_array_equal(read_ome_zarr(path).data.values, tomo.data.values)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float16, np.uint16])
def test_mrc_to_ome_zarr_to_mrc_keeps_everything(
    tmp_path: Path, rng: np.random.Generator, version: str, dtype: Any
) -> None:
    src = tmp_path / "src.mrc"
    data = (rng.normal(size=(9, 10, 11)) * 100).astype(dtype)
    with mrcfile.new(src) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 13.48
        mrc.header.origin = (1.5, -2.0, 300.25)
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = 1, 2, 3
        mrc.set_extended_header(np.frombuffer(b"0123456789abcdef" * 8, dtype="V1"))
        mrc.header.exttyp = b"SERI"
        mrc.header.label[1] = b"another label"
        mrc.header.nlabl = 2
    zarr_path = read_mrc(src).to_zarr(tmp_path / "mid.ome.zarr", version=version, levels=2, chunks=(4, 4, 4))
    back = read_ome_zarr(zarr_path)
    assert back.pixel_spacing == 13.48
    assert back.experiment_id == "src"
    assert back.source == str(zarr_path)
    out = write_mrc(back, tmp_path / "out.mrc")
    with mrcfile.open(src) as a, mrcfile.open(out) as b:
        assert a.data.tobytes() == b.data.tobytes()
        assert bytes(a.extended_header) == bytes(b.extended_header)
        for field in a.header.dtype.names:  # every field, bit for bit
            assert np.asarray(a.header[field]).tobytes() == np.asarray(b.header[field]).tobytes(), field


# -- writing safely ------------------------------------------------------------------------


def _fail(block: np.ndarray, block_info: Any = None) -> np.ndarray:
    if block_info is not None and block_info[0]["chunk-location"][0] == 2:
        raise OSError(28, "No space left on device (simulated)")
    return block


def test_failed_write_leaves_nothing_and_keeps_original(tmp_path: Path, tomo: Tomogram) -> None:
    original = write_ome_zarr(tomo, tmp_path / "t.ome.zarr", levels=1)
    before = sorted(p.relative_to(original) for p in original.rglob("*"))
    bad = Tomogram.from_array(
        da.ones((40, 8, 8), chunks=(10, 8, 8), dtype=np.float32).map_blocks(_fail),
        pixel_spacing=1.0,
        experiment_id="b",
    )
    with pytest.raises(OSError, match="simulated"):
        write_ome_zarr(bad, original, overwrite=True, chunks=(10, 8, 8))
    with pytest.raises(OSError, match="simulated"):
        write_ome_zarr(bad, tmp_path / "new.ome.zarr", chunks=(10, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.ome.zarr"]
    assert sorted(p.relative_to(original) for p in original.rglob("*")) == before
    np.testing.assert_array_equal(read_ome_zarr(original).data.values, tomo.data.values)
    with pytest.raises(FileExistsNoOverwriteError):
        write_ome_zarr(tomo, original)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": "0.6"}, "version"),
        ({"compressor": "gzip"}, "compressor"),
        ({"levels": 0}, "levels"),
        ({"chunks": (0, 4, 4)}, "chunks"),
        ({"shards": (8, 8, 8), "version": "0.4"}, "shards need"),
        ({"shards": (6, 6, 6), "chunks": (4, 4, 4)}, "multiples"),
    ],
)
def test_write_rejects_bad_options(
    tmp_path: Path, tomo: Tomogram, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidValueError, match=match):
        write_ome_zarr(tomo, tmp_path / "t.zarr", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_unstorable_attr_is_refused(tmp_path: Path) -> None:
    tomo = Tomogram.from_array(
        np.ones((2, 2, 2)), pixel_spacing=1.0, experiment_id="t", attrs={"bad": object()}
    )
    with pytest.raises(InvalidValueError, match="'bad'"):
        write_ome_zarr(tomo, tmp_path / "t.zarr")


def test_downsample_mean_is_lazy_and_chunk_local() -> None:
    x = da.ones((10, 9, 7), chunks=(3, 5, 7), dtype=np.float32)
    with raise_if_dask_computes():
        y = downsample_mean(x, (2, 2, 2))
    assert y.shape == (5, 4, 3)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.compute(), 1.0)


# -- bounded memory ---------------------------------------------------------------------------


CONVERT = """
import sys, threading, time
import psutil
from cryoxr.io.mrc import read_mrc
from cryoxr.io.ome_zarr import write_ome_zarr

# sample the resident set: ru_maxrss would include the parent's peak (kept across fork/exec)
process, peak, done = psutil.Process(), [0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.005)
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
t0 = time.perf_counter()
write_ome_zarr(read_mrc(sys.argv[1]), sys.argv[2], levels=4)
seconds = time.perf_counter() - t0
done.set()
watcher.join()
print(peak[0], seconds)
"""


@pytest.mark.slow
def test_two_gib_conversion_peak_rss(tmp_path: Path) -> None:
    path = tmp_path / "big.mrc"
    shape = (512, 1024, 1024)  # 2 GiB of float32
    with mrcfile.new(path) as mrc:  # the header of a 2 GiB file, then its data slab by slab
        mrc.set_data(np.zeros((2, 2, 2), np.float32))
        mrc.voxel_size = 5.0
        mrc.header.nx, mrc.header.ny, mrc.header.nz = shape[::-1]
        mrc.header.mx, mrc.header.my, mrc.header.mz = shape[::-1]
        mrc.header.cella = tuple(5.0 * n for n in shape[::-1])
        mrc.flush()
    pattern = np.random.default_rng(0).standard_normal((64, 1024, 1024), dtype=np.float32)
    with open(path, "r+b") as f:
        f.truncate(1024)
        f.seek(1024)
        for _ in range(0, shape[0], 64):
            f.write(pattern.tobytes())  # real, incompressible data; no memory map here
    del pattern
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CONVERT), str(path), str(tmp_path / "big.ome.zarr")],
        capture_output=True,
        text=True,
        check=True,
    )
    peak, seconds = result.stdout.split()
    assert int(peak) < 600 * 2**20, f"peak RSS {int(peak) / 2**20:.0f} MiB in {float(seconds):.1f} s"
    assert read_ome_zarr(tmp_path / "big.ome.zarr", level=3).shape == (64, 128, 128)
