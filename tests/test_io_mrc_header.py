"""cryoxr.io.mrc.header: the header cryoxr reads and writes, against mrcfile as the oracle."""

from __future__ import annotations

import io
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoxr import Tomogram
from cryoxr.io.mrc import IMOD_SIGNED_BYTES, IMOD_STAMP, MRC_MODES, read_mrc, write_mrc
from cryoxr.testing import patch_mrc_header as _patch_header
from cryoxr.testing import random_array as _random
from cryoxr.testing import write_mrc_with_mrcfile as _mrcfile_write

SHAPE = (43, 41, 37)  # nz, ny, nx: odd sizes, nx = 37, ny = 41, nz = 43


def _good(tmp_path: Path, name: str = "bad.mrc") -> Path:
    return _mrcfile_write(tmp_path / name, np.zeros((4, 6, 8), np.float32))


def test_coords_and_worked_example(tmp_path: Path) -> None:
    # docs/CONVENTIONS.md §10: cella 12509.44 over mx 928 is 13.48 Å; voxel size is cella / mx, not / nx
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
    # the same header as mrcfile writes for the same data (mrcfile adds a "created by" label;
    # mode 0 carries IMOD's stamp with the signed-bytes flag set, which mrcfile does not write)
    skip = ("nlabl", "label") if mode != 4 else ("nlabl", "label", "dmin", "dmax", "dmean")
    _assert_same_header(oracle, path, skip=(*skip, "extra2") if mode == 0 else skip)
    if mode == 0:
        with mrcfile.open(path) as mrc:
            extra2 = np.frombuffer(bytes(mrc.header.extra2), "<i4")
        assert extra2[10:12].tolist() == [IMOD_STAMP, IMOD_SIGNED_BYTES]


def test_rebinned_image_gets_new_cell(tmp_path: Path) -> None:
    src = _mrcfile_write(tmp_path / "a.mrc", np.ones((8, 8, 8), np.float32), voxel_size=5.0)
    binned = read_mrc(src).bin(2)
    with mrcfile.open(write_mrc(binned, tmp_path / "b.mrc")) as mrc:
        assert mrc.data.shape == (4, 4, 4)
        assert float(mrc.voxel_size.x) == 10.0
        assert (int(mrc.header.mx), float(mrc.header.cella.x)) == (4, 40.0)


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
