"""The graph of RELION-mode subtilt extraction: positions and defocus projected inside the
extraction tasks (nothing per particle-tilt held outside them), and the stacks rebuilt one
task per particle block over all tilts."""

from __future__ import annotations

import pickle

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.utils import key_split

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.subtilt_graph import subtilt_blocks
from cryoxr.testing import noise_tilt_series, raise_if_dask_computes

N_TILTS = 9


def _setup(n_tilts: int = N_TILTS, experiment: str = "TS_01") -> tuple[pd.DataFrame, cryoxr.Image]:
    return noise_tilt_series(n_tilts, max_angle=40.0, experiment_id=experiment)


def _poses(n: int, seed: int = 3, chunks: int | None = None) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return cryoxr.make_poseset(
        rng.uniform([10, 10, 10], [86, 70, 30], size=(n, 3)),
        shift=rng.normal(scale=0.4, size=(n, 3)),
        experiment_id="TS_01",
        pixel_spacing=2.5,
        chunks=chunks,
    )


def _extract(poses: xr.Dataset, model: pd.DataFrame, ts: cryoxr.Image, **kwargs: object) -> xr.DataArray:
    options: dict[str, object] = {"box_size": 12, "mode": "relion", "projection_model": model, **kwargs}
    return cryoxr.extract_subtilts(
        ts, cryoxr.project(poses, model), defocus=cryoxr.particle_defocus(poses, model), **options
    )


def _graph_bytes(poses: xr.Dataset, model: pd.DataFrame, ts: cryoxr.Image) -> tuple[int, set[str]]:
    stacks = _extract(poses, model, ts, particles_per_task=100)
    graph = dict(stacks.data.__dask_graph__())
    return len(pickle.dumps(graph)), {key_split(k) for k in graph}


def test_the_graph_holds_the_poses_and_no_positions_or_defocus() -> None:
    """The extraction tasks take the poses' chunks and project them themselves: no task of
    the graph makes positions or defocus, and the graph grows with the pose data only
    (before: projection tasks whose (n, T, 2) results dask held until every tilt was cut)."""
    model, ts = _setup()
    small, layers = _graph_bytes(_poses(200), model, ts)
    large, _ = _graph_bytes(_poses(2000), model, ts)
    assert not [name for name in layers if "project" in name or "getitem" in name or "rechunk" in name]
    pose_bytes = 2 * 3 * 8  # position and shift, float64, per particle
    per_particle = (large - small) / 1800
    # the poses, a code (8 bytes) and a task per block and tilt (~2 bytes per particle and
    # tilt at 100 particles per task); positions and defocus of every tilt would add
    # 2 x 2 x 8 x T = 288 bytes per particle
    assert per_particle < pose_bytes + 8 + 3 * N_TILTS, per_particle


def test_fused_tasks_equal_the_stacks_cut_from_given_positions() -> None:
    model, ts = _setup()
    poses = _poses(40, chunks=16)
    with raise_if_dask_computes():
        fused = _extract(poses, model, ts)
    projected = cryoxr.project(poses, model).compute()  # an array: cut into blocks, not fused
    defocus = cryoxr.particle_defocus(poses, model).compute()
    given = cryoxr.extract_subtilts(
        ts, projected, box_size=12, mode="relion", projection_model=model, defocus=defocus
    )
    assert fused.data.chunks[0] == (16, 16, 8)  # the poses' chunks (project's policy)
    assert given.data.chunks[0] == (40,)
    np.testing.assert_array_equal(fused.visible.values, given.visible.values)
    assert 0 < fused.visible.values.sum() < fused.visible.size
    a, b = fused.values, given.values
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    assert np.abs(a).max() > 0


def test_subtilt_blocks_rebuilds_the_same_stacks_over_all_tilts() -> None:
    model, ts = _setup()
    poses = _poses(30)
    stacks = _extract(poses, model, ts, particles_per_task=8)
    assert stacks.data.chunks[1] == (1,) * N_TILTS
    with raise_if_dask_computes():
        blocks = subtilt_blocks(stacks.data, 8)
    assert blocks is not None
    assert blocks.chunks[:2] == ((8, 8, 8, 6), (N_TILTS,))
    assert len(blocks.__dask_graph__().layers[blocks.name]) == 4
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(blocks.compute(), stacks.values)
    again = subtilt_blocks(stacks.data, (10, 20))
    assert again is not None
    assert again.chunks[0] == (10, 20)
    with pytest.raises(InvalidValueError, match="do not sum to 30"):
        subtilt_blocks(stacks.data, (10, 10))
    assert subtilt_blocks(stacks.data * 2) is None
    assert subtilt_blocks(stacks.values) is None


def test_positions_not_from_project_are_still_cut_in_blocks() -> None:
    """A transformed projection (not project's own array) is taken as values: the same
    stacks, from blocks of its positions."""
    model, ts = _setup(3)
    poses = _poses(12)
    projected = cryoxr.project(poses, model)
    moved = projected + 0.0
    defocus = cryoxr.particle_defocus(poses, model)
    a = cryoxr.extract_subtilts(
        ts, moved, box_size=12, mode="relion", projection_model=model, defocus=defocus, particles_per_task=5
    )
    b = _extract(poses, model, ts, particles_per_task=5)
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-5 * np.abs(b.values).max())
    blocks = subtilt_blocks(a.data, 5)  # the same blocks: FFTs of other batches round otherwise
    assert blocks is not None
    np.testing.assert_array_equal(blocks.compute(), a.values)
    with pytest.raises(InvalidValueError, match="defocus has shape"):
        cryoxr.extract_subtilts(
            ts, projected, box_size=12, mode="relion", projection_model=model,
            defocus=defocus.isel(particle=slice(0, 5)),
        )  # fmt: skip
