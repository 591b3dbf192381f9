"""PoseSet: construction, validation (lazy, blockwise), cryotypes round trips."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from cryotypes.poseset import PoseSet as CryotypesPoseSet
from cryotypes.poseset import validate_poseset as cryotypes_validate_poseset
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.errors import CryoxrError, InvalidValueError, SchemaError
from cryoxr.poseset import absolute_position, experiment_ids, rotation
from cryoxr.testing import raise_if_dask_computes, random_poses


def test_schema(poses: xr.Dataset) -> None:
    assert dict(poses.sizes) == {"particle": 1000, "axis": 3, "quaternion": 4}
    assert poses.axis.values.tolist() == ["x", "y", "z"]
    assert poses.quaternion.values.tolist() == ["x", "y", "z", "w"]
    for name in ("position", "shift", "orientation"):
        assert poses[name].dtype == np.float64
    assert poses.attrs == {"pixel_spacing": 1.35, "source": "synthetic", "experiment_id": "TS_01"}


@pytest.mark.parametrize("form", ["rotation", "quaternions", "matrices", "dask-matrices"])
def test_orientation_forms_agree(form: str, rng: np.random.Generator) -> None:
    rot = Rotation.random(50, random_state=3)
    value = {
        "rotation": rot,
        "quaternions": rot.as_quat(),
        "matrices": rot.as_matrix(),
        "dask-matrices": da.from_array(rot.as_matrix(), chunks=(20, 3, 3)),
    }[form]
    ds = cryoxr.make_poseset(np.zeros((50, 3)), orientation=value, experiment_id="t", pixel_spacing=1.0)
    recovered = rotation(ds)
    assert np.allclose((recovered * rot.inv()).magnitude(), 0, atol=1e-12)


def test_two_dimensional_sets_get_z_zero() -> None:
    ds = cryoxr.make_poseset([[1.0, 2.0], [3.0, 4.0]], experiment_id="mic", pixel_spacing=1.0)
    assert ds.position.values.tolist() == [[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]


def test_multi_experiment_ids_and_extra_columns() -> None:
    ds = cryoxr.make_poseset(
        np.zeros((4, 3)),
        experiment_id=["TS_02", "TS_01", "TS_02", "TS_03"],
        pixel_spacing=1.0,
        extra={"score": [0.1, 0.2, 0.3, 0.4], "class": np.array([1, 2, 1, 2])},
    )
    assert experiment_ids(ds) == ["TS_02", "TS_01", "TS_03"]
    assert ds.score.dims == ("particle",)
    assert ds["class"].values.tolist() == [1, 2, 1, 2]
    assert {str(k) for k, _ in ds.groupby("experiment_id")} == {"TS_01", "TS_02", "TS_03"}


def test_chunked_two_million_particles_build_and_validate_lazily() -> None:
    n = 2_000_000
    position = da.random.default_rng(0).uniform(0, 4096, size=(n, 3), chunks=(250_000, 3))
    quats = da.from_array(np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)), chunks=(250_000, 4))
    with raise_if_dask_computes():
        ds = cryoxr.make_poseset(
            position, orientation=quats, experiment_id="t", pixel_spacing=1.0, chunks=250_000
        )
        cryoxr.validate_poseset(ds, check_values=False)
    assert ds.chunks["particle"] == (250_000,) * 8
    # the value check is one streaming compute of a per-chunk reduction (documented)
    with raise_if_dask_computes(max_computes=1) as scheduler:
        cryoxr.validate_poseset(ds)
    assert scheduler.total_computes == 1


def test_validation_of_dask_set_finds_bad_row_in_late_chunk() -> None:
    pos = np.zeros((1000, 3))
    pos[777, 1] = np.inf
    ds = cryoxr.make_poseset(da.from_array(pos, chunks=100), experiment_id="t", pixel_spacing=1.0)
    with pytest.raises(InvalidValueError, match="1 bad row\\(s\\), first at particle 777"):
        cryoxr.validate_poseset(ds)


def test_absolute_position_is_lazy(poses_twin: xr.Dataset) -> None:
    with raise_if_dask_computes():
        total = absolute_position(poses_twin)
        angstrom = absolute_position(poses_twin, unit="angstrom")
    np.testing.assert_allclose(total.values, poses_twin.position.values + poses_twin["shift"].values)
    np.testing.assert_allclose(angstrom.values, total.values * 1.35)


def _good_inputs() -> dict:  # type: ignore[type-arg]
    return {"position": np.zeros((3, 3)), "experiment_id": "t", "pixel_spacing": 1.0}


def _with(**changes: object) -> dict:  # type: ignore[type-arg]
    out = _good_inputs()
    out.update(changes)
    return out


BAD_INPUTS = [
    ("nan position", _with(position=np.array([[0.0, np.nan, 0.0]])), "position must be finite"),
    ("(N,4) positions", _with(position=np.zeros((3, 4))), "position must have shape (N, 3)"),
    ("shift length", _with(shift=np.zeros((2, 3))), "shift must have one row per particle (3)"),
    ("zero pixel spacing", _with(pixel_spacing=0.0), "pixel_spacing must be a positive"),
    ("negative pixel spacing", _with(pixel_spacing=-1.35), "pixel_spacing must be a positive"),
    ("non-unit quaternion", _with(orientation=np.tile([0.0, 0.0, 0.0, 2.0], (3, 1))), "unit quaternions"),
    ("orientation shape", _with(orientation=np.zeros((3, 5))), "orientation must be a scipy Rotation"),
    ("empty experiment_id", _with(experiment_id=""), "experiment_id must be a non-empty"),
    ("experiment_id count", _with(experiment_id=["a", "b"]), "experiment_id must be a str or 3 strs"),
    ("extra length", _with(extra={"score": [1.0]}), "extra column 'score' must have shape (3,)"),
    ("text positions", _with(position=[["a", "b", "c"]]), "position must be numeric"),
]


@pytest.mark.parametrize(("case", "kwargs", "words"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_value_error(case: str, kwargs: dict, words: str) -> None:  # type: ignore[type-arg]
    position = kwargs.pop("position")
    with pytest.raises(CryoxrError) as info:
        cryoxr.make_poseset(position, **kwargs)
    assert isinstance(info.value, ValueError)
    assert words in str(info.value)


def test_validate_poseset_structure_errors(poses: xr.Dataset) -> None:
    with pytest.raises(SchemaError, match="'shift' is missing"):
        cryoxr.validate_poseset(poses.drop_vars("shift"))
    with pytest.raises(SchemaError, match="coordinate 'axis'"):
        cryoxr.validate_poseset(poses.assign_coords(axis=["a", "b", "c"]))
    with pytest.raises(SchemaError, match="must be float64"):
        cryoxr.validate_poseset(poses.assign(position=poses.position.astype(np.float32)))
    with pytest.raises(SchemaError, match=r"expected an xarray\.Dataset"):
        cryoxr.validate_poseset(poses.position)  # type: ignore[arg-type]


def test_to_cryotypes_round_trip(poses: xr.Dataset) -> None:
    theirs = cryoxr.to_cryotypes(poses)
    assert isinstance(theirs, CryotypesPoseSet)
    cryotypes_validate_poseset(theirs)
    back = cryoxr.from_cryotypes(theirs)
    np.testing.assert_allclose(back.position.values, poses.position.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back["shift"].values, poses["shift"].values, rtol=0, atol=1e-12)
    angle = (rotation(back) * rotation(poses).inv()).magnitude()
    assert angle.max() < 1e-12
    assert back.attrs == poses.attrs


def test_to_cryotypes_multi_experiment(rng: np.random.Generator) -> None:
    ids = np.array(["b", "a", "b", "c", "a"])
    ds = random_poses(rng, 5, experiment_id=ids)
    parts = cryoxr.to_cryotypes(ds)
    assert [p.experiment_id for p in parts] == ["b", "a", "c"]
    assert [len(p.position) for p in parts] == [2, 2, 1]
    back = cryoxr.from_cryotypes(parts)
    order = np.concatenate([np.flatnonzero(ids == e) for e in ["b", "a", "c"]])
    np.testing.assert_allclose(back.position.values, ds.position.values[order], atol=1e-12)
    assert back.experiment_id.values.tolist() == ids[order].tolist()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 20),
    spacing=st.floats(0.1, 50),
    eid=st.text(min_size=1, max_size=10).filter(lambda s: "\x00" not in s),
    seed=st.integers(0, 2**31),
)
def test_cryotypes_round_trip_property(n: int, spacing: float, eid: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rot = Rotation.random(n, random_state=seed) if n else np.zeros((0, 4))
    ds = cryoxr.make_poseset(
        rng.normal(size=(n, 3)) * 1000,
        shift=rng.normal(size=(n, 3)),
        orientation=rot,
        experiment_id=eid,
        pixel_spacing=spacing,
        source="s",
    )
    back = cryoxr.from_cryotypes(cryoxr.to_cryotypes(ds))
    xr.testing.assert_allclose(back[["position", "shift"]], ds[["position", "shift"]], rtol=0, atol=1e-12)
    if n:
        assert (rotation(back) * rotation(ds).inv()).magnitude().max() < 1e-12
    assert back.attrs == ds.attrs


def test_accessor_delegates(poses: xr.Dataset) -> None:
    assert poses.cryo.experiment_ids == ["TS_01"]
    assert poses.cryo.rotation.as_quat().shape == (1000, 4)
    xr.testing.assert_identical(poses.cryo.absolute_position(), absolute_position(poses))
    assert poses.cryo.validate() is poses


def test_chunked_multi_experiment_set_keeps_labels_in_memory(rng: np.random.Generator) -> None:
    ids = rng.choice(["a", "b"], size=100)
    ds = random_poses(rng, 100, experiment_id=ids, chunks=30)
    assert isinstance(ds["position"].data, da.Array)
    assert isinstance(ds.coords["experiment_id"].data, np.ndarray)
    with raise_if_dask_computes():
        cryoxr.validate_poseset(ds, check_values=False)
        groups = {str(k): g.sizes["particle"] for k, g in ds.groupby("experiment_id")}
    assert groups == {"a": int((ids == "a").sum()), "b": int((ids == "b").sum())}


def test_lazy_positions_get_lazy_defaults() -> None:
    position = da.random.default_rng(2).uniform(0, 100, size=(10_000_000, 3), chunks=(1_000_000, 3))
    with raise_if_dask_computes():
        ds = cryoxr.make_poseset(position, experiment_id="t", pixel_spacing=1.0)
    assert isinstance(ds["shift"].data, da.Array)
    assert isinstance(ds["orientation"].data, da.Array)
    assert ds["orientation"].data.chunks[0] == position.chunks[0]
    # nothing of size N sits in the graph
    biggest = max(
        (
            v.nbytes
            for v in dict(ds["orientation"].data.__dask_graph__()).values()
            if isinstance(v, np.ndarray)
        ),
        default=0,
    )
    assert biggest < 1_000
    np.testing.assert_array_equal(ds["orientation"][:2].values, [[0, 0, 0, 1.0], [0, 0, 0, 1.0]])
