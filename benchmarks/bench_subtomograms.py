"""Subtomogram averaging benchmark: cryoxr against a plain scipy loop on a memory map.

Run ``python benchmarks/bench_subtomograms.py --quick`` (a 256 MiB tomogram, 4,000
particles, about a minute) or without ``--quick`` (a 1 GiB tomogram, 20,000 particles).

Every contender extracts a ``--box`` cube around each particle, rotates it into the
reference frame (trilinear interpolation) and averages, in its own subprocess (so its peak
resident memory, VmHWM, is its own), with a warm page cache:

- ``loop``: the baseline -- ``np.memmap`` of the MRC data block and, per particle,
  ``scipy.ndimage.map_coordinates(order=1)`` at ``R @ u + p`` into a running sum;
- ``cryoxr mrc`` / ``cryoxr zarr``: ``cryoxr.average_subtomograms`` on ``open_image`` of
  the MRC file / an OME-Zarr copy (128^3 chunks, zstd), threaded scheduler, graph
  construction included in the time;
- ``cryoxr mrc 1 thread``: the same on one thread (how much comes from the kernel alone).

Each contender's average is compared with the loop's (max |difference|); "other load" is
the CPU time other processes used during the contender, in cores, from ``/proc/stat``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

QUICK = {"shape": (128, 1024, 512), "particles": 4_000}  # 256 MiB of float32
FULL = {"shape": (256, 1024, 1024), "particles": 20_000}  # 1 GiB of float32
PIXEL_SPACING = 10.0
CONTENDERS = ["loop", "cryoxr mrc", "cryoxr zarr", "cryoxr mrc 1 thread"]


def make_data(folder: Path, shape: tuple[int, int, int], n: int, box: int) -> None:
    """The tomogram (MRC and OME-Zarr) and the poses (npz) the contenders read."""
    import mrcfile
    from scipy.spatial.transform import Rotation

    import cryoxr

    nz, ny, nx = shape
    rng = np.random.default_rng(0)
    with mrcfile.new_mmap(folder / "tomo.mrc", shape=shape, mrc_mode=2, overwrite=True) as mrc:
        mrc.voxel_size = PIXEL_SPACING
        for z in range(0, nz, 16):
            mrc.data[z : z + 16] = rng.standard_normal((min(16, nz - z), ny, nx), dtype=np.float32)
    tomo = cryoxr.io.open_image(folder / "tomo.mrc")
    cryoxr.io.write_ome_zarr(tomo, folder / "tomo.ome.zarr", chunks=(128, 128, 128), levels=1)
    reach = int(np.ceil(np.sqrt(3) * (box // 2 + 1))) + 1
    position = reach + rng.uniform(0, 1, size=(n, 3)) * (np.array([nx, ny, nz]) - 2 * reach)
    np.savez(folder / "poses.npz", position=position, quat=Rotation.random(n, random_state=1).as_quat())


def _cpu_busy() -> float:
    """Seconds of CPU every process of the machine has used (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [float(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _peak_rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def _loop(folder: Path, position: np.ndarray, quat: np.ndarray, box: int) -> np.ndarray:
    import mrcfile
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    with mrcfile.open(folder / "tomo.mrc", header_only=True) as mrc:
        nx, ny, nz = int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)
    volume = np.memmap(folder / "tomo.mrc", dtype=np.float32, mode="r", offset=1024, shape=(nz, ny, nx))
    zyx = np.indices((box,) * 3).reshape(3, -1) - box // 2
    u = zyx[::-1].astype(np.float64)
    total = np.zeros(box**3)
    for p, matrix in zip(position, Rotation.from_quat(quat).as_matrix(), strict=True):
        total += ndimage.map_coordinates(volume, (matrix @ u + p[:, None])[::-1], order=1)
    return (total / len(position)).reshape((box,) * 3)


def _cryoxr(folder: Path, position: np.ndarray, quat: np.ndarray, box: int, name: str) -> np.ndarray:
    import dask

    import cryoxr

    path = folder / ("tomo.ome.zarr" if "zarr" in name else "tomo.mrc")
    workers = 1 if "1 thread" in name else os.cpu_count()
    with dask.config.set(scheduler="threads", num_workers=workers):
        tomo = cryoxr.io.open_image(path, experiment_id="tomo")
        poses = cryoxr.make_poseset(
            position, orientation=quat, experiment_id="tomo", pixel_spacing=PIXEL_SPACING
        )
        return np.asarray(cryoxr.average_subtomograms(tomo, poses, box_size=box).data.values)


def worker(name: str, folder: Path, box: int, repeats: int) -> dict[str, Any]:
    """Run one contender ``repeats`` times in this process; seconds, other load, peak RSS."""
    poses = np.load(folder / "poses.npz")
    position, quat = poses["position"], poses["quat"]
    seconds, other = [], []
    result = np.zeros(0)
    for _ in range(repeats):
        busy, own = _cpu_busy(), time.process_time()
        start = time.perf_counter()
        result = (
            _loop(folder, position, quat, box)
            if name == "loop"
            else _cryoxr(folder, position, quat, box, name)
        )
        wall = time.perf_counter() - start
        seconds.append(wall)
        other.append(max(0.0, (_cpu_busy() - busy) - (time.process_time() - own)) / wall)
    np.save(folder / f"{name.replace(' ', '_')}.npy", result)
    return {"seconds": seconds, "other_load": other, "peak_rss": _peak_rss()}


def _warm(path: Path) -> None:
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        with open(file, "rb") as f:
            while f.read(64 * 2**20):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB, 4,000 particles")
    parser.add_argument("--particles", type=int, default=None)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.box, args.repeats)))
        return
    setup = QUICK if args.quick else FULL
    n = args.particles or int(setup["particles"])  # type: ignore[call-overload]
    with tempfile.TemporaryDirectory(prefix="bench_subtomo_") as tmp:
        folder = Path(tmp)
        shape: tuple[int, int, int] = setup["shape"]  # type: ignore[assignment]
        make_data(folder, shape, n, args.box)
        print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        print(f"tomogram {shape[2]} x {shape[1]} x {shape[0]} float32 ({np.prod(shape) * 4 / 2**20:.0f} MiB), "
              f"{n:,} particles, box {args.box}, {os.cpu_count()} cores, median of {args.repeats}")  # fmt: skip
        rows: dict[str, dict[str, Any]] = {}
        for name in CONTENDERS:
            _warm(folder / ("tomo.ome.zarr" if "zarr" in name else "tomo.mrc"))
            command = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--data",
                str(folder),
                "--box",
                str(args.box),
            ]
            done = subprocess.run([*command, "--repeats", str(args.repeats)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr}")
            rows[name] = json.loads(done.stdout.splitlines()[-1])
        reference = np.load(folder / "loop.npy")
        loop_rate = n / statistics.median(rows["loop"]["seconds"])
        print(
            "\n| contender | particles/s | s (median) | vs loop | max abs diff vs loop | peak RSS | other load |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, row in rows.items():
            seconds = statistics.median(row["seconds"])
            diff = float(np.abs(np.load(folder / f"{name.replace(' ', '_')}.npy") - reference).max())
            row.update(rate=n / seconds, ratio=n / seconds / loop_rate, max_abs_diff=diff)
            print(
                f"| {name} | {n / seconds:,.0f} | {seconds:.2f} | {row['ratio']:.2f}x | {diff:.1e} | "
                f"{row['peak_rss'] / 2**20:.0f} MiB | {statistics.median(row['other_load']):.2f} |"
            )
        print(f"\nuptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        if args.json:
            args.json.write_text(
                json.dumps({"particles": n, "box": args.box, "shape": shape, "rows": rows}, indent=2)
            )


if __name__ == "__main__":
    main()
