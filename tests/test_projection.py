"""Projection: oracle parity with cryotypes, units, multi-tomogram sets, laziness, project_into."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from cryotypes.projectionmodel import projection_model_to_projection_matrices as cryotypes_matrices
from hypothesis import given, settings
from hypothesis import strategies as st

import cryoxr
from cryoxr.errors import CryoxrError, InvalidValueError
from cryoxr.extraction import extract_subtilts
from cryoxr.field_of_view import count_in_field_of_view, in_field_of_view
from cryoxr.projection import project, project_into
from cryoxr.testing import raise_if_dask_computes, random_poses

DIMS = (4096, 4096, 1000)
CENTRE = (2048.0, 2048.0)


def cryotypes_project(poses: xr.Dataset, model: pd.DataFrame, centre, dims) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The oracle: cryotypes' matrices applied particle by particle, tilt by tilt."""
    matrices = np.asarray(cryotypes_matrices(model, centre, dims)).reshape(-1, 4, 4)
    points = poses["position"].values + poses["shift"].values
    out = np.empty((len(points), len(matrices), 2))
    for i, p in enumerate(points):
        homogeneous = np.append(p, 1.0)
        for t, m in enumerate(matrices):
            out[i, t] = (m @ homogeneous)[:2]
    return out


def test_equals_cryotypes_particle_by_particle(poses_twin: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    sub = poses_twin.isel(particle=slice(0, 400))
    projected = project(sub, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE)
    assert projected.dims == ("particle", "image", "axis")
    assert projected.axis.values.tolist() == ["x", "y"]
    assert projected.dtype == np.float64
    assert isinstance(projected.data, da.Array)
    np.testing.assert_allclose(
        projected.values, cryotypes_project(sub, tilt_model, CENTRE, DIMS), rtol=0, atol=1e-9
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_tilts=st.integers(1, 61),
    chunks=st.integers(1, 50),
    dims=st.tuples(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 2000)),
    centre=st.tuples(st.floats(0, 5000), st.floats(0, 5000)),
)
def test_random_models_equal_cryotypes(seed: int, n_tilts: int, chunks: int, dims, centre) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    model = cryoxr.make_projection_model(
        rotation_x=rng.uniform(-5, 5, n_tilts),
        rotation_y=rng.uniform(-70, 70, n_tilts),
        rotation_z=rng.uniform(-180, 180, n_tilts),
        dx=rng.normal(0, 20, n_tilts),
        dy=rng.normal(0, 20, n_tilts),
        experiment_id="TS",
        pixel_spacing=1.0,
    )
    poses = random_poses(rng, 37, experiment_id="TS", pixel_spacing=1.0, dims=dims, chunks=chunks)
    projected = project(poses, model, tomogram_dimensions=dims, tilt_image_center=centre)
    np.testing.assert_allclose(
        projected.values, cryotypes_project(poses, model, centre, dims), rtol=0, atol=1e-9
    )


def test_zero_tilt_hand_computed() -> None:
    poses = cryoxr.make_poseset(
        [[10.0, 20.0, 30.0], [0.0, 0.0, 0.0]],
        shift=[[1.0, -1.0, 5.0], [0, 0, 0]],
        experiment_id="a",
        pixel_spacing=1.0,
    )
    model = cryoxr.make_projection_model(experiment_id="a", pixel_spacing=1.0)
    xy = project(poses, model, tomogram_dimensions=(100, 50, 40), tilt_image_center=(60.0, 70.0)).values
    # (x, y) -> (x - cx + ix, y - cy + iy), centre (50, 25, 20); z is dropped
    np.testing.assert_allclose(xy[:, 0], [[11 - 50 + 60, 19 - 25 + 70], [0 - 50 + 60, 0 - 25 + 70]])


def test_rotation_z_90_hand_computed() -> None:
    poses = cryoxr.make_poseset([[13.0, 7.0, 2.0]], experiment_id="a", pixel_spacing=1.0)
    model = cryoxr.make_projection_model(rotation_z=[90.0], experiment_id="a", pixel_spacing=1.0)
    xy = project(poses, model, tomogram_dimensions=(20, 10, 4), tilt_image_center=(0.0, 0.0)).values
    # relative to centre (10, 5, 2): (3, 2) -> Rz(90) -> (-2, 3)
    np.testing.assert_allclose(xy[0, 0], [-2.0, 3.0], atol=1e-12)


def test_binned_poses_are_rescaled_hand_computed() -> None:
    """Tomogram binned 4x (5.4 Å/px) against unbinned tilts (1.35 Å/px)."""
    poses = cryoxr.make_poseset(
        [[100.0, 100.0, 50.0], [512.0, 256.0, 128.0]], experiment_id="t", pixel_spacing=5.4
    )
    model = cryoxr.make_projection_model(rotation_y=[0.0, 90.0], experiment_id="t", pixel_spacing=1.35)
    xy = project(poses, model, tomogram_dimensions=(1024, 1024, 256), tilt_image_center=(2048, 2048)).values
    # 0 deg: (p - c) * 4 + 2048; centre (512, 512, 128)
    np.testing.assert_allclose(xy[0, 0], [(100 - 512) * 4 + 2048, (100 - 512) * 4 + 2048])
    np.testing.assert_allclose(xy[1, 0], [2048, (256 - 512) * 4 + 2048])
    # 90 deg about y: x' = z - cz (scaled), y unchanged
    np.testing.assert_allclose(xy[0, 1], [(50 - 128) * 4 + 2048, (100 - 512) * 4 + 2048], atol=1e-9)


def test_binned_equals_unbinned_projection(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    binned = poses.copy()
    binned["position"] = poses["position"] / 4
    binned["shift"] = poses["shift"] / 4
    binned.attrs["pixel_spacing"] = 1.35 * 4
    a = project(poses, tilt_model, tomogram_dimensions=(4096, 4096, 1000), tilt_image_center=CENTRE)
    b = project(binned, tilt_model, tomogram_dimensions=(1024, 1024, 250), tilt_image_center=CENTRE)
    np.testing.assert_allclose(a.values, b.values, atol=1e-9)


def test_multi_tomogram_sets_experiment_by_experiment(rng: np.random.Generator) -> None:
    models = {
        "TS_01": cryoxr.make_projection_model(
            rotation_y=np.linspace(-60, 60, 41), rotation_z=85.0, experiment_id="TS_01", pixel_spacing=1.35
        ),
        "TS_02": cryoxr.make_projection_model(
            rotation_y=np.linspace(-45, 45, 31),
            rotation_z=-95.0,
            dx=3.0,
            experiment_id="TS_02",
            pixel_spacing=1.35,
        ),
        "unused": cryoxr.make_projection_model(rotation_y=[0.0], experiment_id="unused", pixel_spacing=1.35),
    }
    model = pd.concat(list(models.values()), ignore_index=True)
    ids = rng.choice(["TS_01", "TS_02"], size=500)
    poses = random_poses(rng, 500, experiment_id=ids, chunks=64)
    dims = {"TS_01": (4096, 4096, 1000), "TS_02": (3710, 3838, 800)}
    centres = {"TS_01": (2048, 2048), "TS_02": (1855, 1919)}
    projected = project(poses, model, tomogram_dimensions=dims, tilt_image_center=centres)
    assert projected.sizes["image"] == 41
    assert projected.attrs["experiment_ids"] == ["TS_01", "TS_02"] or projected.attrs["experiment_ids"] == [
        "TS_02",
        "TS_01",
    ]
    values = projected.values
    for eid in ("TS_01", "TS_02"):
        rows = np.flatnonzero(ids == eid)
        expected = cryotypes_project(poses.isel(particle=rows), models[eid], centres[eid], dims[eid])
        t = expected.shape[1]
        np.testing.assert_allclose(values[rows, :t], expected, atol=1e-9)
        assert np.isnan(values[rows, t:]).all()
    assert projected.experiment_id.values.tolist() == ids.tolist()


def test_missing_experiment_is_named(poses: xr.Dataset) -> None:
    model = cryoxr.make_projection_model(rotation_y=[0.0], experiment_id="other", pixel_spacing=1.35)
    with pytest.raises(CryoxrError, match=r"experiment\(s\) \['TS_01'\].*absent") as info:
        project(poses, model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE)
    assert isinstance(info.value, ValueError)


def test_mapping_without_entry_is_named(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    with pytest.raises(
        InvalidValueError,
        match="experiment 'TS_01' has no tomogram size: the tomogram_dimensions mapping has no entry",
    ):
        project(poses, tilt_model, tomogram_dimensions={"x": DIMS}, tilt_image_center=CENTRE)


def test_two_dimensional_set_with_single_row_model() -> None:
    poses = cryoxr.make_poseset([[10.0, 20.0], [30.0, 40.0]], experiment_id="mic", pixel_spacing=1.0)
    model = cryoxr.make_projection_model(experiment_id="mic", pixel_spacing=1.0)
    xy = project(poses, model, tomogram_dimensions=(64, 64, 1), tilt_image_center=(32, 32))
    np.testing.assert_allclose(xy.values[:, 0], [[10.0, 20.0], [30.0, 40.0]])


def test_float32_output(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    a = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE)
    b = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, dtype=np.float32)
    assert b.dtype == np.float32
    np.testing.assert_allclose(b.values, a.values, atol=2e-3)


def test_two_million_particles_build_lazily_and_graph_grows_with_chunks(tilt_model: pd.DataFrame) -> None:
    n = 2_000_000
    rng = da.random.default_rng(1)
    position = rng.uniform(0, 4096, size=(n, 3), chunks=(100_000, 3))
    poses = cryoxr.make_poseset(position, experiment_id="TS_01", pixel_spacing=1.35)
    tilt_series = cryoxr.Image.from_array(
        da.zeros((41, 4096, 4096), chunks=(1, 4096, 4096), dtype=np.float32),
        pixel_spacing=1.35,
        experiment_id="TS_01",
        stack=True,
    )
    with raise_if_dask_computes():
        projected = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE)
        mask = in_field_of_view(projected, image_shape=(4096, 4096), margin=32)
        counts = count_in_field_of_view(
            poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, image_shape=(4096, 4096)
        )
        patches = extract_subtilts(tilt_series, projected, box_size=64)
    assert projected.chunks == ((100_000,) * 20, (41,), (2,))
    assert mask.dims == ("particle", "image")
    assert counts.dims == ("image",)
    assert patches.shape == (n, 41, 64, 64)
    # graph size follows the number of chunks, not of particles
    small = cryoxr.make_poseset(position[:200_000], experiment_id="TS_01", pixel_spacing=1.35)
    small_graph = len(
        project(small, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE).data.dask
    )
    big_graph = len(projected.data.dask)
    assert big_graph < 12 * small_graph


def test_matrices_enter_the_graph_once(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    projected = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, chunks=100)
    graph = dict(projected.data.__dask_graph__())
    weight_like = [k for k, v in graph.items() if isinstance(v, np.ndarray) and v.ndim == 3]
    assert len(weight_like) == 1
    project_tasks = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("project_block")]
    assert len(project_tasks) == 10


@pytest.mark.distributed
def test_local_cluster_equals_threaded(
    poses: xr.Dataset, tilt_model: pd.DataFrame, local_cluster: Any
) -> None:
    projected = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, chunks=250)
    counts = count_in_field_of_view(
        poses,
        tilt_model,
        tomogram_dimensions=DIMS,
        tilt_image_center=CENTRE,
        image_shape=(4096, 4096),
        chunks=250,
    )
    with dask.config.set(scheduler="threads"):
        local = projected.values
        local_counts = counts.values
    remote, remote_counts = local_cluster.compute([projected.data, counts.data], sync=True)
    with pytest.raises(InvalidValueError, match="pass a zarr array"):
        project_into(
            np.empty((1000, 41, 2)), poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE
        )
    np.testing.assert_array_equal(remote, local)
    np.testing.assert_array_equal(remote_counts, local_counts)


@pytest.mark.parametrize("target", ["numpy", "numpy-f32", "memmap", "zarr"])
def test_project_into_equals_project(
    target: str, poses_twin: xr.Dataset, tilt_model: pd.DataFrame, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import zarr

    from cryoxr.projection import project_into

    shape = (1000, 41, 2)
    dtype = np.float32 if target == "numpy-f32" else np.float64
    if target.startswith("numpy"):
        out = np.full(shape, np.nan, dtype=dtype)
    elif target == "memmap":
        out = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=dtype, shape=shape)
    else:
        out = zarr.create_array(tmp_path / "p.zarr", shape=shape, chunks=(300, 41, 2), dtype=dtype)
    kwargs = {"tomogram_dimensions": DIMS, "tilt_image_center": CENTRE}
    with dask.config.set(scheduler="threads"):
        project_into(out, poses_twin, tilt_model, chunks=300, **kwargs)
    expected = project(poses_twin, tilt_model, dtype=dtype, **kwargs).values
    np.testing.assert_allclose(np.asarray(out[:]), expected, atol=1e-9 if dtype == np.float64 else 1e-3)


def test_project_into_checks_the_target(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    from cryoxr.projection import project_into

    kwargs = {"tomogram_dimensions": DIMS, "tilt_image_center": CENTRE}
    with pytest.raises(InvalidValueError, match=r"out must have shape \(1000, 41, 2\)"):
        project_into(np.empty((1000, 40, 2)), poses, tilt_model, **kwargs)
    with pytest.raises(InvalidValueError, match="float64 or float32"):
        project_into(np.empty((1000, 41, 2), dtype=np.int32), poses, tilt_model, **kwargs)
    with raise_if_dask_computes():
        lazy = project_into(np.empty((1000, 41, 2)), poses, tilt_model, compute=False, chunks=100, **kwargs)
    assert lazy.shape == (10,)


def test_project_into_refuses_numpy_targets_on_other_processes(
    poses: xr.Dataset, tilt_model: pd.DataFrame
) -> None:
    """Each process would write into its own copy: silent loss, so it is refused."""
    from cryoxr.projection import project_into

    kwargs = {"tomogram_dimensions": DIMS, "tilt_image_center": CENTRE}
    with dask.config.set(scheduler="processes"), pytest.raises(InvalidValueError, match="pass a zarr array"):
        project_into(np.empty((1000, 41, 2)), poses, tilt_model, **kwargs)


def test_project_into_limits_blas_threads_only_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the threaded scheduler BLAS runs one thread per task during project_into, and
    the caller's setting is back afterwards; other schedulers are left alone."""
    import dask
    from threadpoolctl import threadpool_info

    from cryoxr import projection

    seen: list[list[int]] = []
    kernel = projection._project_into_block

    def spy(*args: object, **kwargs: object) -> object:
        seen.append([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"])
        return kernel(*args, **kwargs)

    monkeypatch.setattr(projection, "_project_into_block", spy)
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    rng = np.random.default_rng(0)
    poses = cryoxr.make_poseset(rng.uniform(0, 100, (50, 3)), experiment_id="TS", pixel_spacing=1.0)
    model = cryoxr.make_projection_model(
        rotation_y=np.linspace(-60, 60, 5), experiment_id="TS", pixel_spacing=1.0
    )
    out = np.empty((50, 5, 2))
    kw = {"tomogram_dimensions": (100, 100, 100), "tilt_image_center": (50, 50), "chunks": 10}
    cryoxr.project_into(out, poses, model, **kw)
    assert seen
    assert all(threads == [1] * len(before) for threads in seen)
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == before
    seen.clear()
    with dask.config.set(scheduler="sync"):
        cryoxr.project_into(out, poses, model, **kw)
    assert seen
    assert all(threads == before for threads in seen)
    np.testing.assert_allclose(out, cryoxr.project(poses, model, **kw).values)


def test_default_chunks_are_bigger_when_tasks_leave_the_process() -> None:
    """In-memory poses get 10^6-row chunks under process/distributed schedulers (fewer tasks)."""
    from cryoxr.projection import CLUSTER_PARTICLE_CHUNK

    n = CLUSTER_PARTICLE_CHUNK + 5
    poses = cryoxr.make_poseset(np.zeros((n, 3)), experiment_id="TS", pixel_spacing=1.0)
    model = cryoxr.make_projection_model(rotation_y=[0.0], experiment_id="TS", pixel_spacing=1.0)
    kw = {"tomogram_dimensions": (10, 10, 10), "tilt_image_center": (5, 5)}
    with raise_if_dask_computes():
        assert cryoxr.project(poses, model, **kw).chunks[0][:2] == (100_000, 100_000)
    with dask.config.set(scheduler="processes"):  # building only: nothing runs on it
        assert cryoxr.project(poses, model, **kw).chunks[0] == (CLUSTER_PARTICLE_CHUNK, 5)


def test_compute_writes_one_output_without_a_concatenated_copy(tilt_model: pd.DataFrame) -> None:
    import tracemalloc

    rng = np.random.default_rng(5)
    poses = random_poses(rng, 60_000)
    projected = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, chunks=7_000)
    want = np.empty(projected.shape)
    project_into(want, poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE)
    for scheduler in ("threads", "sync"):
        with dask.config.set(scheduler=scheduler):
            tracemalloc.start()
            got = projected.compute()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        np.testing.assert_array_equal(got.values, want)
        # the chunks were written into the result itself (dask would hold them and a
        # concatenated copy: 2x); the rest is the chunks' (n, 4) inputs
        assert got.values.nbytes <= peak < 1.2 * got.values.nbytes
        assert got.values.base is None
    # the array itself is an ordinary dask array for everything built on it
    np.testing.assert_allclose(projected.sum("particle").values, want.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(projected[10:20].values, want[10:20])


@pytest.mark.distributed
def test_compute_on_a_cluster_that_is_not_the_default_scheduler(
    poses: xr.Dataset, tilt_model: pd.DataFrame, local_cluster: Any
) -> None:
    projected = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, chunks=300)
    with dask.config.set(scheduler="threads"):
        local = projected.values
        # the graph is swapped for the shared output here, but its tasks run in the workers:
        # each writes rows of its own, which are concatenated as usual
        (remote,) = local_cluster.compute([projected.data], sync=True)
    np.testing.assert_array_equal(remote, local)
