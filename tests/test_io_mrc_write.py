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


def _mrcfile_write(path: Path, data: np.ndarray, *, voxel_size: float = 2.5, stack: bool = False) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


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
