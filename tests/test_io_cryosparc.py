"""cryoSPARC .cs particle sets; cryosparc-tools writes the files (oracle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoxr import validate_poseset
from cryoxr.errors import CryoxrError, FormatError, InvalidValueError
from cryoxr.io import describe, read_cryosparc, read_poses

dataset = pytest.importorskip("cryosparc.dataset")

FIELDS = [
    ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "u4", (2,)),
    ("location/micrograph_psize_A", "f4"),
    ("location/center_x_frac", "f4"),
    ("location/center_y_frac", "f4"),
    ("alignments3D/pose", "f4", (3,)),
    ("alignments3D/shift", "f4", (2,)),
    ("alignments3D/psize_A", "f4"),
    ("alignments3D/class_posterior", "f4"),
    ("ctf/df1_A", "f4"),
]


def particles(tmp_path: Path, *, fields: list = FIELDS, name: str = "P1_J5_particles.cs") -> Path:  # type: ignore[type-arg]
    ds = dataset.Dataset.allocate(2, fields)
    names = ds.fields()
    if "location/micrograph_path" in names:
        ds["location/micrograph_path"] = ["J2/motioncorrected/mic_001.mrc", "J2/motioncorrected/mic_002.mrc"]
    if "location/center_x_frac" in names:
        ds["location/micrograph_shape"] = [[400, 600], [400, 600]]
        ds["location/center_x_frac"] = [0.25, 0.5]
        ds["location/center_y_frac"] = [0.5, 0.125]
    if "location/micrograph_psize_A" in names:
        ds["location/micrograph_psize_A"] = 1.5
    if "alignments3D/pose" in names:
        ds["alignments3D/pose"] = [[0.1, -0.2, 0.3], [0.0, 0.0, np.pi / 2]]
        ds["alignments3D/shift"] = [[2.0, -1.0], [0.0, 0.5]]
        ds["alignments3D/psize_A"] = 3.0  # box pixels are twice the micrograph's
        ds["alignments3D/class_posterior"] = [0.9, 0.8]
        ds["ctf/df1_A"] = [15000.0, 16000.0]
    path = tmp_path / name
    ds.save(path)
    return path


def _pyem_expmap(e: np.ndarray) -> np.ndarray:
    """pyem's ``geom.expmap`` (the matrix csparc2star turns into RELION angles)."""
    theta = np.linalg.norm(e)
    w = e / theta
    k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def test_read_against_cryosparc_tools(tmp_path: Path) -> None:
    path = particles(tmp_path)
    oracle = dataset.Dataset.load(path)
    poses = read_poses(path)
    validate_poseset(poses)
    assert poses.attrs["pixel_spacing"] == 1.5
    np.testing.assert_allclose(poses["position"].values, [[150, 200, 0], [300, 50, 0]])
    assert poses["experiment_id"].values.tolist() == ["mic_001", "mic_002"]
    # shift = -alignments3D/shift (rlnOrigin) in micrograph pixels: x 3.0/1.5
    np.testing.assert_allclose(poses["shift"].values, [[-4, 2, 0], [0, -1, 0]])
    # every field kept, components split, names mapped back
    for field in oracle.fields():
        values = oracle[field]
        if values.ndim == 1:
            name = field.replace("/", ".")
            assert poses.attrs["cryosparc_fields"][name] == field
            if values.dtype.kind in "fiu":
                np.testing.assert_array_equal(poses[name].values, values)
            else:
                assert poses[name].values.tolist() == [str(v) for v in values]
        else:
            for i in range(values.shape[1]):
                np.testing.assert_array_equal(poses[f"{field.replace('/', '.')}.{i}"].values, values[:, i])
    assert describe(path)["kind"] == "poses"


def test_orientation_is_pyems_relion_matrix(tmp_path: Path) -> None:
    poses = read_cryosparc(particles(tmp_path))
    for i, pose in enumerate([[0.1, -0.2, 0.3], [0.0, 0.0, np.pi / 2]]):
        got = Rotation.from_quat(poses["orientation"].values[i]).as_matrix()
        # cryoxr's orientation of RELION angles is RELION's matrix A (docs/CONVENTIONS.md §3) = pyem's expmap(pose)
        np.testing.assert_allclose(got, _pyem_expmap(np.array(pose, np.float32).astype(float)), atol=1e-6)
    # pose (0, 0, 90°): RELION rot + psi = 90°, so orientation = Rz(-90°): x -> -y
    np.testing.assert_allclose(
        Rotation.from_quat(poses["orientation"].values[1]).apply([1, 0, 0]), [0, -1, 0], atol=1e-6
    )


def test_2d_classification_and_picks(tmp_path: Path) -> None:
    fields = [f for f in FIELDS if not f[0].startswith(("alignments3D", "ctf"))]
    fields += [("alignments2D/pose", "f4"), ("alignments2D/class", "u4")]
    ds = dataset.Dataset.allocate(1, fields)
    ds["location/micrograph_shape"] = [[100, 100]]
    ds["location/micrograph_psize_A"] = 1.0
    ds["alignments2D/pose"] = [np.pi / 2]
    path = tmp_path / "c2d.cs"
    ds.save(path)
    poses = read_cryosparc(path)
    np.testing.assert_allclose(
        Rotation.from_quat(poses["orientation"].values[0]).apply([1, 0, 0]), [0, -1, 0], atol=1e-6
    )
    assert poses.attrs["cryosparc_pose"] == "alignments2D"


def test_pixel_size_asked_for(tmp_path: Path) -> None:
    path = particles(tmp_path, fields=[f for f in FIELDS if f[0] != "location/micrograph_psize_A"])
    with pytest.raises(InvalidValueError, match="pixel_spacing="):
        read_cryosparc(path)
    assert read_cryosparc(path, pixel_spacing=2.0).attrs["pixel_spacing"] == 2.0
    with pytest.raises(InvalidValueError, match="contradicts"):
        read_cryosparc(particles(tmp_path, name="b.cs"), pixel_spacing=2.0)


def test_refusals(tmp_path: Path) -> None:
    no_location = particles(tmp_path, fields=[("ctf/df1_A", "f4")], name="a.cs")
    with pytest.raises(FormatError, match="location fields"):
        read_cryosparc(no_location)
    pickled = tmp_path / "p.cs"
    with open(pickled, "wb") as f:  # np.save on a name adds .npy
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="pickled objects") as err:
        read_cryosparc(pickled)
    assert isinstance(err.value, CryoxrError)
    assert "p.cs" in str(err.value)
    garbage = tmp_path / "g.cs"
    garbage.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(FormatError, match=r"g\.cs"):
        read_cryosparc(garbage)
