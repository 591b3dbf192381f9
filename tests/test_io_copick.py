"""copick projects read directly: a project with two users' picks at two voxel spacings, built
from copick's documented layout (config JSON, ExperimentRuns/<run>/VoxelSpacing<vs>/<type>.zarr,
Picks/<user>_<session>_<object>.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoxr import Tomogram, make_poseset, validate_poseset
from cryoxr.errors import (
    CryoxrError,
    CryoxrFileNotFoundError,
    FileExistsNoOverwriteError,
    FormatError,
    InvalidValueError,
    UnknownFormatError,
)
from cryoxr.io import open_copick, write_copick_picks
from cryoxr.io.copick import read_copick_picks
from cryoxr.testing import raise_if_dask_computes

ROT = Rotation.from_euler("zyz", [30, 40, 50], degrees=True)


def pick_doc(user: str, locations: list[list[float]], *, with_rotation: bool = True) -> dict:  # type: ignore[type-arg]
    points = []
    for i, loc in enumerate(locations):
        matrix = np.eye(4)
        if with_rotation:
            matrix[:3, :3] = ROT.as_matrix()
            matrix[:3, 3] = [10.0, 0.0, -5.0]  # Å
        points.append(
            {
                "location": dict(zip("xyz", loc, strict=True)),
                "transformation_": matrix.tolist(),
                "instance_id": i,
                "score": 0.5 + i,
            }
        )
    return {
        "pickable_object_name": "ribosome",
        "user_id": user,
        "session_id": "0",
        "run_name": "TS_001",
        "unit": "angstrom",
        "points": points,
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    config = {
        "config_type": "filesystem",
        "name": "test",
        "pickable_objects": [{"name": "ribosome", "is_particle": True, "label": 1, "radius": 150}],
        "overlay_root": f"local://{overlay}",
        "static_root": str(static),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = static / "ExperimentRuns" / "TS_001"
    for spacing, size in ((10.0, 8), (20.0, 4)):
        data = np.arange(size**3, dtype=np.float32).reshape(size, size, size)
        tomo = Tomogram.from_array(data, pixel_spacing=spacing, experiment_id="TS_001")
        (run / f"VoxelSpacing{spacing:.3f}").mkdir(parents=True)
        tomo.to_zarr(run / f"VoxelSpacing{spacing:.3f}" / "wbp.zarr", levels=2, chunks=(4, 4, 4))
    picks = overlay / "ExperimentRuns" / "TS_001" / "Picks"
    picks.mkdir(parents=True)
    (picks / "alice_0_ribosome.json").write_text(
        json.dumps(pick_doc("alice", [[100.0, 200.0, 40.0], [0.0, 10.0, 20.0]]))
    )
    (picks / "bob_0_ribosome.json").write_text(
        json.dumps(pick_doc("bob", [[60.0, 60.0, 60.0]], with_rotation=False))
    )
    (run / "Picks").mkdir()
    (run / "Picks" / "curation_0_ribosome.json").write_text(
        json.dumps(pick_doc("curation", [[1.0, 2.0, 3.0]]))
    )
    return tmp_path / "config.json"


def test_catalogue(project: Path) -> None:
    cp = open_copick(project)
    assert cp.runs == ["TS_001"]
    assert cp.objects == ("ribosome",)
    assert cp.voxel_spacings("TS_001") == [10.0, 20.0]
    assert cp.tomogram_kinds("TS_001", 20.0) == ["wbp"]
    assert cp.pick_sets("TS_001") == [
        ("ribosome", "alice", "0"),
        ("ribosome", "bob", "0"),
        ("ribosome", "curation", "0"),
    ]


def test_tomograms_lazy_at_each_spacing(project: Path) -> None:
    cp = open_copick(project)
    with raise_if_dask_computes():
        fine = cp.tomogram("TS_001", voxel_spacing=10.0, kind="wbp")
        coarse = cp.tomogram("TS_001", voxel_spacing=20.0, kind="wbp", level=1)
    assert fine.shape == (8, 8, 8)
    assert fine.pixel_spacing == 10.0
    assert coarse.shape == (2, 2, 2)
    assert coarse.pixel_spacing == 40.0
    assert float(fine.data[1, 2, 3]) == 64 + 16 + 3
    with pytest.raises(CryoxrFileNotFoundError, match="denoised"):
        cp.tomogram("TS_001", voxel_spacing=10.0, kind="denoised")


def test_picks_in_pixels_of_each_spacing(project: Path) -> None:
    cp = open_copick(project)
    with pytest.raises(InvalidValueError, match="voxel_spacing="):
        cp.picks("TS_001", object="ribosome", user="alice", session="0")
    at10 = cp.picks("TS_001", object="ribosome", user="alice", session="0", voxel_spacing=10.0)
    at20 = cp.picks("TS_001", object="ribosome", user="alice", session="0", voxel_spacing=20.0)
    validate_poseset(at10)
    np.testing.assert_allclose(at10["position"].values, [[10, 20, 4], [0, 1, 2]])
    np.testing.assert_allclose(at20["position"].values, [[5, 10, 2], [0, 0.5, 1]])
    np.testing.assert_allclose(at10["shift"].values[0], [1.0, 0.0, -0.5])
    got = Rotation.from_quat(at10["orientation"].values[0])
    assert (got * ROT.inv()).magnitude() < 1e-9
    assert at10["score"].values.tolist() == [0.5, 1.5]
    assert at10.attrs["user_id"] == "alice"
    bob = cp.picks("TS_001", object="ribosome", user="bob", session="0", voxel_spacing=20.0)
    np.testing.assert_allclose(bob["position"].values, [[3, 3, 3]])


def test_write_back_round_trip(project: Path, tmp_path: Path) -> None:
    cp = open_copick(project)
    picks = cp.picks("TS_001", object="ribosome", user="alice", session="0", voxel_spacing=10.0)
    target = tmp_path / "overlay" / "ExperimentRuns" / "TS_001" / "Picks" / "cryoxr_1_ribosome.json"
    write_copick_picks(picks, target, object="ribosome", user="cryoxr", session="1")
    back = cp.picks("TS_001", object="ribosome", user="cryoxr", session="1", voxel_spacing=10.0)
    for name in ("position", "shift", "score"):
        np.testing.assert_allclose(back[name].values, picks[name].values)
    assert (
        Rotation.from_quat(back["orientation"].values) * Rotation.from_quat(picks["orientation"].values).inv()
    ).magnitude().max() < 1e-9
    document = json.loads(target.read_text())
    assert document["points"][0]["location"] == {"x": 100.0, "y": 200.0, "z": 40.0}
    with pytest.raises(FileExistsNoOverwriteError):
        write_copick_picks(picks, target, object="ribosome", user="cryoxr", session="1")
    two = make_poseset([[1.0, 1.0, 1.0]] * 2, experiment_id=["a", "b"], pixel_spacing=1.0)
    with pytest.raises(InvalidValueError, match="one run"):
        write_copick_picks(two, tmp_path / "x.json", object="o", user="u", session="s")


def test_optional_fields_are_written_only_when_the_set_has_them(tmp_path: Path) -> None:
    # a set without score / instance_id round-trips without gaining them (copick's fields are optional)
    poses = make_poseset([[1.0, 2.0, 3.0]], experiment_id="TS_001", pixel_spacing=10.0)
    target = tmp_path / "cryoxr_1_ribosome.json"
    write_copick_picks(poses, target, object="ribosome", user="cryoxr", session="1")
    assert set(json.loads(target.read_text())["points"][0]) == {"location", "transformation_"}
    back = read_copick_picks(target, voxel_spacing=10.0)
    assert "score" not in back
    assert "instance_id" not in back
    np.testing.assert_allclose(back["position"].values, [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(("user", "session"), [("john_doe", "1"), ("alice", "a_b"), ("", "1")])
def test_names_copick_cannot_split_are_refused(tmp_path: Path, user: str, session: str) -> None:
    poses = make_poseset([[1.0, 2.0, 3.0]], experiment_id="TS_001", pixel_spacing=10.0)
    with pytest.raises(InvalidValueError, match="first two underscores"):
        write_copick_picks(poses, tmp_path / "p.json", object="ribosome", user=user, session=session)
    assert not (tmp_path / "p.json").exists()


def test_unknown_root_protocol(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"overlay_root": "nosuchprotocol://bucket/project", "pickable_objects": []}))
    with pytest.raises(UnknownFormatError, match="overlay_root") as err:
        open_copick(path)
    assert str(path) in str(err.value)


def test_relative_root_from_the_config_folder(project: Path) -> None:
    config = json.loads(project.read_text())
    config["static_root"] = "static"  # relative: the config's folder
    config.pop("overlay_root")
    relative = project.parent / "relative.json"
    relative.write_text(json.dumps(config))
    cp = open_copick(relative)
    assert cp.roots == (project.parent / "static",)
    assert cp.pick_sets("TS_001") == [("ribosome", "curation", "0")]


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("{", "expected JSON"),
        (json.dumps({"points": [{"location": {"x": 1}}]}), "points\\[0\\]"),
        (
            json.dumps(
                {"points": [{"location": {"x": 1, "y": 2, "z": 3}, "transformation_": [[2, 0, 0, 0]] * 4}]}
            ),
            "points\\[0\\]",
        ),
        (json.dumps({"unit": "pixel", "points": []}), "angstrom"),
    ],
)
def test_bad_picks(tmp_path: Path, document: str, match: str) -> None:
    path = tmp_path / "u_0_o.json"
    path.write_text(document)
    with pytest.raises(FormatError, match=match) as err:
        read_copick_picks(path, voxel_spacing=10.0)
    assert isinstance(err.value, CryoxrError)
    assert str(path) in str(err.value)
