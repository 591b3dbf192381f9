"""A CryoET Data Portal download folder, built from the portal's documented layout, with an
oriented-point ndjson (locations in voxels of the annotation's voxel spacing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoxr import Tomogram, validate_poseset
from cryoxr.errors import CryoxrError, CryoxrFileNotFoundError, FormatError, InvalidValueError
from cryoxr.io import open_portal
from cryoxr.io.portal import read_portal_points
from cryoxr.testing import raise_if_dask_computes

ROT = Rotation.from_euler("zyz", [10, 70, -30], degrees=True)


@pytest.fixture
def portal(tmp_path: Path) -> Path:
    run = tmp_path / "10445" / "TS_026" / "Reconstructions" / "VoxelSpacing13.480"
    (run / "Tomograms" / "100").mkdir(parents=True)
    data = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    Tomogram.from_array(data, pixel_spacing=13.48, experiment_id="TS_026").to_zarr(
        run / "Tomograms" / "100" / "TS_026.zarr", levels=2, chunks=(4, 4, 4), version="0.4"
    )
    annotations = run / "Annotations" / "200"
    annotations.mkdir(parents=True)
    rows = [
        {
            "type": "orientedPoint",
            "location": {"x": 4.0, "y": 5.0, "z": 6.0},
            "xyz_rotation_matrix": ROT.as_matrix().tolist(),
        },
        {
            "type": "orientedPoint",
            "location": {"x": 0.0, "y": 7.0, "z": 1.5},
            "xyz_rotation_matrix": np.eye(3).tolist(),
        },
    ]
    (annotations / "cytosolic_ribosome_orientedpoint.ndjson").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n"
    )
    (annotations / "cytosolic_ribosome_orientedpoint.json").write_text(json.dumps({"object_count": 2}))
    # the first layout, another run
    old = tmp_path / "10445" / "TS_027" / "Tomograms" / "VoxelSpacing10.000"
    (old / "Annotations").mkdir(parents=True)
    (old / "Annotations" / "membrane-1.0_point.ndjson").write_text(
        json.dumps({"type": "point", "location": {"x": 1, "y": 2, "z": 3}}) + "\n"
    )
    return tmp_path


def test_catalogue(portal: Path) -> None:
    p = open_portal(portal)
    assert p.runs == ["TS_026", "TS_027"]
    assert p.voxel_spacings("TS_026") == [13.48]
    assert p.tomogram_kinds("TS_026", 13.48) == ["100"]
    (entry,) = p.annotations("TS_026")
    assert (entry["object"], entry["shape"], entry["annotation"], entry["voxel_spacing"]) == (
        "cytosolic_ribosome",
        "orientedpoint",
        "200",
        13.48,
    )
    assert [a["object"] for a in p.annotations("TS_027")] == ["membrane-1.0"]
    assert open_portal(portal / "10445" / "TS_026").runs == ["TS_026"]


def test_tomogram_lazy(portal: Path) -> None:
    p = open_portal(portal)
    with raise_if_dask_computes():
        tomo = p.tomogram("TS_026", voxel_spacing=13.48, kind="100")
    assert tomo.shape == (8, 8, 8)
    assert tomo.pixel_spacing == pytest.approx(13.48)
    assert float(tomo.data[1, 2, 3]) == 64 + 16 + 3
    with pytest.raises(CryoxrFileNotFoundError, match="101"):
        p.tomogram("TS_026", voxel_spacing=13.48, kind="101")


def test_oriented_points(portal: Path) -> None:
    p = open_portal(portal)
    poses = p.picks("TS_026", object="cytosolic_ribosome")
    validate_poseset(poses)
    assert poses.attrs["pixel_spacing"] == 13.48
    np.testing.assert_allclose(poses["position"].values, [[4, 5, 6], [0, 7, 1.5]])
    assert (Rotation.from_quat(poses["orientation"].values[0]) * ROT.inv()).magnitude() < 1e-9
    # in pixels of another voxel spacing: 13.48 / 6.74 = 2
    np.testing.assert_allclose(
        p.picks("TS_026", object="cytosolic_ribosome", voxel_spacing=6.74)["position"].values[0], [8, 10, 12]
    )
    points = p.picks("TS_027", object="membrane-1.0")
    assert (Rotation.from_quat(points["orientation"].values).magnitude() == 0).all()
    with pytest.raises(InvalidValueError, match="no annotations"):
        p.picks("TS_026", object="apoferritin")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"location": {"x": 1, "y": 2}}\n', "line 1"),
        ('{"location": {"x": 1, "y": 2, "z": 3}}\nnot json\n', "line 2"),
        ('{"location": {"x": 1, "y": 2, "z": 3}, "xyz_rotation_matrix": [[1, 0], [0, 1]]}\n', "3x3"),
        (
            '{"location": {"x": 1, "y": 2, "z": 3}, "xyz_rotation_matrix": [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]}\n',
            "proper rotation",
        ),
    ],
)
def test_bad_ndjson(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "x_point.ndjson"
    path.write_text(text)
    with pytest.raises(FormatError, match=match) as err:
        read_portal_points(path, voxel_spacing=10.0, experiment_id="r")
    assert isinstance(err.value, CryoxrError)
    assert str(path) in str(err.value)


def test_no_runs(tmp_path: Path) -> None:
    with pytest.raises(CryoxrFileNotFoundError, match="run folders"):
        open_portal(tmp_path)


def test_picks_by_copick_names(portal: Path) -> None:
    """object / user / session as copick names Portal annotations: user "data-portal" or an author,
    session the annotation id; annotation= is session's older name."""
    run = portal / "10445" / "TS_026" / "Reconstructions" / "VoxelSpacing13.480" / "Annotations"
    (run / "201").mkdir()
    row = {"type": "point", "location": {"x": 1.0, "y": 1.0, "z": 1.0}}
    (run / "201" / "cytosolic_ribosome-2.0_point.ndjson").write_text(json.dumps(row) + "\n")
    (run / "201" / "annotation_metadata.json").write_text(json.dumps({"authors": [{"name": "Ada"}]}))
    p = open_portal(portal)
    entries = {a["annotation"]: a for a in p.annotations("TS_026")}
    assert (entries["200"]["version"], entries["201"]["version"]) == (None, "2.0")
    assert p.authors("TS_026", "201") == ["Ada"]
    assert p.authors("TS_026", "200") == []  # its metadata JSON has no authors
    with pytest.raises(InvalidValueError, match="2 annotations"):
        p.picks("TS_026", object="cytosolic_ribosome")
    assert p.picks("TS_026", object="cytosolic_ribosome", session="200").sizes["particle"] == 2
    assert p.picks("TS_026", object="cytosolic_ribosome", annotation="201").sizes["particle"] == 1
    by_author = p.picks("TS_026", object="cytosolic_ribosome", user="Ada")
    np.testing.assert_array_equal(by_author["position"].values, [[1.0, 1.0, 1.0]])
    assert (
        p.picks("TS_026", object="cytosolic_ribosome", user="data-portal", session="201").sizes["particle"]
        == 1
    )
    with pytest.raises(InvalidValueError, match="by 'Bob'"):
        p.picks("TS_026", object="cytosolic_ribosome", user="Bob")
    with pytest.raises(InvalidValueError, match="disagree"):
        p.picks("TS_026", object="cytosolic_ribosome", session="200", annotation="201")
    # the object with or without its version suffix (first layout: membrane-1.0_point.ndjson)
    assert p.picks("TS_027", object="membrane").sizes["particle"] == 1


def test_bad_author_metadata(portal: Path) -> None:
    folder = portal / "10445" / "TS_026" / "Reconstructions" / "VoxelSpacing13.480" / "Annotations" / "200"
    (folder / "annotation_metadata.json").write_text(json.dumps({"authors": "Ada"}))
    with pytest.raises(FormatError, match="authors") as err:
        open_portal(portal).picks("TS_026", object="cytosolic_ribosome", user="Ada")
    assert "annotation_metadata.json" in str(err.value)
