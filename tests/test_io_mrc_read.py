"""cryoxr.io.mrc.read: what mrcfile writes, cryoxr reads; bad files; re-reading at other chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import mrcfile
import numpy as np
import pytest

from cryoxr import Image, Micrograph, Tomogram
from cryoxr.errors import CryoxrError, CryoxrFileNotFoundError, FormatError, UnknownFormatError
from cryoxr.io.mrc import MRC_MODES, read_mrc
from cryoxr.testing import patch_mrc_header as _patch_header
from cryoxr.testing import raise_if_dask_computes
from cryoxr.testing import random_array as _random
from cryoxr.testing import write_mrc_with_mrcfile as _mrcfile_write

SHAPE = (43, 41, 37)  # nz, ny, nx: odd sizes, nx = 37, ny = 41, nz = 43


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


def test_mapcrs_permutation_is_transposed(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = _random(rng, (4, 5, 6), np.dtype(np.float32))  # sections, rows, columns
    path = _mrcfile_write(tmp_path / "p.mrc", stored)
    _patch_header(path, mapc=3, mapr=2, maps=1)  # columns are z, sections are x
    expected = stored.transpose(2, 1, 0)
    for chunks in ("auto", None):
        tomo = read_mrc(path, chunks=chunks)
        assert tomo.shape == (6, 5, 4)
        np.testing.assert_array_equal(tomo.data.values, expected)


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


# -- re-reading at other chunks -----------------------------------------------------------


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


# -- issue 21: compressed files, non-standard axis order written back ----------------------


@pytest.mark.parametrize(("compression", "suffix"), [("gzip", ".mrc.gz"), ("bzip2", ".mrcs.bz2")])
def test_compressed_files_read_as_mrcfile_opens_them(
    tmp_path: Path, rng: np.random.Generator, compression: str, suffix: str
) -> None:
    """gzip / bzip2 files (mrcfile opens them; cryoxr said "unsupported MRC mode")."""
    data = _random(rng, (5, 6, 7), np.dtype(np.int16))
    path = tmp_path / f"TS_01{suffix}"
    with mrcfile.new(path, compression=compression) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 2.5
        if suffix.startswith(".mrcs"):
            mrc.set_image_stack()
    with mrcfile.open(path) as mrc:
        oracle = np.array(mrc.data)
    for chunks in ("auto", None, 2):
        image = read_mrc(path, chunks=chunks)
        assert image.experiment_id == "TS_01"
        assert image.stack == suffix.startswith(".mrcs")
        assert image.pixel_spacing == 2.5
        np.testing.assert_array_equal(image.data.values, oracle)
    from cryoxr.io.images import open_image

    np.testing.assert_array_equal(open_image(path).data.values, oracle)


def test_compressed_file_truncated_or_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from cryoxr.io.mrc import compressed

    plain = _good(tmp_path, "plain.mrc")
    raw = plain.read_bytes()
    (tmp_path / "cut.mrc.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(
        FormatError, match=r"cut\.mrc\.gz: data block truncated: .* 768 bytes, the gzip stream holds 758"
    ):
        read_mrc(tmp_path / "cut.mrc.gz")
    (tmp_path / "broken.mrc.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(FormatError, match=r"broken\.mrc\.gz: gzip stream broken while reading the"):
        read_mrc(tmp_path / "broken.mrc.gz")
    (tmp_path / "big.mrc.gz").write_bytes(gzip.compress(raw))
    monkeypatch.setattr(compressed, "DECOMPRESS_LIMIT_BYTES", 500)
    with pytest.raises(FormatError, match=r"ask for 768 bytes of data block.*decompress the file first"):
        read_mrc(tmp_path / "big.mrc.gz")


def test_permuted_axes_write_back_with_permuted_starts(tmp_path: Path, rng: np.random.Generator) -> None:
    """Issue 21: nxstart/nystart/nzstart belong to columns/rows/sections and move with the axes."""
    stored = _random(rng, (4, 5, 6), np.dtype(np.float32))  # sections, rows, columns
    path = _mrcfile_write(tmp_path / "p.mrc", stored)
    # columns are y, rows are x, sections are z; starts 5 (columns = y), 7 (rows = x), 9 (z)
    _patch_header(path, mapc=2, mapr=1, maps=3, nxstart=5, nystart=7, nzstart=9)
    tomo = read_mrc(path)
    assert tomo.shape == (4, 6, 5)
    assert tomo.data.attrs["mrc_nstart"] == [7, 5, 9]
    out = tomo.to_mrc(tmp_path / "back.mrc")
    with mrcfile.open(out) as mrc:
        assert (int(mrc.header.mapc), int(mrc.header.mapr), int(mrc.header.maps)) == (1, 2, 3)
        assert (int(mrc.header.nxstart), int(mrc.header.nystart), int(mrc.header.nzstart)) == (7, 5, 9)
        np.testing.assert_array_equal(mrc.data, stored.transpose(0, 2, 1))


# -- issue 22: folders, pipes, files that change after they were opened ---------------------


def test_folder_and_pipe_are_refused_at_once(tmp_path: Path) -> None:
    import os
    import threading

    (tmp_path / "folder.mrc").mkdir()
    with pytest.raises(
        CryoxrFileNotFoundError, match=r"folder\.mrc: is a folder, not a regular file; expected a MRC"
    ):
        read_mrc(tmp_path / "folder.mrc")
    os.mkfifo(tmp_path / "pipe.mrc")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_mrc(tmp_path / "pipe.mrc")
        except BaseException as err:
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "read_mrc blocked on a named pipe"
    assert isinstance(outcome[0], CryoxrFileNotFoundError)
    assert "pipe.mrc: is a named pipe (FIFO), not a regular file" in str(outcome[0])


@pytest.mark.parametrize("chunks", ["auto", None, 1])
def test_file_truncated_after_lazy_open_says_it_changed(tmp_path: Path, chunks: Any) -> None:
    """Issue 22: a raw ValueError from mmap at compute time; now a FormatError naming the file."""
    path = _mrcfile_write(tmp_path / "t.mrc", np.ones((4, 6, 8), np.float32))
    tomo = read_mrc(path, chunks=chunks)
    _truncate(path, 1024 + 100)
    for select in ({}, {"z": 0}, {"y": 1}, {"x": 2}):
        with pytest.raises(FormatError, match=r"t\.mrc: the file changed since it was opened"):
            tomo.data.isel(select).values  # noqa: B018
    # rewritten with the same size: other voxels, so an error too
    path.write_bytes(_mrcfile_write(tmp_path / "u.mrc", np.zeros((4, 6, 8), np.float32)).read_bytes())
    with pytest.raises(FormatError, match="changed since it was opened"):
        tomo.data.values  # noqa: B018
    assert float(read_mrc(path).data.sum()) == 0.0  # opened again: fine
