"""Distributed faults (issue 8, item 4): a worker process killed mid-compute.

A 10^6-particle projection runs on a ``LocalCluster`` (2 worker processes x 1 thread);
once part of it is done, the worker holding the most results is killed with SIGKILL.
The scheduler recomputes what that worker held or was running on the surviving one (and
on the nanny's fresh replacement): the projection's tasks are pure (seeded lazy inputs,
per-tilt matrices embedded once, no file handles), so the result must equal the threaded
scheduler's bit for bit.

The whole (10^6, 41, 2) projection is compared without gathering it: an exact,
order-free checksum of every float's bit pattern (uint64 sums wrap, so any grouping of
the reduction gives the same value), the float sums per tilt (same graph, same reduction
tree) and the fused field-of-view counts.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

import cryoxr

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.distributed

N = 1_000_000
CHUNK = 10_000  # 100 chunks: the kill lands with part of the work done, part to do
TOMO = (4096, 4096, 1000)
CENTRE = (2048.0, 2048.0)


def _poses() -> Any:
    """Lazy, seeded poses: every chunk is recomputed identically wherever it runs."""
    rs = da.random.RandomState(20261125)
    position = rs.random_sample((N, 3), chunks=(CHUNK, 3)) * np.asarray(TOMO, dtype=np.float64)
    shift = rs.normal(0.0, 2.0, size=(N, 3), chunks=(CHUNK, 3))
    orientation = da.concatenate(
        [da.zeros((N, 3), chunks=(CHUNK, 3)), da.ones((N, 1), chunks=(CHUNK, 1))], axis=1
    )
    return cryoxr.make_poseset(
        position, shift=shift, orientation=orientation, experiment_id="TS_01", pixel_spacing=1.35
    )


def _model() -> pd.DataFrame:
    angles = np.linspace(-60, 60, 41)
    return cryoxr.make_projection_model(
        rotation_x=0.3, rotation_y=angles, rotation_z=85.0, dx=np.sin(np.deg2rad(angles)) * 3.0,
        dy=-2.0, experiment_id="TS_01", pixel_spacing=1.35,
    )  # fmt: skip


def _summaries() -> tuple[da.Array, da.Array, da.Array]:
    """(bit checksum per tilt and axis, float sums per tilt and axis, counts in view per tilt)."""
    poses, model = _poses(), _model()
    kwargs: dict[str, Any] = {"tomogram_dimensions": TOMO, "tilt_image_center": CENTRE}
    projected = cryoxr.project(poses, model, **kwargs).data
    bits = projected.view(np.uint64)
    checksum = (bits ^ (bits >> np.uint64(29))).sum(axis=0, dtype=np.uint64)
    sums = projected.sum(axis=0)
    counts = cryoxr.count_in_field_of_view(poses, model, image_shape=(4096, 4096), margin=32.0, **kwargs).data
    return checksum, sums, counts


def _transitions(dask_scheduler: Any) -> int:
    return int(dask_scheduler.transition_counter)


def _in_memory(client: Any) -> dict[str, int]:
    return {worker: len(keys) for worker, keys in client.has_what().items()}


@pytest.mark.slow
def test_worker_killed_mid_compute_gives_the_threaded_result(local_cluster: Any) -> None:
    start = time.perf_counter()
    expected = dask.compute(*_summaries(), scheduler="threads")
    threaded = time.perf_counter() - start
    client = local_cluster
    pids = client.run(os.getpid)
    start = time.perf_counter()
    summaries = _summaries()
    n_tasks = len({key for array in dask.optimize(*summaries) for key in array.__dask_graph__()})
    futures = client.compute(list(summaries))
    # a task passes through ~5 scheduler transitions (released, waiting, processing,
    # memory, released/forgotten): kill once about 40% of the work is done
    deadline = time.monotonic() + 60
    while client.run_on_scheduler(_transitions) < 2 * n_tasks and time.monotonic() < deadline:
        time.sleep(0.005)
    progress = client.run_on_scheduler(_transitions) / (5 * n_tasks)
    held = _in_memory(client)
    victim = max(held, key=held.__getitem__)
    running = not all(f.done() for f in futures)
    os.kill(pids[victim], signal.SIGKILL)
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    workers = client.run(os.getpid)
    assert running, "the compute finished before the kill: nothing was tested"
    assert pids[victim] not in workers.values()  # the killed process is gone (the nanny restarted one)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    print(
        f"\nkilled worker {victim} (pid {pids[victim]}, holding {held[victim]} of {sum(held.values())} "
        f"results in memory) at ~{progress:.0%} of {n_tasks} tasks; distributed {elapsed:.1f} s, threaded {threaded:.1f} s; "
        f"results equal; counts in view {int(np.asarray(results[2]).min())}..{int(np.asarray(results[2]).max())}"
    )
