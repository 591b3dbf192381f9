"""cryoxr.io.mrc: mrcfile as the independent oracle, laziness, bytes read, bad files, atomic writes."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import mrcfile
import numpy as np
import pytest
import xarray as xr

from cryoxr import Image, Micrograph, Tomogram
from cryoxr.errors import (
    CryoxrError,
    CryoxrFileNotFoundError,
    FileExistsNoOverwriteError,
    FormatError,
    InvalidValueError,
    UnknownFormatError,
)
from cryoxr.io.mrc import MRC_MODES, MrcArray, read_mrc, write_mrc
from cryoxr.testing import raise_if_dask_computes

SHAPE = (43, 41, 37)  # nz, ny, nx: odd sizes, nx = 37, ny = 41, nz = 43


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    if dtype.kind == "c":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _mrcfile_write(path: Path, data: np.ndarray, *, voxel_size: float = 2.5, stack: bool = False) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


def _patch_header(path: Path, **fields: Any) -> None:
    with mrcfile.mmap(path, mode="r+", permissive=True) as mrc:
        for key, value in fields.items():
            mrc.header[key] = value


# -- mrcfile writes, cryoxr reads -----------------------------------------------------------
KINDS = {
    # kind: (shape, stack flag for mrcfile, suffix, expected class, expected dims)
    "volume": (SHAPE, False, ".mrc", Tomogram, ("z", "y", "x")),
    "stack": (SHAPE, True, ".st", Image, ("image", "y", "x")),
    "mrcs": ((1, 41, 37), False, ".mrcs", Image, ("image", "y", "x")),
    "2d": ((41, 37), False, ".mrc", Micrograph, ("y", "x")),
}


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("mode", sorted(MRC_MODES))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reads_what_mrcfile_writes(
    tmp_path: Path, rng: np.random.Generator, mode: int, order: str, kind: str
) -> None:
    shape, stack, suffix, cls, dims = KINDS[kind]
    expected = _random(rng, shape, MRC_MODES[mode])
    path = _mrcfile_write(
        tmp_path / f"TS_07{suffix}", expected.astype(expected.dtype.newbyteorder(order)), stack=stack
    )
    with mrcfile.open(path) as mrc:  # the oracle agrees on mode and byte order
        assert int(mrc.header.mode) == mode
        assert mrc.data.dtype.byteorder in ({"<": "<", ">": ">"}[order], "=", "|")
    with raise_if_dask_computes():
        image = read_mrc(path)
    assert type(image) is cls
    assert image.dims == dims
    assert image.pixel_spacing == 2.5
    assert image.experiment_id == "TS_07"
    assert image.source == str(path)
    assert image.data.dtype == expected.dtype  # native byte order
    assert isinstance(image.data.data, da.Array)
    np.testing.assert_array_equal(image.data.values, expected)
    lazy = read_mrc(path, chunks=None)
    assert not isinstance(lazy.data.variable._data, da.Array)
    np.testing.assert_array_equal(lazy.data.values, expected)
    np.testing.assert_array_equal(lazy.data[..., 3].values, expected[..., 3])


def test_coords_and_worked_example(tmp_path: Path) -> None:
    # CONVENTIONS 1.3: cella 12509.44 over mx 928 is 13.48 Å; voxel size is cella / mx, not / nx
    path = tmp_path / "tomo.rec"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 8, 8), np.float32))
        mrc.header.mx, mrc.header.my, mrc.header.mz = 928, 928, 464
        mrc.header.cella = (12509.44, 12509.44, 6254.72)
    tomo = read_mrc(path, experiment_id="TS_01")
    assert tomo.pixel_spacing == 13.48
    assert tomo.experiment_id == "TS_01"
    np.testing.assert_allclose(tomo.data.x.values, np.arange(8) * 13.48)
    assert tomo.data.x.attrs["units"] == "angstrom"
    assert tomo.data.attrs["mrc_sampling"] == [928, 928, 464]


def test_header_fields_kept_and_written_back(tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "a.mrc"
    with mrcfile.new(src) as mrc:
        mrc.set_data(_random(rng, SHAPE, np.dtype(np.float32)))
        mrc.voxel_size = 1.35
        mrc.header.origin = (-10.5, 3.25, 100.0)
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = 5, -6, 7
        mrc.set_extended_header(np.frombuffer(bytes(range(64)), dtype="V1"))
        mrc.header.exttyp = b"FEI1"
        mrc.header.label[0] = b"made by mrcfile"
        mrc.header.label[1] = b"second label   "
        mrc.header.nlabl = 2
        mrc.header.cellb = (90.0, 90.0, 120.0)
    image = read_mrc(src)
    attrs = image.data.attrs
    assert attrs["mrc_origin"] == [-10.5, 3.25, 100.0]
    assert attrs["mrc_nstart"] == [5, -6, 7]
    assert attrs["mrc_exttyp"] == "FEI1"
    assert attrs["mrc_labels"] == ["made by mrcfile", "second label   "]
    out = write_mrc(image, tmp_path / "b.mrc")
    _assert_same_header(src, out, exact=True)  # unchanged data: the file's own statistics


def _assert_same_header(a: Path, b: Path, *, skip: tuple[str, ...] = (), exact: bool = False) -> None:
    with mrcfile.open(a) as ma, mrcfile.open(b) as mb:
        np.testing.assert_array_equal(ma.data, mb.data)
        assert bytes(ma.extended_header) == bytes(mb.extended_header)
        for field in ma.header.dtype.names:
            if field in skip:
                continue
            if field in ("dmean", "rms") and not exact:  # float64 accumulation here, float32 in mrcfile
                np.testing.assert_allclose(mb.header[field], ma.header[field], rtol=1e-5, err_msg=field)
            else:
                assert np.asarray(ma.header[field]).tobytes() == np.asarray(mb.header[field]).tobytes(), field


@pytest.mark.parametrize("mode", sorted(MRC_MODES))
def test_write_then_mrcfile_reads(tmp_path: Path, rng: np.random.Generator, mode: int) -> None:
    data = _random(rng, SHAPE, MRC_MODES[mode])
    tomo = Tomogram.from_array(data, pixel_spacing=3.0, experiment_id="t", chunks=(10, 20, 37))
    path = tomo.to_mrc(tmp_path / "t.mrc")
    oracle = _mrcfile_write(tmp_path / "oracle.mrc", data, voxel_size=3.0)
    with mrcfile.open(path) as mrc:  # strict mode: mrcfile validates the header
        assert int(mrc.header.mode) == mode
        assert mrc.is_volume()
        np.testing.assert_array_equal(mrc.data, data)
    if mode != 12:  # mrcfile's validator sums squares in float16 and overflows
        log = io.StringIO()
        assert mrcfile.validate(str(path), print_file=log), log.getvalue()
    # the same header as mrcfile writes for the same data (mrcfile adds a "created by" label)
    skip = ("nlabl", "label") if mode != 4 else ("nlabl", "label", "dmin", "dmax", "dmean")
    _assert_same_header(oracle, path, skip=skip)


def test_write_stack_and_2d(tmp_path: Path, rng: np.random.Generator) -> None:
    stack = Image.from_array(rng.normal(size=(3, 5, 6)).astype(np.float32), pixel_spacing=2.0,
                             experiment_id="s", stack=True)  # fmt: skip
    with mrcfile.open(write_mrc(stack, tmp_path / "s.mrcs")) as mrc:
        assert mrc.is_image_stack()
        assert float(mrc.voxel_size.x) == 2.0
    assert read_mrc(tmp_path / "s.mrcs").stack
    micrograph = Micrograph.from_array(np.arange(30, dtype=np.int16).reshape(5, 6), pixel_spacing=1.0,
                                       experiment_id="m")  # fmt: skip
    with mrcfile.open(write_mrc(micrograph, tmp_path / "m.mrc")) as mrc:
        assert mrc.is_single_image()
        assert mrc.data.shape == (5, 6)
    assert isinstance(read_mrc(tmp_path / "m.mrc"), Micrograph)


@pytest.mark.parametrize(
    ("dtype", "mode", "expected"),
    [
        (np.uint8, None, 6),
        (np.float64, None, 2),
        (np.float32, 12, 12),
        (np.int32, 2, 2),
        (np.complex128, None, 4),
    ],
)
def test_write_modes(tmp_path: Path, dtype: Any, mode: int | None, expected: int) -> None:
    data = np.arange(24).reshape(2, 3, 4).astype(dtype)
    path = write_mrc(
        Tomogram.from_array(data, pixel_spacing=1.0, experiment_id="t"), tmp_path / "t.mrc", mode=mode
    )
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == expected
        np.testing.assert_array_equal(mrc.data, data.astype(MRC_MODES[expected]))


def test_write_refuses_dtype_and_mode(tmp_path: Path) -> None:
    tomo = Tomogram.from_array(np.zeros((2, 2, 2), np.int32), pixel_spacing=1.0, experiment_id="t")
    with pytest.raises(InvalidValueError, match="int32"):
        write_mrc(tomo, tmp_path / "t.mrc")
    with pytest.raises(InvalidValueError, match="mode must be one of"):
        write_mrc(tomo, tmp_path / "t.mrc", mode=3)
    assert list(tmp_path.iterdir()) == []


def test_rebinned_image_gets_new_cell(tmp_path: Path) -> None:
    src = _mrcfile_write(tmp_path / "a.mrc", np.ones((8, 8, 8), np.float32), voxel_size=5.0)
    binned = read_mrc(src).bin(2)
    with mrcfile.open(write_mrc(binned, tmp_path / "b.mrc")) as mrc:
        assert mrc.data.shape == (4, 4, 4)
        assert float(mrc.voxel_size.x) == 10.0
        assert (int(mrc.header.mx), float(mrc.header.cella.x)) == (4, 40.0)


def test_mapcrs_permutation_is_transposed(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = _random(rng, (4, 5, 6), np.dtype(np.float32))  # sections, rows, columns
    path = _mrcfile_write(tmp_path / "p.mrc", stored)
    _patch_header(path, mapc=3, mapr=2, maps=1)  # columns are z, sections are x
    expected = stored.transpose(2, 1, 0)
    for chunks in ("auto", None):
        tomo = read_mrc(path, chunks=chunks)
        assert tomo.shape == (6, 5, 4)
        np.testing.assert_array_equal(tomo.data.values, expected)


# -- laziness and bytes read --------------------------------------------------------------
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
    monkeypatch.setattr("cryoxr.io.mrc.MrcArray", _CountingMrcArray)
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


# -- bad files ----------------------------------------------------------------------------
def _good(tmp_path: Path, name: str = "bad.mrc") -> Path:
    return _mrcfile_write(tmp_path / name, np.zeros((4, 6, 8), np.float32))


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda p: _truncate(p, 500), FormatError, "truncated header"),
        (lambda p: _truncate(p, 1024 + 4 * 6 * 8 * 4 - 1), FormatError, "data block truncated"),
        (lambda p: _patch_header(p, nz=5), FormatError, "nx, ny, nz"),
        (lambda p: _patch_header(p, mode=3), FormatError, "field mode.*3"),
        (lambda p: _patch_header(p, mode=101), FormatError, "field mode.*101"),
        (lambda p: _patch_header(p, cella=(np.nan, 8.0, 4.0)), FormatError, "cella.x"),
        (lambda p: _patch_header(p, cella=(0.0, 0.0, 0.0)), FormatError, "cella.x"),
        (lambda p: _patch_header(p, mx=0), FormatError, "mx"),
        (lambda p: _patch_header(p, cella=(8.0, 6.0, 8.0)), FormatError, "anisotropic"),
        (lambda p: _patch_header(p, mapc=1, mapr=1, maps=3), FormatError, "mapc, mapr, maps"),
        (lambda p: _patch_header(p, nx=-8), FormatError, "nx"),
        (lambda p: _patch_header(p, nsymbt=-1), FormatError, "nsymbt"),
        (lambda p: _patch_header(p, ispg=401, mz=2), UnknownFormatError, "stack of volumes"),
    ],
)
def test_bad_files(tmp_path: Path, damage: Any, error: type[Exception], match: str) -> None:
    path = _good(tmp_path)
    damage(path)
    with pytest.raises(error, match=match) as info:
        read_mrc(path)
    assert isinstance(info.value, CryoxrError)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CryoxrFileNotFoundError, match=r"nope\.mrc"):
        read_mrc(tmp_path / "nope.mrc")


def test_anisotropic_allowed_keeps_x_and_warns(tmp_path: Path) -> None:
    path = _good(tmp_path)
    _patch_header(path, cella=(8.0, 8.0, 8.0))  # x: 1, y: 8/6, z: 2 Å
    with pytest.warns(UserWarning, match="anisotropic"):
        tomo = read_mrc(path, allow_anisotropic=True)
    assert tomo.pixel_spacing == 1.0
    assert read_mrc(path, pixel_spacing=2.0).pixel_spacing == 2.0  # explicit override


def test_unknown_machine_stamp_is_guessed(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _random(rng, (3, 4, 5), np.dtype(">i2"))
    path = _mrcfile_write(tmp_path / "a.mrc", data)
    _patch_header(path, machst=(0, 0, 0, 0))
    np.testing.assert_array_equal(read_mrc(path).data.values, data)


# -- writing safely -----------------------------------------------------------------------
def _fail_on_last_block(block: np.ndarray, block_info: Any = None) -> np.ndarray:
    if block_info is not None and block_info[0]["chunk-location"][0] == 3:
        raise OSError(28, "No space left on device (simulated)")
    return block


def test_failed_write_leaves_no_file_and_keeps_original(tmp_path: Path) -> None:
    original = _good(tmp_path, "t.mrc")
    before = original.read_bytes()
    data = da.ones((40, 6, 8), chunks=(10, 6, 8), dtype=np.float32).map_blocks(_fail_on_last_block)
    tomo = Tomogram.from_array(data, pixel_spacing=1.0, experiment_id="t")
    with pytest.raises(OSError, match="simulated"):
        write_mrc(tomo, original, overwrite=True)
    assert original.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.mrc"]
    with pytest.raises(OSError, match="simulated"):
        write_mrc(tomo, tmp_path / "new.mrc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.mrc"]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    original = _good(tmp_path, "t.mrc")
    before = original.read_bytes()
    tomo = Tomogram.from_array(np.ones((2, 2, 2), np.float32), pixel_spacing=1.0, experiment_id="t")
    with pytest.raises(FileExistsNoOverwriteError, match=r"t\.mrc"):
        write_mrc(tomo, original)
    assert original.read_bytes() == before
    write_mrc(tomo, original, overwrite=True)
    assert read_mrc(original).shape == (2, 2, 2)


def test_write_streams_chunk_by_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cryoxr.io.mrc as mrc_module

    sizes: list[int] = []
    setitem = mrc_module._MrcWriteTarget.__setitem__

    def spy(self: Any, key: Any, value: np.ndarray) -> None:
        sizes.append(value.nbytes)
        setitem(self, key, value)

    monkeypatch.setattr(mrc_module._MrcWriteTarget, "__setitem__", spy)
    data = da.random.default_rng(0).random((40, 32, 32), chunks=(8, 16, 32)).astype(np.float32)
    write_mrc(Tomogram.from_array(data, pixel_spacing=1.0, experiment_id="t"), tmp_path / "t.mrc")
    assert len(sizes) == 10
    assert max(sizes) == 8 * 16 * 32 * 4
    np.testing.assert_array_equal(read_mrc(tmp_path / "t.mrc").data.values, data.compute())


def test_stale_statistics_are_recomputed(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    src = _mrcfile_write(tmp_path / "a.mrc", data)
    image = read_mrc(src)
    assert image.data.attrs["mrc_stats"][:2] == [0.0, 23.0]
    doubled = Tomogram(image.data.copy(data=image.data.data * 2))  # attrs (and stale stats) kept
    with mrcfile.open(write_mrc(doubled, tmp_path / "b.mrc")) as mrc:
        assert (float(mrc.header.dmin), float(mrc.header.dmax)) == (0.0, 46.0)
        assert float(mrc.header.dmean) == 23.0
        np.testing.assert_allclose(float(mrc.header.rms), (data * 2).std(), rtol=1e-6)


def test_rechunk_from_file_rereads_only_unmodified_reads(tmp_path: Path, rng: np.random.Generator) -> None:
    from cryoxr.io.mrc import rechunk_from_file

    data = _random(rng, (8, 12, 10), np.dtype(np.float32))
    tomo = read_mrc(_mrcfile_write(tmp_path / "a.mrc", data))
    fresh = rechunk_from_file(tomo.data.data, (4, 4, 4))
    assert fresh.chunks == ((4, 4), (4, 4, 4), (4, 4, 2))
    assert fresh.name != tomo.data.data.rechunk((4, 4, 4)).name  # a new graph on the file
    np.testing.assert_array_equal(fresh.compute(), data)
    modified = tomo.data.data + 1  # not the file any more: plain rechunk
    again = rechunk_from_file(modified, (4, 4, 4))
    assert again.name == modified.rechunk((4, 4, 4)).name
    np.testing.assert_array_equal(again.compute(), data + 1)


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
