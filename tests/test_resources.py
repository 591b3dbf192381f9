"""Resource bounds (issue 8, item 5): big jobs stream in bounded memory.

- a 10^7-particle x 41-tilt projection (3.3 GB of float32 output; the lazy poses alone
  would be 0.8 GB in memory) streamed into a zarr store;
- a 4 GiB float32 MRC tomogram converted to a two-level OME-Zarr pyramid.

How memory is bounded (the choice): each job runs in a fresh subprocess that reports
its own peak resident set size, ``VmHWM`` of ``/proc/self/status`` -- the kernel's exact
high-water mark, which sampling (psutil every few ms) can miss between samples -- and
the test asserts it stays under a fixed limit well below the data size. (Not
``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries it across ``fork`` + ``exec``, so
a child of a big pytest process reports the parent's size; ``VmHWM`` belongs to the
child's own address space.) An
``RLIMIT_AS`` cap was rejected: it counts address space, not memory, and this process
reserves gigabytes it never touches (glibc's 64 MiB malloc arena per thread, OpenBLAS
buffers per core, zarr's and dask's thread pools; the child reports ``VmPeak`` next to
its peak RSS to show the gap), so a cap tight enough to prove streaming would kill
correct runs on machines with more cores, and a loose one would prove nothing.

Both tests write several GB: they skip (with the reason) below 12 GB of free disk and
delete their files at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr

import cryoxr

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
MIB = 2**20
GIB = 2**30

#: the projection: 10^7 particles, 41 tilts, float32, 10^5 particles per chunk
N, T, CHUNK = 10_000_000, 41, 100_000
TOMO = (4096, 4096, 1000)
#: below the lazy poses alone (0.8 GB), let alone the 3.3 GB output; measured ~0.35 GB here
PROJECTION_RSS_LIMIT = 768 * MIB

#: the tomogram: 256 x 2048 x 2048 float32 = 4 GiB
VOLUME = (256, 2048, 2048)
#: a quarter of the volume; measured ~0.5 GB here (two threads, each a block of 128 planes x 128 rows)
CONVERSION_RSS_LIMIT = 1 * GIB


def lazy_poses() -> Any:
    """10^7 seeded poses drawn chunk by chunk by dask: nothing is held in memory."""
    rs = da.random.RandomState(20261125)
    position = rs.random_sample((N, 3), chunks=(CHUNK, 3)) * np.asarray(TOMO, dtype=np.float64)
    shift = rs.normal(0.0, 2.0, size=(N, 3), chunks=(CHUNK, 3))
    orientation = da.concatenate(
        [da.zeros((N, 3), chunks=(CHUNK, 3)), da.ones((N, 1), chunks=(CHUNK, 1))], axis=1
    )
    return cryoxr.make_poseset(
        position, shift=shift, orientation=orientation, experiment_id="TS_01", pixel_spacing=1.35
    )


def projected() -> Any:
    model = cryoxr.make_projection_model(
        rotation_y=np.linspace(-60, 60, T), rotation_z=85.0, experiment_id="TS_01", pixel_spacing=1.35
    )
    return cryoxr.project(
        lazy_poses(), model, tomogram_dimensions=TOMO, tilt_image_center=(2048, 2048), dtype=np.float32
    )


REPORT = r"""
def report(start):
    import json, time
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    kib = lambda key: int(status[key].split()[0]) * 1024
    print(json.dumps({"seconds": time.perf_counter() - start, "maxrss": kib("VmHWM"), "vmpeak": kib("VmPeak")}))
"""

PROJECT_CHILD = (
    REPORT
    + r"""
import sys, time
import xarray as xr
sys.path.insert(0, sys.argv[1])
from test_resources import projected
from cryoxr.io._atomic import atomic_path
start = time.perf_counter()
with atomic_path(sys.argv[2], directory=True) as tmp:  # as `cryoxr project` does
    xr.Dataset({"projected": projected()}).to_zarr(
        tmp, mode="w-", zarr_format=3, encoding={"projected": {"compressors": None}}
    )
report(start)
"""
)

CONVERT_CHILD = (
    REPORT
    + r"""
import sys, time
from cryoxr.io.mrc import read_mrc
from cryoxr.io.ome_zarr import write_ome_zarr
start = time.perf_counter()
write_ome_zarr(read_mrc(sys.argv[1]), sys.argv[2], levels=2, compressor=None)
report(start)
"""
)


def run_measured(script: str, *args: str, timeout: float = 300) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]  # a kill (OOM, signal) fails here
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def need_disk(folder: Path, gigabytes: float) -> None:
    free = shutil.disk_usage(folder).free
    if free < gigabytes * 1e9:
        pytest.skip(f"needs {gigabytes:.0f} GB free in {folder}, found {free / 1e9:.1f} GB")


def test_projection_of_ten_million_particles_streams_to_zarr(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    need_disk(tmp_path, 12)
    out = tmp_path / "projected.zarr"
    try:
        result = run_measured(PROJECT_CHILD, str(HERE), str(out))
        stored = zarr.open_array(out / "projected", mode="r")
        assert stored.shape == (N, T, 2)
        assert stored.dtype == np.float32
        expected = projected().data
        for rows in (slice(0, 1000), slice(N // 2, N // 2 + 1000), slice(N - 1000, N)):
            np.testing.assert_array_equal(stored[rows], expected[rows].compute())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"\nprojection {N:,} x {T} -> zarr ({N * T * 2 * 4 / 1e9:.1f} GB): {result['seconds']:.1f} s, "
        f"peak RSS {result['maxrss'] / MIB:.0f} MiB (limit {PROJECTION_RSS_LIMIT / MIB:.0f} MiB), "
        f"VmPeak {result['vmpeak'] / MIB:.0f} MiB"
    )
    assert result["maxrss"] < PROJECTION_RSS_LIMIT


def make_big_mrc(path: Path) -> None:
    """A 4 GiB float32 MRC, sparse: one plane in 8 holds data, so every 128-cube chunk does.

    Written with plain ``write`` calls at offsets (no memory map), so this process's
    memory does not grow either.
    """
    import mrcfile

    nz, ny, nx = VOLUME
    with mrcfile.new_mmap(path, shape=VOLUME, mrc_mode=2, overwrite=True) as mrc:
        mrc.voxel_size = 10.0
        offset = int(mrc.header.nbytes + mrc.extended_header.nbytes)
    base = (np.arange(ny * nx, dtype=np.float32) % 997).reshape(ny, nx)
    with open(path, "r+b") as f:
        for z in range(0, nz, 8):
            f.seek(offset + z * base.nbytes)
            f.write((base + z).tobytes())
    assert path.stat().st_size == offset + nz * base.nbytes


def test_four_gib_tomogram_converts_to_ome_zarr(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    need_disk(tmp_path, 12)
    src, dst = tmp_path / "big.mrc", tmp_path / "big.ome.zarr"
    try:
        start = time.perf_counter()
        make_big_mrc(src)
        made = time.perf_counter() - start
        result = run_measured(CONVERT_CHILD, str(src), str(dst))
        levels = [zarr.open_array(dst / str(level), mode="r") for level in (0, 1)]
        assert levels[0].shape == VOLUME
        assert levels[1].shape == tuple(n // 2 for n in VOLUME)
        base = (np.arange(VOLUME[1] * VOLUME[2], dtype=np.float32) % 997).reshape(VOLUME[1:])
        for z in (0, 1, 8, 129, 248):
            np.testing.assert_array_equal(levels[0][z], base + z if z % 8 == 0 else 0)
        # level 1 plane 0 is the mean of planes 0 (data) and 1 (a hole)
        window_sums = base[:4:2, :4:2] + base[1:4:2, :4:2] + base[:4:2, 1:4:2] + base[1:4:2, 1:4:2]
        np.testing.assert_allclose(np.asarray(levels[1][0, :2, :2]), np.asarray(window_sums / 8), rtol=1e-6)
    finally:
        src.unlink(missing_ok=True)
        shutil.rmtree(dst, ignore_errors=True)
    print(
        f"\nconversion of a {np.prod(VOLUME) * 4 / GIB:.0f} GiB MRC to OME-Zarr (2 levels, uncompressed): "
        f"{result['seconds']:.1f} s (+{made:.1f} s to make the MRC), peak RSS {result['maxrss'] / MIB:.0f} MiB "
        f"(limit {CONVERSION_RSS_LIMIT / MIB:.0f} MiB), VmPeak {result['vmpeak'] / MIB:.0f} MiB"
    )
    assert result["maxrss"] < CONVERSION_RSS_LIMIT
