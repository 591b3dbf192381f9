"""Benchmark of :func:`cryoxr.project` and :func:`cryoxr.count_in_field_of_view` (issue 4).

Every contender runs in a fresh subprocess, so its peak RSS is its own. Inputs are the
same in every subprocess (seeded). Before any timing, the cryoxr results are checked
against the in-memory GEMM baseline (c) built from cryotypes' own projection matrices.

Usage::

    python benchmarks/bench_projection.py --quick        # N = 1e5, 1e6; ~1 minute idle
    python benchmarks/bench_projection.py                # N = 1e6, 1e7 (+ 1e5), full study
    python benchmarks/bench_projection.py --json out.json

Contenders (rates in particle-tilts/s, T = 61 tilts):

- ``copy``: np.copyto of 1 GiB arrays: the machine's read+write bandwidth.
- ``c_gemm``: baseline (c), one (N, 4) @ (4, 2T) numpy GEMM into a preallocated output.
- ``a_loop``: baseline (a), a Python loop over tilts, one (N, 4) @ (4, 2) matmul each.
- ``b_cryotypes``: baseline (b), cryotypes' (T, 4, 4) matrices applied per particle,
  timed on 10^4 particles and scaled.
- ``store``: ``da.store(project(...).data, target)`` into a preallocated, touched numpy array.
- ``into``: ``project_into(target, ...)`` into a preallocated, touched numpy array (each
  chunk's GEMM writes straight into its rows of the target).
- ``into zarr``: ``project_into`` into an uncompressed zarr array on local disk, zarr
  chunks aligned with the dask chunks; ``to_zarr``: ``da.to_zarr(project(...).data, ...)``
  into the same kind of array.
- ``compute``: ``project(...).data.compute()`` (dask concatenates a fresh array).
- ``concat``: ``np.concatenate(dask.compute(*blocks))``.
- ``count``: ``count_in_field_of_view(...)``, the fused streaming reduction.
- ``c_count``: baseline, numpy's chunked GEMM + count, cache-blocked (1024 rows per GEMM
  into reused buffers, the image test against a full limit block, uint8 counters per
  tilt): the fastest plain-numpy form.
- ``composed``: ``in_field_of_view(project(...), ...).sum("particle")``, the README's way.
- ``--ratios``: the issue-17 rows, each ratio's contenders in one process, medians of
  interleaved rounds: composed path and fused count vs ``c_count``; ``project(...).compute()``
  vs one GEMM into a touched output and into a fresh ``np.empty``; peak RSS of
  ``project(...).compute()`` in fresh subprocesses against the result's bytes.
- ``*_cluster``: the same on ``distributed.LocalCluster(2 workers x 1 thread, processes)``.
- ``*+blas1``: the same with OpenBLAS limited to one thread per dask thread.

Bandwidth fraction: (minimal bytes read + written: positions, shifts and codes in, the
output out) / time / measured copy bandwidth (read + write).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

T = 61
TOMO = (4096, 4096, 1024)
CENTRE = (2048.0, 2048.0)
IMAGE_SHAPE = (4096, 4096)
MARGIN = 64.0
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
HERE = os.path.abspath(__file__)

# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def make_model() -> Any:
    import cryoxr

    rng = np.random.default_rng(1)
    return cryoxr.make_projection_model(
        rotation_x=rng.normal(0, 0.5, T),
        rotation_y=np.linspace(-60.0, 60.0, T),
        rotation_z=85.0 + rng.normal(0, 0.2, T),
        dx=rng.normal(0, 5, T),
        dy=rng.normal(0, 5, T),
        experiment_id="TS_01",
        pixel_spacing=1.35,
    )


def make_positions(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((n, 3)) * np.asarray(TOMO, dtype=np.float64)


def make_poses(n: int, lazy: bool = False, chunk: int = 100_000) -> Any:
    """A PoseSet; ``lazy``: positions drawn chunk-wise by dask, nothing held in memory."""
    import cryoxr

    if not lazy:
        return cryoxr.make_poseset(make_positions(n), experiment_id="TS_01", pixel_spacing=1.35)
    import dask.array as da

    rs = da.random.RandomState(0)
    position = rs.random_sample((n, 3), chunks=(chunk, 3)) * np.asarray(TOMO, dtype=np.float64)
    shift = da.zeros((n, 3), chunks=(chunk, 3))
    orientation = da.concatenate(
        [da.zeros((n, 3), chunks=(chunk, 3)), da.ones((n, 1), chunks=(chunk, 1))], axis=1
    )
    return cryoxr.make_poseset(
        position, shift=shift, orientation=orientation, experiment_id="TS_01", pixel_spacing=1.35
    )


def cryotypes_matrices() -> np.ndarray:
    """(T, 4, 4) from cryotypes itself: the independent reference."""
    from cryotypes.projectionmodel import projection_model_to_projection_matrices

    return np.asarray(projection_model_to_projection_matrices(make_model(), CENTRE, TOMO))


def gemm_operator(dtype: Any = np.float64) -> np.ndarray:
    """(4, 2T) with column 2t + a = row a of tilt t's matrix: xyzw @ op -> (T, 2) flat."""
    mats = cryotypes_matrices()[:, :2, :]  # (T, 2, 4)
    return np.ascontiguousarray(mats.reshape(2 * T, 4).T).astype(dtype)


def homogeneous(positions: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    out = np.ones((positions.shape[0], 4), dtype=dtype)
    out[:, :3] = positions
    return out


def project_kwargs() -> dict[str, Any]:
    return {"tomogram_dimensions": TOMO, "tilt_image_center": CENTRE}


def numpy_counts(xy: np.ndarray) -> np.ndarray:
    centre = np.array([(IMAGE_SHAPE[1] - 1) / 2.0, (IMAGE_SHAPE[0] - 1) / 2.0])
    half = centre - MARGIN
    inside = (np.abs(xy.reshape(xy.shape[0], T, 2) - centre) <= half).all(axis=2)
    return inside.sum(axis=0)


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


class PeakRSS:
    """Samples the RSS of this process and its children (a LocalCluster's workers)."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def best_of(fn: Callable[[], Any], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def check(name: str, got: np.ndarray, want: np.ndarray, atol: float) -> None:
    err = float(np.nanmax(np.abs(np.asarray(got, dtype=np.float64) - want))) if got.size else 0.0
    if not (got.shape == want.shape and err <= atol):
        raise SystemExit(f"{name}: result differs from baseline (c): max |diff| {err:g} > {atol:g}")


def io_bytes(n: int, itemsize: int, output: bool = True) -> int:
    """Minimal traffic: position + shift (float64) and codes (int64) in, output out."""
    return n * (3 * 8 + 3 * 8 + 8) + (n * 2 * T * itemsize if output else 0)


# --------------------------------------------------------------------------------------
# contenders (each runs in its own subprocess)
# --------------------------------------------------------------------------------------


def run_copy(a: argparse.Namespace) -> dict[str, Any]:
    src = np.ones(2**27)  # 1 GiB
    dst = np.zeros_like(src)
    sec = best_of(lambda: np.copyto(dst, src), a.reps)
    return {"seconds": sec, "bandwidth": 2 * src.nbytes / sec}


def run_c(a: argparse.Namespace) -> dict[str, Any]:
    dtype = np.dtype(a.dtype)
    pts = homogeneous(make_positions(a.n), dtype)
    op = gemm_operator(dtype)
    out = np.empty((a.n, 2 * T), dtype=dtype)
    out.fill(0)  # touched: time the GEMM, not page faults
    sec = best_of(lambda: np.matmul(pts, op, out=out), a.reps)
    return {"seconds": sec, "bytes": a.n * 4 * dtype.itemsize + out.nbytes}


def run_c_count(a: argparse.Namespace) -> dict[str, Any]:
    """numpy's chunked GEMM + count, cache-blocked (:func:`numpy_chunked_count`, fast form).

    The fastest plain-numpy form found: 1024 rows per GEMM into reused buffers with the
    image centre folded into the bias, ``|xy| <= half`` against a full limit block, both
    bytes of each (x, y) pair true, counted per tilt in uint8 counters.
    """
    dtype = np.dtype(a.dtype)
    pts = homogeneous(make_positions(a.n), dtype)
    op = gemm_operator(dtype)
    centre = np.array([(IMAGE_SHAPE[1] - 1) / 2.0, (IMAGE_SHAPE[0] - 1) / 2.0])
    op[3] -= np.tile(centre, T).astype(dtype)
    half = np.tile(centre - MARGIN, T).astype(dtype)
    loop = numpy_chunked_count(pts, op, half, "fast")
    results: list[np.ndarray] = []
    sec = best_of(lambda: results.append(loop()), a.reps)
    counts = results[-1]
    m = min(a.n, 10_000)
    if m == a.n and not np.array_equal(
        counts, numpy_counts(homogeneous(make_positions(m)) @ gemm_operator())
    ):
        raise SystemExit("c_count: counts differ from numpy_counts")
    return {"seconds": sec, "bytes": io_bytes(a.n, 8, output=False), "in_fov": int(counts.sum())}


def run_a(a: argparse.Namespace) -> dict[str, Any]:
    pts = homogeneous(make_positions(a.n))
    mats = cryotypes_matrices()
    out = np.empty((a.n, T, 2))
    out.fill(0)  # touched: time the loop, not page faults

    def loop() -> None:
        for t in range(T):
            out[:, t, :] = pts @ mats[t, :2, :].T

    sec = best_of(loop, a.reps)
    m = min(a.n, 10_000)
    check("a_loop", out[:m].reshape(m, 2 * T), pts[:m] @ gemm_operator(), 1e-9)
    return {"seconds": sec, "bytes": io_bytes(a.n, 8)}


def run_b(a: argparse.Namespace) -> dict[str, Any]:
    m = min(a.n, 10_000)
    pts = homogeneous(make_positions(a.n)[:m])
    mats = cryotypes_matrices()
    out = np.zeros((m, T, 2))

    def loop() -> None:
        for i in range(m):
            out[i] = (mats @ pts[i])[:, :2]

    sec = best_of(loop, max(1, a.reps - 1)) * a.n / m
    check("b_cryotypes", out.reshape(m, 2 * T), pts @ gemm_operator(), 1e-9)
    return {"seconds": sec, "bytes": io_bytes(a.n, 8), "note": f"timed on {m}, scaled"}


def _setup(a: argparse.Namespace) -> None:
    import dask

    if a.blas1:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    if not a.on_cluster:
        dask.config.set(scheduler="threads", num_workers=os.cpu_count())


def zarr_target(n: int, chunk: int, dtype: Any, path: str) -> Any:
    """An uncompressed (N, T, 2) zarr array on disk, chunks aligned with the dask chunks."""
    import zarr

    return zarr.create_array(
        path,
        shape=(n, T, 2),
        chunks=(max(1, min(n, chunk)), T, 2),
        dtype=dtype,
        compressors=None,
        overwrite=True,
    )


def touched(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Preallocated and written once: the timing measures the writes, not page faults."""
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


def run_verify(a: argparse.Namespace) -> dict[str, Any]:
    """cryoxr == baseline (c) (cryotypes' matrices, one GEMM) before anything is timed.

    ``project`` and ``project_into`` (numpy float64/float32, zarr): to 1e-9 px in float64
    (1e-3 px in float32), at chunk sizes that split and do not split N; count: exactly
    equal to numpy counts of (c).
    """
    import tempfile

    import cryoxr

    model = make_model()
    poses = make_poses(a.n)
    want = homogeneous(np.asarray(poses.position.values)) @ gemm_operator()
    want_counts = numpy_counts(want)
    kw = {**project_kwargs(), "image_shape": IMAGE_SHAPE, "margin": MARGIN}
    checked = []
    with tempfile.TemporaryDirectory(prefix="bench_projection_") as tmp:
        for chunk in sorted({a.chunk, max(1, a.n // 3 + 1)}):
            for dtype, atol in (("float64", 1e-9), ("float32", 1e-3)):
                xy = cryoxr.project(poses, model, chunks=chunk, dtype=dtype, **project_kwargs()).values
                check(f"project {dtype} chunk {chunk}", xy.reshape(a.n, 2 * T), want, atol)
                out = np.full((a.n, T, 2), np.nan, dtype=dtype)
                cryoxr.project_into(out, poses, model, chunks=chunk, **project_kwargs())
                check(f"project_into numpy {dtype} chunk {chunk}", out.reshape(a.n, 2 * T), want, atol)
            out = np.full((a.n, T, 2), np.nan)
            cryoxr.project_into(out, poses, model, **project_kwargs())
            check("project_into numpy default chunks", out.reshape(a.n, 2 * T), want, 1e-9)
            z = zarr_target(a.n, chunk, np.float64, os.path.join(tmp, f"verify{chunk}.zarr"))
            cryoxr.project_into(z, poses, model, chunks=chunk, **project_kwargs())
            check(f"project_into zarr chunk {chunk}", z[...].reshape(a.n, 2 * T), want, 1e-9)
            counts = cryoxr.count_in_field_of_view(poses, model, chunks=chunk, **kw).values
            if not np.array_equal(counts, want_counts):
                raise SystemExit(f"count chunk {chunk}: differs from numpy counts of baseline (c)")
            checked.append(f"chunk {chunk}")
    return {"seconds": 0.0, "bytes": 0, "checked": checked}


def run_project(a: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import dask
    import dask.array as da

    import cryoxr

    _setup(a)
    poses, model = make_poses(a.n), make_model()
    dtype = np.dtype(a.dtype)
    client = _cluster() if a.on_cluster else None
    tmp = tempfile.mkdtemp(prefix="bench_projection_")
    try:
        _warm_up(a, model)
        # timed as a user calls it: graph construction (incl. dask hashing the inputs) too

        def lazy() -> Any:
            return cryoxr.project(poses, model, chunks=a.chunk, dtype=dtype, **project_kwargs()).data

        xy = lazy()
        graph_tasks = len(xy.__dask_graph__())
        build = lazy
        if a.how == "store":
            target = touched(xy.shape, dtype)

            def fn() -> Any:
                return da.store(lazy(), target, lock=False)

        elif a.how == "into":
            if a.target == "zarr":
                target = zarr_target(a.n, a.chunk, dtype, os.path.join(tmp, "xy.zarr"))
            else:
                target = touched(xy.shape, dtype)

            def build() -> Any:
                return cryoxr.project_into(
                    target,
                    poses,
                    model,
                    chunks=a.chunk if a.chunk > 0 else None,
                    compute=False,
                    **project_kwargs(),
                )

            graph_tasks = len(build().__dask_graph__())

            def fn() -> Any:
                # --chunk -1: project_into's own default (two tasks per thread for numpy targets)
                chunks = a.chunk if a.chunk > 0 else None
                return cryoxr.project_into(target, poses, model, chunks=chunks, **project_kwargs())

        elif a.how == "compute":

            def fn() -> Any:
                return lazy().compute()

        elif a.how == "concat":

            def fn() -> Any:
                blocks = lazy().to_delayed().ravel().tolist()
                return np.concatenate(dask.compute(*blocks), axis=0)

        elif a.how == "to_zarr":
            target = zarr_target(a.n, a.chunk, dtype, os.path.join(tmp, "xy.zarr"))

            def fn() -> Any:
                return da.to_zarr(lazy(), target)

        else:
            raise SystemExit(f"unknown --how {a.how}")
        build_s = best_of(build, a.reps)
        sec = best_of(fn, a.reps)
    finally:
        if client is not None:
            client.close()
            client.cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "seconds": sec,
        "build": build_s,
        "bytes": io_bytes(a.n, dtype.itemsize),
        "tasks": graph_tasks,
    }


def run_count(a: argparse.Namespace) -> dict[str, Any]:
    import cryoxr

    _setup(a)
    model = make_model()
    kw = {**project_kwargs(), "image_shape": IMAGE_SHAPE, "margin": MARGIN}
    client = _cluster() if a.on_cluster else None
    try:
        _warm_up(a, model)
        poses = make_poses(a.n, lazy=a.n > 1_000_000, chunk=a.chunk)

        def build() -> Any:
            return cryoxr.count_in_field_of_view(poses, model, chunks=a.chunk, dtype=a.dtype, **kw).data

        totals: list[int] = []
        sec = best_of(lambda: totals.append(int(build().compute().sum())), a.reps)
        build_s = best_of(build, a.reps)
    finally:
        if client is not None:
            client.close()
            client.cluster.close()
    return {"seconds": sec, "build": build_s, "bytes": io_bytes(a.n, 8, output=False), "in_fov": totals[-1]}


def run_composed(a: argparse.Namespace) -> dict[str, Any]:
    """The README's way: ``in_field_of_view(project(...), ...).sum("particle")``."""
    import cryoxr

    _setup(a)
    model = make_model()
    _warm_up(a, model)
    poses = make_poses(a.n)

    def build() -> Any:
        xy = cryoxr.project(poses, model, chunks=a.chunk, dtype=a.dtype, **project_kwargs())
        return cryoxr.in_field_of_view(xy, image_shape=IMAGE_SHAPE, margin=MARGIN).sum("particle")

    totals: list[int] = []
    sec = best_of(lambda: totals.append(int(build().values.sum())), a.reps)
    build_s = best_of(build, a.reps)
    counts = build().data
    graph_tasks = len(counts.__dask_optimize__(counts.__dask_graph__(), counts.__dask_keys__()))
    return {
        "seconds": sec, "build": build_s, "bytes": io_bytes(a.n, 8, output=False),
        "in_fov": totals[-1], "tasks": graph_tasks,
    }  # fmt: skip


# --------------------------------------------------------------------------------------
# same-process ratios (issue 17): the composed path and project(...).compute()
# --------------------------------------------------------------------------------------


def numpy_chunked_count(pts: np.ndarray, op: np.ndarray, half: np.ndarray, form: str) -> Callable[[], Any]:
    """numpy's cache-blocked GEMM + count over ``pts``, 1024 rows at a time; returns the loop.

    ``op``'s bias row is centred on the image, ``half`` is the (2T,) half extent. ``form``:
    ``"fast"`` compares against a full (rows, 2T) limit block and adds each block's bool
    bytes into a uint8 counter (flushed every 255 blocks); ``"s4"`` is the session-4
    baseline (a broadcast (2T,) limit, ``np.count_nonzero(..., axis=0)`` per block, 2-3x
    slower: numpy's broadcast comparison and its bool-to-int64 column sum).
    """
    n, width = pts.shape[0], op.shape[1]
    step = 1024
    xy = np.empty((step, width), dtype=pts.dtype)
    inside = np.empty((step, width), dtype=bool)
    both = np.empty((step, width // 2), dtype=bool)
    limit = np.empty((step, width), dtype=pts.dtype)
    limit[:] = half
    counter = np.zeros((step, width // 2), dtype=np.uint8)

    def loop() -> np.ndarray:
        counts = np.zeros(width // 2, np.int64)
        counter[:] = 0
        for k, start in enumerate(range(0, n, step), 1):
            m = min(step, n - start)
            np.matmul(pts[start : start + m], op, out=xy[:m])
            np.abs(xy[:m], out=xy[:m])
            if form == "s4":
                np.less_equal(xy[:m], half, out=inside[:m])
                counts += np.count_nonzero(inside[:m].view(np.uint16) == 0x0101, axis=0)
                continue
            np.less_equal(xy[:m], limit[:m], out=inside[:m])
            np.equal(inside[:m].view(np.uint16), 0x0101, out=both[:m])
            np.add(counter[:m], both[:m].view(np.uint8), out=counter[:m])
            if k % 255 == 0:
                counts += counter.sum(axis=0, dtype=np.int64)
                counter[:] = 0
        return counts + counter.sum(axis=0, dtype=np.int64)

    return loop


def run_ratios(a: argparse.Namespace) -> dict[str, Any]:
    """Both sides of each ratio in this one process, interleaved ``a.reps`` times (medians)."""
    import statistics

    import cryoxr

    _setup(a)
    model = make_model()
    _warm_up(a, model)
    poses = make_poses(a.n)
    pts = homogeneous(make_positions(a.n))
    op = gemm_operator()
    centre = np.array([(IMAGE_SHAPE[1] - 1) / 2.0, (IMAGE_SHAPE[0] - 1) / 2.0])
    centred = op.copy()
    centred[3] -= np.tile(centre, T)
    half = np.tile(centre - MARGIN, T)
    gemm_out = touched((a.n, 2 * T), np.float64)
    kw = project_kwargs()

    def composed() -> np.ndarray:  # the README's way, as typed
        xy = cryoxr.project(poses, model, **kw)
        return cryoxr.in_field_of_view(xy, image_shape=IMAGE_SHAPE, margin=MARGIN).sum("particle").values

    def composed_graph() -> Any:  # building alone: validation, operators, dask graph, xarray
        xy = cryoxr.project(poses, model, **kw)
        return cryoxr.in_field_of_view(xy, image_shape=IMAGE_SHAPE, margin=MARGIN).sum("particle")

    def composed_one_thread() -> np.ndarray:  # dask's per-task cost without thread contention
        import dask

        with dask.config.set(scheduler="synchronous"):
            return composed()

    def fused() -> np.ndarray:
        return cryoxr.count_in_field_of_view(
            poses, model, image_shape=IMAGE_SHAPE, margin=MARGIN, **kw
        ).values

    def compute() -> Any:
        return cryoxr.project(poses, model, **kw).compute()

    contenders: dict[str, Callable[[], Any]] = {
        "numpy chunked GEMM + count": numpy_chunked_count(pts, centred, half, "fast"),
        "numpy chunked GEMM + count (session-4 form)": numpy_chunked_count(pts, centred, half, "s4"),
        "composed": composed,
        "composed, synchronous scheduler": composed_one_thread,
        "composed, building the graph only": composed_graph,
        "count_in_field_of_view": fused,
        "numpy single GEMM": lambda: np.matmul(pts, op, out=gemm_out),
        # what any fresh result pays: first-touch page faults of the new output
        "numpy single GEMM into np.empty": lambda: np.matmul(pts, op, out=np.empty((a.n, 2 * T))),
        "project(...).compute()": compute,
    }
    want = contenders["numpy chunked GEMM + count"]()
    counted = ("numpy chunked GEMM + count (session-4 form)", "composed", "composed, synchronous scheduler")
    for name in (*counted, "count_in_field_of_view"):
        if not np.array_equal(contenders[name](), want):
            raise SystemExit(f"ratios: {name} counts differ from numpy's")
    contenders["numpy single GEMM"]()
    check("project(...).compute()", compute().values.reshape(a.n, -1), gemm_out, 1e-6)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(a.reps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            del result
    return {
        "seconds": 0.0, "bytes": 0, "times": times,
        "median": {name: statistics.median(ts) for name, ts in times.items()},
    }  # fmt: skip


def run_compute_rss(a: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of one ``project(...).compute()`` (``--how compute``) or one GEMM into a fresh
    output (``--how gemm``), with the RSS before it and the result's bytes."""
    import psutil

    import cryoxr

    _setup(a)
    poses, model = make_poses(a.n), make_model()
    pts, op = homogeneous(make_positions(a.n)), gemm_operator()
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    if a.how == "gemm":
        result = np.matmul(pts, op, out=np.empty((a.n, 2 * T)))
    else:
        result = cryoxr.project(poses, model, **project_kwargs()).compute().values
    sec = time.perf_counter() - t0
    return {"seconds": sec, "bytes": 0, "before": before, "result_nbytes": int(result.nbytes)}


def ratios(a: argparse.Namespace) -> None:
    """The issue-17 rows: each ratio from one process, medians of ``--reps`` interleaved rounds."""
    import statistics

    env = dict(os.environ)
    n = a.n or 2_000_000
    load0 = os.getloadavg()
    r = spawn(env, "ratios", n, max(3, a.reps))
    med = r["median"]
    rss = {
        how: [spawn(env, "compute_rss", n, 1, how=how) for _ in range(max(3, a.reps))]
        for how in ("compute", "gemm")
    }
    load1 = os.getloadavg()
    print(
        f"N = {n:.0e} particles x {T} tilts, float64; load average {load0[0]:.1f} -> {load1[0]:.1f} (1 min)"
    )
    print(f"medians of {len(r['times']['composed'])} interleaved rounds in one process\n")
    print("| contender | median s | all s | vs numpy chunked GEMM + count | vs numpy single GEMM |")
    print("|---|---:|---:|---:|---:|")
    for name, sec in med.items():
        k = med["numpy chunked GEMM + count"]
        g = med["numpy single GEMM"]
        vs_k = f"{sec / k:.2f}x" if "count" in name or name.startswith("composed") else ""
        vs_g = f"{sec / g:.2f}x" if "single GEMM" in name or name == "project(...).compute()" else ""
        runs = ", ".join(f"{t:.3f}" for t in r["times"][name])
        print(f"| {name} | {sec:.3f} | {runs} | {vs_k} | {vs_g} |")
    print("\npeak RSS, each in a fresh subprocess (median of the runs):\n")
    print("| what | peak RSS | RSS before | result | peak / result | (peak - before) / result |")
    print("|---|---:|---:|---:|---:|---:|")
    for how, label in (("compute", "project(...).compute()"), ("gemm", "numpy GEMM into np.empty")):
        peak = statistics.median(x["peak_rss"] for x in rss[how])
        before = statistics.median(x["before"] for x in rss[how])
        size = rss[how][0]["result_nbytes"]
        print(
            f"| {label} | {fmt_bytes(peak)} | {fmt_bytes(before)} | {fmt_bytes(size)} | {peak / size:.2f}x "
            f"| {(peak - before) / size:.2f}x |"
        )


def _warm_up(a: argparse.Namespace, model: Any) -> None:
    """Untimed: imports and function shipping to the workers happen here, not in the timing."""
    import cryoxr

    small_chunk = min(a.chunk, 10_000) if a.chunk > 0 else 10_000
    small = make_poses(2 * small_chunk)
    kw = {**project_kwargs(), "image_shape": IMAGE_SHAPE, "margin": MARGIN}
    cryoxr.project(small, model, chunks=small_chunk, dtype=a.dtype, **project_kwargs()).compute()
    cryoxr.count_in_field_of_view(small, model, chunks=small_chunk, dtype=a.dtype, **kw).compute()
    if not a.on_cluster:  # a numpy target is only written by in-process (threaded) tasks
        out = np.empty((small.sizes["particle"], T, 2), dtype=a.dtype)
        cryoxr.project_into(out, small, model, chunks=small_chunk, **project_kwargs())


def _cluster() -> Any:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="8GiB"
    )
    return Client(cluster)


CONTENDERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "verify": run_verify,
    "copy": run_copy,
    "c_gemm": run_c,
    "c_count": run_c_count,
    "composed": run_composed,
    "a_loop": run_a,
    "b_cryotypes": run_b,
    "project": run_project,
    "count": run_count,
    "ratios": run_ratios,
    "compute_rss": run_compute_rss,
}


def copy_bandwidth(nbytes: int = 2**28, reps: int = 3) -> float:
    """Read + write bytes/s of np.copyto, measured now (the host's bandwidth drifts)."""
    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src)
    return 2 * src.nbytes / best_of(lambda: np.copyto(dst, src), reps)


def worker(a: argparse.Namespace) -> None:
    with PeakRSS() as rss:
        result = CONTENDERS[a.worker](a)
    result["peak_rss"] = max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if a.worker != "copy":
        result["bandwidth"] = copy_bandwidth()  # after the peak was read
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------


def spawn(env: dict[str, str], name: str, n: int, reps: int, **opts: Any) -> dict[str, Any]:
    cmd = [sys.executable, HERE, "--worker", name, "--n", str(n), "--reps", str(reps)]
    for key, value in opts.items():
        if value is True:
            cmd.append(f"--{key}")
        elif value not in (None, False):
            cmd += [f"--{key}", str(value)]
    busy0, own0, wall0 = _busy_cpu(), _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - wall0
    other = (_busy_cpu() - busy0) - (_children_cpu() - own0)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"contender {name} {opts} (n={n}) failed")
    result = json.loads(lines[-1][len("RESULT ") :])
    # CPU used by other processes of the machine meanwhile (other users' tests, ...)
    result["other_load"] = max(0.0, other) / (wall * (os.cpu_count() or 1))
    return result


def _busy_cpu() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat), 0 where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def blas_info(env: dict[str, str]) -> str:
    code = (
        "import numpy, json\n"
        "try:\n"
        "    from threadpoolctl import threadpool_info\n"
        "    i = [x for x in threadpool_info() if x['user_api'] == 'blas']\n"
        "    print(json.dumps([{k: x.get(k) for k in ('internal_api', 'version', 'architecture',"
        " 'num_threads')} for x in i]))\n"
        "except ImportError:\n"
        "    print('threadpoolctl not installed')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = "?"
    import dask
    import distributed

    return (
        f"{cpu}, {os.cpu_count()} cores, {mem}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"dask {dask.__version__}, distributed {distributed.__version__}"
    )


def plan(quick: bool) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(label, contender, n, options); rows appear in the table in this order."""
    rows: list[tuple[str, str, int, dict[str, Any]]] = [("copy 1 GiB", "copy", 0, {})]
    n = 100_000
    rows += [("(c) numpy GEMM f64", "c_gemm", n, {"dtype": "float64"})]
    if not quick:
        rows += [
            ("(a) loop over tilts", "a_loop", n, {}),
            ("(b) cryotypes per particle", "b_cryotypes", n, {}),
        ]
    rows += [
        ("project store", "project", n, {"how": "store"}),
        ("project_into numpy", "project", n, {"how": "into"}),
        ("count", "count", n, {}),
    ]
    n = 1_000_000
    rows += [
        ("(c) numpy GEMM f64", "c_gemm", n, {"dtype": "float64"}),
        ("(c) numpy GEMM f32", "c_gemm", n, {"dtype": "float32"}),
        ("(a) loop over tilts", "a_loop", n, {}),
        ("(b) cryotypes per particle", "b_cryotypes", n, {}),
        ("project store", "project", n, {"how": "store"}),
        ("project_into numpy", "project", n, {"how": "into"}),
        ("project_into numpy default chunks", "project", n, {"how": "into", "chunk": -1}),
        ("project_into numpy f32", "project", n, {"how": "into", "dtype": "float32"}),
        ("project_into zarr", "project", n, {"how": "into", "target": "zarr"}),
        ("count", "count", n, {}),
        ("count cluster", "count", n, {"on-cluster": True}),
    ]
    n = 2_000_000  # the composed path, as the README teaches it, against numpy in the same run
    rows += [
        ("(c) numpy GEMM f64", "c_gemm", n, {"dtype": "float64"}),
        ("(c) numpy chunked GEMM + count", "c_count", n, {}),
        ("composed: in_field_of_view(project).sum", "composed", n, {}),
        ("count", "count", n, {}),
        ("project compute", "project", n, {"how": "compute"}),
    ]
    if quick:
        return rows
    n = 1_000_000
    rows += [
        ("project to_zarr", "project", n, {"how": "to_zarr"}),
        ("project compute", "project", n, {"how": "compute"}),
        ("project concat", "project", n, {"how": "concat"}),
    ]
    for chunk in (10_000, 30_000, 300_000, 1_000_000):
        rows += [
            (f"project store chunk {chunk:.0e}", "project", n, {"how": "store", "chunk": chunk}),
            (f"project_into numpy chunk {chunk:.0e}", "project", n, {"how": "into", "chunk": chunk}),
            (f"count chunk {chunk:.0e}", "count", n, {"chunk": chunk}),
        ]
    rows += [
        ("project store f32", "project", n, {"how": "store", "dtype": "float32"}),
        ("count f32", "count", n, {"dtype": "float32"}),
        ("project store +blas1", "project", n, {"how": "store", "blas1": True}),
        ("project_into numpy +blas1", "project", n, {"how": "into", "blas1": True}),
        ("count +blas1", "count", n, {"blas1": True}),
        ("project compute cluster", "project", n, {"how": "compute", "on-cluster": True}),
        ("project to_zarr cluster", "project", n, {"how": "to_zarr", "on-cluster": True}),
        ("project_into zarr cluster", "project", n, {"how": "into", "target": "zarr", "on-cluster": True}),
    ]
    n = 10_000_000
    rows += [
        ("count 1e7", "count", n, {}),
        ("count 1e7 +blas1", "count", n, {"blas1": True}),
        ("count 1e7 cluster", "count", n, {"on-cluster": True}),
        # a cluster pays per task (scheduler round trips, 4 processes on 2 cores): fewer, bigger tasks
        ("count 1e7 chunk 1e6", "count", n, {"chunk": 1_000_000}),
        ("count 1e7 cluster chunk 1e6", "count", n, {"on-cluster": True, "chunk": 1_000_000}),
    ]
    return rows


def fmt_bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def measure(env: dict[str, str], a: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of the plan, ``a.rounds`` times interleaved; per row the fastest round."""
    rows = [r for r in plan(a.quick) if a.cluster or not r[3].get("on-cluster")]
    if a.only:
        rows = [r for r in rows if re.search(a.only, r[0])]
    if importlib.util.find_spec("threadpoolctl") is None:  # not a cryoxr dependency
        print("  threadpoolctl not installed: skipping the +blas1 rows", file=sys.stderr)
        rows = [r for r in rows if not r[3].get("blas1")]
    reps = 2 if a.quick else 3
    for n in [100_000] if a.quick else [100_000, 1_000_000]:
        r = spawn(env, "verify", n, 1, chunk=100_000 if n > 100_000 else 30_000)
        print(f"  verified against (c) at N={n:.0e}: {', '.join(r['checked'])}", file=sys.stderr)
    best: list[dict[str, Any] | None] = [None] * len(rows)
    for k in range(a.rounds):
        for i, (label, name, n, opts) in enumerate(rows):
            chunk = opts.get("chunk", 100_000)
            slow = n >= 10_000_000 or (a.quick and name in ("a_loop", "b_cryotypes"))
            r = spawn(env, name, n, 1 if slow else reps, **{"chunk": chunk, **opts})
            r.update(label=label, contender=name, n=n, chunk=chunk, options=opts)
            old = best[i]
            if old is None or r["seconds"] < old["seconds"]:
                r["peak_rss"] = max(r["peak_rss"], old["peak_rss"]) if old else r["peak_rss"]
                best[i] = r
            elif old is not None:
                old["peak_rss"] = max(r["peak_rss"], old["peak_rss"])
            print(f"  round {k + 1}/{a.rounds} {label} n={n:.0e}: {r['seconds']:.3f} s", file=sys.stderr)
    return [r for r in best if r is not None]


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown table: rates, ratios to the baselines at the same N, bandwidth, peak RSS."""
    base: dict[int, dict[str, float]] = {}
    for r in results:
        if r["contender"] == "copy":
            continue
        r["rate"] = r["n"] * T / r["seconds"]
        r["bw_fraction"] = r["bytes"] / r["seconds"] / r["bandwidth"]
        ref = base.setdefault(r["n"], {})
        if r["contender"] == "c_gemm" and r["options"].get("dtype") == "float64":
            ref["c"] = r["rate"]
        elif r["contender"] in ("a_loop", "b_cryotypes"):
            ref[r["contender"][0]] = r["rate"]
        elif r["contender"] == "c_count":
            ref["k"] = r["rate"]
    lines = [
        "| contender | N | chunk | M particle-tilts/s | s | graph ms | vs (c) | vs (a) | vs (b) "
        "| vs (c) GEMM + count | of copy BW | peak RSS | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["contender"] == "copy":
            lines.append(
                f"| copy 1 GiB (np.copyto) | | | | {r['seconds']:.3f} | | | | | | "
                f"{r['bandwidth'] / 1e9:.1f} GB/s | {fmt_bytes(r['peak_rss'])} | {100 * r['other_load']:.0f}% |"
            )
            continue
        ref = base.get(r["n"], {})
        ratios = [f"{r['rate'] / ref[k]:.2f}x" if k in ref else "" for k in "cab"]
        ratios.append(
            f"{r['rate'] / ref['k']:.2f}x" if "k" in ref and r["contender"] in ("count", "composed") else ""
        )
        chunk = f"{r['chunk']:.0e}" if r["contender"] in ("project", "count", "composed", "c_count") else ""
        graph = f"{1e3 * r['build']:.0f}" if "build" in r else ""
        lines.append(
            f"| {r['label']} | {r['n']:.0e} | {chunk} | {r['rate'] / 1e6:.0f} | {r['seconds']:.3f} | {graph} | "
            + " | ".join(ratios)
            + f" | {100 * r['bw_fraction']:.0f}% | {fmt_bytes(r['peak_rss'])} | {100 * r['other_load']:.0f}% |"
        )
    return lines


def drive(a: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    as_is = dict(os.environ)
    variants = [("as-is", as_is)]
    set_vars = {k: as_is[k] for k in BLAS_VARS if k in as_is}
    if set_vars or a.force_unset:
        variants.append(("OPENBLAS_* unset", {k: v for k, v in as_is.items() if k not in BLAS_VARS}))
    report: dict[str, Any] = {"machine": machine(), "openblas_env": set_vars, "variants": {}}
    print(f"machine: {report['machine']}")
    print(f"OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as-is: {set_vars or 'none set'}")
    for vname, env in variants:
        blas = blas_info(env)
        results = measure(env, a)
        print(f"\n### {vname}: BLAS {blas}\n")
        print("\n".join(table(results)), flush=True)
        report["variants"][vname] = {"blas": blas, "rows": results}
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


def merge(paths: list[str]) -> None:
    """Tables of earlier --json runs, per row the fastest run (the host's load drifts)."""
    variants: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    machines = set()
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        machines.add(report["machine"])
        for vname, v in report["variants"].items():
            rows = variants.setdefault(vname, {})
            for r in v["rows"]:
                key = (r["label"], r["n"])
                old = rows.get(key)
                if old is None or r["seconds"] < old["seconds"]:
                    if old is not None:
                        r["peak_rss"] = max(r["peak_rss"], old["peak_rss"])
                    rows[key] = r
                else:
                    old["peak_rss"] = max(r["peak_rss"], old["peak_rss"])
    print(f"machine: {'; '.join(sorted(machines))}")
    for vname, rows in variants.items():
        print(f"\n### {vname}: fastest of {len(paths)} run(s)\n")
        print("\n".join(table(list(rows.values()))))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="N = 1e5 and 1e6 only (~1 minute on an idle 2-core machine)"
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--no-cluster", dest="cluster", action="store_false", help="skip LocalCluster rows")
    p.add_argument("--only", help="run only the rows whose label matches this regular expression")
    p.add_argument("--rounds", type=int, help="interleaved rounds, fastest kept (default 1 quick, 2 full)")
    p.add_argument(
        "--merge", nargs="+", metavar="JSON", help="print the fastest per row of earlier --json runs"
    )
    p.add_argument("--force-unset", action="store_true", help="also run with OPENBLAS_* unset if none is set")
    p.add_argument(
        "--ratios",
        action="store_true",
        help="only the issue-17 rows: composed path and project().compute() against numpy, same process "
        "(N from --n, default 2e6; rounds from --reps, at least 3)",
    )
    # worker options (internal)
    p.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=100_000, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    p.add_argument("--how", default="store", help=argparse.SUPPRESS)
    p.add_argument("--target", default="numpy", help=argparse.SUPPRESS)
    p.add_argument("--blas1", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--on-cluster", dest="on_cluster", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rounds is None:
        a.rounds = 1 if a.quick else 2
    if a.merge:
        merge(a.merge)
    elif a.ratios and not a.worker:
        ratios(a)
    elif a.worker:
        worker(a)
    else:
        drive(a)


if __name__ == "__main__":
    main()
