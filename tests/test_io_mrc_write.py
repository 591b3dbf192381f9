"""cryoxr.io.mrc.write: modes, stacks, atomic and streaming writes, recomputed statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import mrcfile
import numpy as np
import pytest

from cryoxr import Image, Micrograph, Tomogram
from cryoxr.errors import FileExistsNoOverwriteError, InvalidValueError
from cryoxr.io.mrc import MRC_MODES, read_mrc, write_mrc
from cryoxr.testing import write_mrc_with_mrcfile as _mrcfile_write


def _good(tmp_path: Path, name: str = "bad.mrc") -> Path:
    return _mrcfile_write(tmp_path / name, np.zeros((4, 6, 8), np.float32))


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
    ("dtype", "options", "expected"),
    [
        (np.float32, {}, 2),
        (np.int8, {}, 0),
        (np.int16, {}, 1),
        (np.uint16, {}, 6),
        (np.float16, {}, 12),
        (np.complex64, {}, 4),
        (np.float32, {"mode": 12}, 12),
        (np.int32, {"mode": 2}, 2),
        (np.float64, {"dtype": "float32"}, 2),
        (np.int32, {"dtype": np.int16}, 1),
        (np.complex128, {"dtype": "complex64"}, 4),
    ],
)
def test_write_modes(tmp_path: Path, dtype: Any, options: dict[str, Any], expected: int) -> None:
    data = np.arange(24).reshape(2, 3, 4).astype(dtype)
    path = write_mrc(
        Tomogram.from_array(data, pixel_spacing=1.0, experiment_id="t"), tmp_path / "t.mrc", **options
    )
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == expected
        np.testing.assert_array_equal(mrc.data, data.astype(MRC_MODES[expected]))


@pytest.mark.parametrize(("dtype", "suggestion"), [(np.float64, "float32"), (np.int32, "int16 or float32"),
                                                   (np.complex128, "complex64"), (np.uint32, "uint16 or float32"),
                                                   (np.bool_, "uint8")])  # fmt: skip
def test_one_rule_for_dtypes_mrc_cannot_hold(tmp_path: Path, dtype: Any, suggestion: str) -> None:
    """Issue 22: float64 was narrowed to float32 silently while int32 was refused."""
    tomo = Tomogram.from_array(np.ones((2, 2, 2), dtype), pixel_spacing=1.0, experiment_id="t")
    with pytest.raises(
        InvalidValueError, match=rf"cannot hold {np.dtype(dtype)} exactly; pass dtype='{suggestion}'"
    ):
        write_mrc(tomo, tmp_path / "t.mrc")
    with pytest.raises(InvalidValueError, match="dtype= must be one MRC holds"):
        write_mrc(tomo, tmp_path / "t.mrc", dtype="float64")
    with pytest.raises(InvalidValueError, match="pass one of mode= and dtype="):
        write_mrc(tomo, tmp_path / "t.mrc", dtype="float32", mode=2)
    assert list(tmp_path.iterdir()) == []


def test_uint8_round_trips_as_mode_0_with_imod_unsigned_flag(tmp_path: Path) -> None:
    """Issue 22: uint8 came back as uint16. Mode 0 + IMOD's stamp, flag clear (IMOD mrcfiles.c)."""
    data = np.array([[[0, 1, 127, 128, 200, 255]]], np.uint8).repeat(2, axis=0)
    path = write_mrc(Tomogram.from_array(data, pixel_spacing=1.0, experiment_id="t"), tmp_path / "u.mrc")
    back = read_mrc(path)
    assert back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data.values, data)
    raw = path.read_bytes()
    assert np.frombuffer(raw[12:16], "<i4")[0] == 0  # mode 0
    assert np.frombuffer(raw[152:160], "<i4").tolist() == [1146047817, 0]  # IMOD stamp, unsigned
    with mrcfile.open(path) as mrc:  # mrcfile follows MRC2014 strictly: mode 0 is int8
        assert mrc.data.dtype == np.int8
        np.testing.assert_array_equal(mrc.data.view(np.uint8), data)
    # int8 stays int8, and an IMOD-stamped unsigned file written by someone else reads as uint8
    signed = write_mrc(Tomogram.from_array(data.view(np.int8), pixel_spacing=1.0, experiment_id="s"),
                       tmp_path / "s.mrc")  # fmt: skip
    assert read_mrc(signed).data.dtype == np.int8
    with mrcfile.new(tmp_path / "imod.mrc") as mrc:
        mrc.set_data(data.view(np.int8))
        mrc.voxel_size = 1.0
        extra2 = bytearray(bytes(mrc.header.extra2))
        extra2[40:48] = np.array([1146047817, 0], "<i4").tobytes()
        mrc.header.extra2 = bytes(extra2)
    np.testing.assert_array_equal(read_mrc(tmp_path / "imod.mrc").data.values, data)


def test_write_refuses_dtype_and_mode(tmp_path: Path) -> None:
    tomo = Tomogram.from_array(np.zeros((2, 2, 2), np.int32), pixel_spacing=1.0, experiment_id="t")
    with pytest.raises(InvalidValueError, match="int32"):
        write_mrc(tomo, tmp_path / "t.mrc")
    with pytest.raises(InvalidValueError, match="mode must be one of"):
        write_mrc(tomo, tmp_path / "t.mrc", mode=3)
    assert list(tmp_path.iterdir()) == []


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
    import cryoxr.io.mrc.write as mrc_module

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
