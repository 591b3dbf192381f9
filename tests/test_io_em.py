"""TOM/Dynamo .em volumes (lazy) and motive lists; emfile as oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoxr import Tomogram, validate_poseset
from cryoxr.errors import CryoxrError, FormatError, InvalidValueError
from cryoxr.io import describe, open_image, read_em, read_em_motive_list, read_poses
from cryoxr.io.em import em_header_bytes
from cryoxr.testing import raise_if_dask_computes

emfile = pytest.importorskip("emfile")


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(1).normal(size=(6, 5, 7)).astype(np.float32)
    path = tmp_path / "tomo.em"
    emfile.write(path, data)
    return path, data


def test_volume_against_emfile(volume: tuple[Path, np.ndarray]) -> None:
    path, data = volume
    with raise_if_dask_computes():
        tomo = open_image(path, pixel_spacing=13.5, chunks=(2, 5, 7))
    assert isinstance(tomo, Tomogram)
    assert tomo.pixel_spacing == 13.5
    assert tomo.data.data.chunksize == (2, 5, 7)
    _, oracle = emfile.read(path)
    np.testing.assert_array_equal(tomo.data.values, oracle)
    np.testing.assert_array_equal(tomo.data.values, data)
    assert float(tomo.data.coords["x"][1]) == 13.5  # Å coords


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_dtypes(tmp_path: Path, dtype: type) -> None:
    data = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / "v.em"
    emfile.write(path, data.view(np.intc) if np.dtype(dtype) == np.int32 else data)
    image = read_em(path, pixel_spacing=1.0)
    assert image.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image.data.values, data)


def test_big_endian(tmp_path: Path) -> None:
    data = np.arange(8, dtype=">f4").reshape(2, 2, 2)
    header = bytearray(em_header_bytes(data.shape, np.float32))
    header[0] = 3  # SGI: big-endian
    header[4:16] = np.array([2, 2, 2], ">i4").tobytes()
    path = tmp_path / "sgi.em"
    path.write_bytes(bytes(header) + data.tobytes())
    np.testing.assert_array_equal(read_em(path, pixel_spacing=1.0).data.values, np.arange(8).reshape(2, 2, 2))


def test_pixel_size_is_asked_for(volume: tuple[Path, np.ndarray]) -> None:
    path, _ = volume
    with pytest.raises(InvalidValueError, match="pixel_spacing="):
        open_image(path)
    report = describe(path)
    assert report["kind"] == "tomogram"
    assert report["shape"] == [6, 5, 7]
    assert report["pixel_spacing"] is None
    assert describe(path, pixel_spacing=2.0)["pixel_spacing"] == 2.0


def test_micrograph(tmp_path: Path) -> None:
    path = tmp_path / "m.em"
    emfile.write(path, np.ones((1, 3, 4), np.float32))
    assert read_em(path, pixel_spacing=1.0).dims == ("y", "x")


def motl(n: int = 3) -> np.ndarray:
    rows = np.zeros((1, n, 20), np.float32)
    rng = np.random.default_rng(2)
    rows[0, :, 0] = [0.5, 0.4, 0.3][:n]  # CCC
    rows[0, :, 3] = np.arange(1, n + 1)  # particle number
    rows[0, :, 4] = [1, 1, 2][:n]  # tomogram number
    rows[0, :, 7:10] = [[11, 21, 31], [12.5, 22, 32], [1, 1, 1]][:n]
    rows[0, :, 10:13] = [[0.5, -1, 2], [0, 0, 0], [1, 1, 1]][:n]
    rows[0, :, 16:19] = rng.uniform(-180, 180, size=(n, 3))
    rows[0, :, 19] = 7  # class
    return rows


def test_motive_list(tmp_path: Path) -> None:
    rows = motl()
    path = tmp_path / "motl_1.em"
    emfile.write(path, rows)
    poses = read_poses(path, pixel_spacing=4.0)
    validate_poseset(poses)
    # TOM is MATLAB: voxel 1 is cryoxr's 0
    np.testing.assert_allclose(poses["position"].values, [[10, 20, 30], [11.5, 21, 31], [0, 0, 0]])
    np.testing.assert_allclose(poses["shift"].values[0], [0.5, -1, 2])
    assert poses["experiment_id"].values.tolist() == ["1", "1", "2"]
    np.testing.assert_allclose(poses["motl_score"], [0.5, 0.4, 0.3], rtol=1e-6)
    assert (poses["motl_class"] == 7).all()
    assert len([v for v in poses.data_vars if str(v).startswith("motl_")]) == 20  # every row kept
    none = read_em_motive_list(path, pixel_spacing=4.0, origin="none")
    np.testing.assert_allclose(none["position"].values[0], [11, 21, 31])
    assert describe(path, pixel_spacing=4.0)["kind"] == "poses"


def test_motive_list_orientation_matches_dynamo_conversion(tmp_path: Path) -> None:
    """Dynamo's table2motl: phi = -narot, psi = -tdrot, theta = -tilt; Dynamo's orientation is
    zxz(tdrot, tilt, narot)^-1 (docs/CONVENTIONS.md §9), so both must give one rotation."""
    tdrot, tilt, narot = 10.0, 20.0, 30.0
    rows = np.zeros((1, 1, 20), np.float32)
    rows[0, 0, 16:19] = [-narot, -tdrot, -tilt]  # phi, psi, theta
    path = tmp_path / "m.em"
    emfile.write(path, rows)
    got = Rotation.from_quat(read_em_motive_list(path, pixel_spacing=1.0)["orientation"].values[0])
    dynamo = Rotation.from_euler("zxz", [tdrot, tilt, narot], degrees=True).inv()
    assert (got * dynamo.inv()).magnitude() < 1e-6
    np.testing.assert_allclose(
        got.as_matrix(),
        [[0.7713, 0.6337, 0.0594], [-0.6131, 0.7146, 0.3368], [0.1710, -0.2962, 0.9397]],
        atol=1e-4,
    )


def test_motive_list_needs_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "m.em"
    emfile.write(path, motl())
    with pytest.raises(InvalidValueError, match="pixel_spacing="):
        read_poses(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:100], "512-byte"),
        (lambda b: bytes([9]) + b[1:], "machine"),
        (lambda b: b[:3] + bytes([7]) + b[4:], "data type"),
        (lambda b: b[:-4], "truncated"),
        (lambda b: b[:4] + np.array([0], "<i4").tobytes() + b[8:], "> 0"),
    ],
)
def test_bad_headers(volume: tuple[Path, np.ndarray], mutate: object, match: str) -> None:
    path, _ = volume
    path.write_bytes(mutate(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(FormatError, match=match) as err:
        read_em(path, pixel_spacing=1.0)
    assert isinstance(err.value, CryoxrError)
    assert str(path) in str(err.value)


def test_volume_is_not_a_motive_list(volume: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(FormatError, match="motive list"):
        read_em_motive_list(volume[0], pixel_spacing=1.0)
