"""Image IO benchmark: cryoxr against raw ``mrcfile.mmap`` + numpy, ``mrcfile.open`` and plain zarr.

Run ``python benchmarks/bench_image_io.py --quick`` (a 256 MiB tomogram, < 1 min) or without
``--quick`` (a 4 GiB float32 tomogram, 1024^3). Every method runs in its own subprocess, so
that its peak resident memory (the kernel's high-water mark, getrusage) is its own. Times are medians
over repeats, with a warm page cache; "open + ..." times include opening the file each time.

Printed: access times and their ratio to raw mmap, MRC -> OME-Zarr conversion throughput,
compression ratio and peak RSS against a plain zarr write of the same array, and the chunk
trade-off of the OME-Zarr store (128^3 against 256^3 chunks).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

QUICK_SHAPE = (256, 512, 512)  # 256 MiB of float32
FULL_SHAPE = (1024, 1024, 1024)  # 4 GiB of float32
ENGINE_SHAPE = (256, 1024, 1024)  # 1 GiB of float32: the engine's open + z-slice (--engine-only)
PIXEL_SPACING = 13.48


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def make_mrc(path: Path, shape: tuple[int, int, int]) -> None:
    """A float32 tomogram-like volume (noise on a smooth gradient), written slab by slab."""
    import mrcfile

    nz, ny, nx = shape
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 2, 2), np.float32))
        mrc.header.nx, mrc.header.ny, mrc.header.nz = nx, ny, nz
        mrc.header.mx, mrc.header.my, mrc.header.mz = nx, ny, nz
        mrc.header.cella = (PIXEL_SPACING * nx, PIXEL_SPACING * ny, PIXEL_SPACING * nz)
    rng = np.random.default_rng(0)
    slab = 16
    noise = rng.standard_normal((slab, ny, nx), dtype=np.float32)
    ramp = np.linspace(-1, 1, nx, dtype=np.float32)
    with open(path, "r+b") as f:
        f.truncate(1024)
        f.seek(1024)
        for z in range(0, nz, slab):
            f.write((noise[: min(slab, nz - z)] + ramp * (z / nz)).tobytes())


def warm(path: Path) -> None:
    """Read a file (or every file of a store) once, into the page cache."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        with open(file, "rb") as f:
            while f.read(64 * 2**20):
                pass


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (clean pages; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_read_seconds(path: Path) -> float:
    """Seconds to read a cold file sequentially (16 MiB ``readinto``): the disk's rate."""
    evict(path)
    buffer = memoryview(bytearray(16 * 2**20))
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
    return time.perf_counter() - t0


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------
# workers (run in subprocesses)
# ----------------------------------------------------------------------------------------
def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (the kernel's high-water mark).

    Exact, and no sampling thread competes with the code being timed. Mapped file pages
    count, as they do in ``ps`` and in a cgroup's memory.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _median(fn: Callable[[], Any], repeats: int, budget: float = 0.5) -> float:
    """Median time of up to ``repeats`` calls (at least 3), stopping after ``budget`` seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _openers(method: str, path: str) -> Callable[[], Any]:
    """A function that opens the file and returns an object with ``zslice/yslice/box/mean``."""
    import mrcfile
    import xarray as xr

    from cryoxr.io.mrc import read_mrc
    from cryoxr.io.ome_zarr import read_ome_zarr

    class Raw:
        def __init__(self, data: np.ndarray) -> None:
            self.data = data
            self.nz, self.ny, self.nx = data.shape

        def zslice(self) -> np.ndarray:
            return np.array(self.data[self.nz // 2])

        def yslice(self) -> np.ndarray:
            return np.array(self.data[:, self.ny // 2])

        def box(self) -> np.ndarray:
            z, y, x = self.nz // 2, self.ny // 2, self.nx // 2
            return np.array(self.data[z : z + 64, y : y + 64, x : x + 64])

        def mean(self) -> float:
            return float(self.data.mean())

        mean_typed = mean

    class Cryo:
        def __init__(self, image: Any) -> None:
            self.da = image if isinstance(image, xr.DataArray) else image.data  # from xarray, or an Image
            self.nz, self.ny, self.nx = image.shape

        # in memory, owning its bytes, copied once: dask's result already is (a copy of
        # it would be a second one), a view of the file (chunks=None) is copied here
        def zslice(self) -> np.ndarray:
            return np.require(self.da.isel(z=self.nz // 2).values, requirements="O")

        def yslice(self) -> np.ndarray:
            return np.require(self.da.isel(y=self.ny // 2).values, requirements="O")

        def box(self) -> np.ndarray:
            z, y, x = self.nz // 2, self.ny // 2, self.nx // 2
            box = self.da.isel(z=slice(z, z + 64), y=slice(y, y + 64), x=slice(x, x + 64))
            return np.require(box.values, requirements="O")

        def mean(self) -> float:
            return float(self.da.mean(skipna=False))  # xarray's default is nanmean

        def mean_typed(self) -> float:
            return float(self.da.mean())  # as a user types it: xarray's skipna default

    def mmap_open() -> Raw:
        mrc = mrcfile.mmap(path, mode="r")
        return Raw(mrc.data)

    def full_open() -> Raw:
        with mrcfile.open(path, mode="r") as mrc:
            return Raw(np.asarray(mrc.data))

    table: dict[str, Callable[[], Any]] = {
        "raw mrcfile.mmap + numpy": mmap_open,
        "mrcfile.open (full read)": full_open,
        "cryoxr read_mrc (dask)": lambda: Cryo(read_mrc(path)),
        "cryoxr read_mrc(chunks=None)": lambda: Cryo(read_mrc(path, chunks=None)),
        "cryoxr read_mrc(chunks=(128, 128, -1))": lambda: Cryo(read_mrc(path, chunks=(128, 128, -1))),
        "xr.open_dataarray(engine='cryoxr')": lambda: Cryo(xr.open_dataarray(path, engine="cryoxr")),
        "cryoxr read_ome_zarr (dask)": lambda: Cryo(read_ome_zarr(path)),
        "cryoxr read_ome_zarr(chunks=None)": lambda: Cryo(read_ome_zarr(path, chunks=None)),
    }
    return table[method]


def worker_access(method: str, path: str, repeats: int) -> dict[str, Any]:
    opener = _openers(method, path)
    out: dict[str, Any] = {}
    for op in ("zslice", "yslice", "box"):
        getattr(opener(), op)()  # warm imports and caches
        out[f"open + {op}"] = _median(lambda op=op: getattr(opener(), op)(), 20 * repeats, budget=1.0)
    if "zarr" not in method:
        handle = opener()
        handle.mean()  # warm
        out["mean (warm)"] = _median(handle.mean, 5)
        handle.mean_typed()  # warm
        out["mean as typed (warm)"] = _median(handle.mean_typed, 5)
        if "full read" not in method:  # cold: open + mean of a file evicted from the page cache
            del handle
            cold = []
            for _ in range(3):
                gc.collect()  # pages still mapped by a dropped memmap cannot be evicted
                evict(Path(path))
                t0 = time.perf_counter()
                opener().mean()
                cold.append(time.perf_counter() - t0)
            out["mean (cold)"] = statistics.median(cold)
    if method == "cryoxr read_mrc (dask)":
        # dask's own fixed cost: compute one plane of an in-memory array through from_array
        import dask.array as da

        plane = da.from_array(np.zeros((32, 256, 256), np.float32), chunks=(16, 256, 256))[5]
        out["dask floor"] = _median(plane.compute, 20 * repeats, budget=1.0)
    out["peak_rss"] = peak_rss()
    return out


def worker_convert(method: str, src: str, dst: str, chunk: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    if method.startswith("cryoxr"):
        from cryoxr.io.mrc import read_mrc
        from cryoxr.io.ome_zarr import write_ome_zarr

        levels = 4 if "4 levels" in method else 1
        write_ome_zarr(read_mrc(src), dst, levels=levels, chunks=(chunk,) * 3, version="0.5")
    else:
        import mrcfile
        import zarr

        with mrcfile.mmap(src, mode="r") as mrc:
            array = zarr.create_array(dst, shape=mrc.data.shape, chunks=(chunk,) * 3, dtype=mrc.data.dtype)
            array[:] = mrc.data
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss": peak_rss(), "stored": tree_bytes(Path(dst))}


def engine_floor(path: Path, repeats: int) -> dict[str, float]:
    """Open + z-slice, interleaved in one process (each call's median over ``repeats``):
    raw ``mrcfile.mmap``, the cryoxr engine, and xarray's own floor: ``open_dataarray``
    through a backend that returns an in-memory Dataset of the same shape (no file, no
    header), bare and with the same three indexed coordinates in Å.

    Every contender copies the plane once into memory it owns, as :func:`_openers` does.
    """
    import mrcfile
    import xarray as xr
    from xarray.backends import BackendEntrypoint

    from cryoxr.image import image_coords

    with mrcfile.mmap(path, mode="r") as mrc:
        shape = tuple(int(n) for n in mrc.data.shape)
    nz = shape[0]
    zeros = np.broadcast_to(np.zeros((), np.float32), shape)  # no memory, same shape

    class InMemory(BackendEntrypoint):
        coords = False

        def open_dataset(self, filename_or_obj: Any, *, drop_variables: Any = None) -> xr.Dataset:
            data = xr.DataArray(zeros, dims=("z", "y", "x"), name="t")
            if self.coords:
                data = data.assign_coords(image_coords(shape, ("z", "y", "x"), PIXEL_SPACING))
            return data.to_dataset()

    class InMemoryCoords(InMemory):
        coords = True

    def raw() -> np.ndarray:
        mrc = mrcfile.mmap(path, mode="r")
        return np.array(mrc.data[nz // 2])

    def engine() -> np.ndarray:
        return np.require(xr.open_dataarray(path, engine="cryoxr").isel(z=nz // 2).values, requirements="O")

    def floor() -> np.ndarray:
        return np.require(xr.open_dataarray("-", engine=InMemory).isel(z=nz // 2).values, requirements="O")

    def floor_coords() -> np.ndarray:
        return np.require(
            xr.open_dataarray("-", engine=InMemoryCoords).isel(z=nz // 2).values, requirements="O"
        )

    contenders = {
        "raw mrcfile.mmap + numpy": raw,
        "xr.open_dataarray(engine='cryoxr')": engine,
        "xarray floor: in-memory backend": floor,
        "xarray floor: in-memory backend + coords": floor_coords,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()  # imports, caches
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def run_worker(args: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(args)], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"worker {args} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------
def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def ms(s: float) -> str:
    return f"{s * 1e3:,.1f} ms" if s < 10 else f"{s:,.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 4 GiB")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="only open + z-slice of the engine against raw mmap and xarray's floor, one process, "
        "1 GiB volume (256 x 1024 x 1024), 500 interleaved repeats",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = json.loads(args.worker)
        result = worker_access(*rest) if kind == "access" else worker_convert(*rest)
        print(json.dumps(result))
        return

    shape = ENGINE_SHAPE if args.engine_only else QUICK_SHAPE if args.quick else FULL_SHAPE
    repeats = args.repeats or (500 if args.engine_only else 20 if args.quick else 10)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="cryoxr-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"tomo_{'x'.join(map(str, shape))}.mrc"
    nbytes = int(np.prod(shape)) * 4
    if not src.exists() or src.stat().st_size != 1024 + nbytes:
        t0 = time.perf_counter()
        make_mrc(src, shape)
        print(f"wrote {src} ({mib(nbytes)}) in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"machine: {os.cpu_count()} cores; volume {shape} float32 = {mib(nbytes)}", flush=True)
    if args.engine_only:
        warm(src)
        load = os.getloadavg()[0]
        floor = engine_floor(src, repeats)
        raw_time = floor["raw mrcfile.mmap + numpy"]
        print(f"\n## Open + z-slice, one process, median of {repeats} interleaved repeats (load {load:.1f} -> "
              f"{os.getloadavg()[0]:.1f})\n")  # fmt: skip
        print("| method | open + z-slice | vs raw mmap |\n|---|---|---|")
        for name, seconds in floor.items():
            print(f"| {name} | {seconds * 1e3:.3f} ms | {seconds / raw_time:.2f}x |")
        engine_time = floor["xr.open_dataarray(engine='cryoxr')"]
        xarray_floor = floor["xarray floor: in-memory backend + coords"]
        print(
            f"\n- engine / raw mmap: {engine_time / raw_time:.2f}x (target <= 5x); "
            f"xarray's floor with the same coords: {xarray_floor / raw_time:.2f}x; "
            f"cryoxr's own part: {(engine_time - xarray_floor) * 1e3:.2f} ms"
        )
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
        return

    # -- conversion ------------------------------------------------------------------------
    conversions: dict[str, dict[str, Any]] = {}
    for method, chunk in [
        ("plain zarr (zarr.create_array, default codecs)", 128),
        ("cryoxr write_ome_zarr, 1 level", 128),
        ("cryoxr write_ome_zarr, 4 levels", 128),
        ("cryoxr write_ome_zarr, 1 level, 256^3 chunks", 256),
    ]:
        dst = folder / f"conv_{len(conversions)}.zarr"
        shutil.rmtree(dst, ignore_errors=True)
        warm(src)
        conversions[method] = run_worker(["convert", method, str(src), str(dst), chunk])
        conversions[method]["dst"] = str(dst)
        print(f"  converted: {method}: {conversions[method]['seconds']:.1f} s", flush=True)

    # -- access ----------------------------------------------------------------------------
    access: dict[str, dict[str, Any]] = {}
    zarr128 = conversions["cryoxr write_ome_zarr, 1 level"]["dst"]
    zarr256 = conversions["cryoxr write_ome_zarr, 1 level, 256^3 chunks"]["dst"]
    for method, path in [
        ("raw mrcfile.mmap + numpy", src),
        ("mrcfile.open (full read)", src),
        ("cryoxr read_mrc (dask)", src),
        ("cryoxr read_mrc(chunks=None)", src),
        ("cryoxr read_mrc(chunks=(128, 128, -1))", src),
        ("xr.open_dataarray(engine='cryoxr')", src),
        ("cryoxr read_ome_zarr (dask)", zarr128),
        ("cryoxr read_ome_zarr(chunks=None)", zarr128),
        ("cryoxr read_ome_zarr (dask), 256^3", zarr256),
    ]:
        warm(Path(path))
        access[method] = run_worker(["access", method.removesuffix(", 256^3"), str(path), repeats])
        print(f"  measured: {method}", flush=True)

    # -- tables ------------------------------------------------------------------------------
    raw = access["raw mrcfile.mmap + numpy"]
    ops = [
        "open + zslice",
        "open + yslice",
        "open + box",
        "mean (warm)",
        "mean as typed (warm)",
        "mean (cold)",
    ]
    print("\n## Access (median; ratio = time / raw mmap time, lower is better)\n")
    print("| method | " + " | ".join(ops) + " | peak RSS |")
    print("|---|" + "---|" * (len(ops) + 1))
    for method, row in access.items():
        cells = [f"{ms(row[op])} ({row[op] / raw[op]:.2f}x)" if op in row else "-" for op in ops]
        print(f"| {method} | " + " | ".join(cells) + f" | {mib(row['peak_rss'])} |")
    print("\n## MRC -> OME-Zarr conversion\n")
    plain = conversions["plain zarr (zarr.create_array, default codecs)"]
    print(
        "| method | time | throughput (input MB/s) | compression (input / stored, all levels) | peak RSS | time vs plain zarr |"
    )
    print("|---|---|---|---|---|---|")
    for method, row in conversions.items():
        print(
            f"| {method} | {row['seconds']:.1f} s | {nbytes / row['seconds'] / 1e6:,.0f} MB/s | "
            f"{nbytes / row['stored']:.3f} | {mib(row['peak_rss'])} | {row['seconds'] / plain['seconds']:.2f}x |"
        )
    disk = statistics.median(disk_read_seconds(src) for _ in range(3))
    print(f"\ndisk: a cold sequential read of the MRC takes {disk:.2f} s ({nbytes / disk / 1e9:.2f} GB/s)")
    cryo = access["cryoxr read_mrc (dask)"]
    print("\n## Targets\n")
    print(
        f"- open + z-slice, cryoxr (dask) / raw mmap: {cryo['open + zslice'] / raw['open + zslice']:.1f}x (target <= 5x)"
    )
    print(
        f"- whole-volume mean, numpy-on-memmap speed / cryoxr: {raw['mean (warm)'] / cryo['mean (warm)']:.0%} (target >= 70%)"
    )
    # the disk's rate: the best of a sequential read and numpy's cold memory-map mean
    disk_rate = nbytes / min(disk, raw["mean (cold)"])
    print(
        f"- cold whole-volume mean, cryoxr / disk rate: {nbytes / cryo['mean (cold)'] / disk_rate:.0%} (target >= 90%; "
        f"disk rate {disk_rate / 1e9:.2f} GB/s = best of sequential read and numpy cold mean)"
    )
    print(
        f"- dask's fixed cost of computing one in-memory plane: {ms(cryo['dask floor'])} "
        f"= {cryo['dask floor'] / raw['open + zslice']:.1f}x the raw open + z-slice"
    )
    # any dask path pays at least dask's fixed cost plus the raw read itself
    bound = (cryo["dask floor"] + raw["open + zslice"]) / raw["open + zslice"]
    print(f"- so no open + z-slice through dask can be below {bound:.1f}x raw mmap on this machine")
    none = access["cryoxr read_mrc(chunks=None)"]
    print(
        f"- open + z-slice without dask, read_mrc(chunks=None) / raw mmap: "
        f"{none['open + zslice'] / raw['open + zslice']:.1f}x"
    )
    engine = access["xr.open_dataarray(engine='cryoxr')"]
    print(
        f"- open + z-slice, xr.open_dataarray(engine='cryoxr') / raw mmap: "
        f"{engine['open + zslice'] / raw['open + zslice']:.1f}x (target <= 5x)"
    )
    print(
        f"- .mean() as typed (skipna default), cryoxr read_mrc (dask) / numpy on a memory map: "
        f"{cryo['mean as typed (warm)'] / raw['mean (warm)']:.2f}x (target <= 2x)"
    )
    peak = conversions["cryoxr write_ome_zarr, 4 levels"]["peak_rss"]
    print(f"- conversion peak RSS (4 levels): {mib(peak)} (target < 1 GiB)")
    if args.dir is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
