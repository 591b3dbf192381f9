"""Benchmark of :func:`cryoxr.reconstruct_particle`: particle maps from tilt series (issue 16).

Each contender runs in a fresh subprocess, so its peak RSS is its own; inputs are seeded
and the same in every subprocess. The data: one tilt series of ``T = 41`` tilts
(``IMAGE`` pixels, 2.7 Å) written as MRC and as OME-Zarr, N particles at random
positions and orientations, RELION 5 optics columns (defocus, dose) on the model.

Contenders (N particles x 41 tilts, box 64, RELION's pipeline: CTF- and
dose-premultiplied subtilts, CTF² weights, C1, merged + halves):

- ``read once``: every tilt image read once from the MRC file (the bound on reading:
  what any extraction must read at least).
- ``insert only``: :func:`reconstruct_particle` on subtilts already in memory (numpy):
  the back-projection itself, no extraction.
- ``mrc``, ``zarr``: ``extract_subtilts(mode="relion")`` from the lazily opened MRC /
  OME-Zarr tilt series, then ``reconstruct_particle``, one dask graph, threads.
- ``mrc cluster``: the same on a ``distributed.LocalCluster`` (2 workers x 1 thread);
  its merged map is compared with the threaded one.
- ``mrc 10N``: ten times the particles, for the peak-RSS ratio (memory must not grow
  with the number of particles: a tree reduction of per-chunk sums).
- ``peer``: zarr-particle-tools (RELION 5's reconstruct_particle re-implemented in
  Python), run from its own virtual environment with ``--peer-python`` on a RELION 5
  project written from the same inputs; not run without it.

Usage::

    python benchmarks/bench_reconstruction.py --quick     # N = 500 (and 5,000 for RSS)
    python benchmarks/bench_reconstruction.py             # N = 10,000 (and 100,000)
    python benchmarks/bench_reconstruction.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

T = 41
BOX = 64
PIXEL = 2.7
IMAGE = (2048, 2048)  # (ny, nx)
TOMO = (2048, 2048, 600)  # (x, y, z) in tilt-image pixels
HERE = os.path.abspath(__file__)
#: the peer's venv that bench_extraction.py installs (zarr-particle-tools pins zarr < 3)
PEER_PYTHON = Path("/tmp/cryoxr-bench-peer-venv/bin/python")


def make_model() -> Any:
    import cryoxr

    angles = np.linspace(-60.0, 60.0, T)
    order = np.argsort(np.abs(angles), kind="stable")
    dose = np.empty(T)
    dose[order] = np.arange(T) * 3.0  # dose-symmetric: the 0-degree tilt first
    defocus = 30000.0 + 200.0 * np.arange(T)
    return cryoxr.make_projection_model(
        rotation_y=angles, rotation_z=85.0, experiment_id="TS_01", pixel_spacing=PIXEL,
        tomogram_size_x=TOMO[0], tomogram_size_y=TOMO[1], tomogram_size_z=TOMO[2],
        tilt_image_center_x=IMAGE[1] // 2, tilt_image_center_y=IMAGE[0] // 2,
        defocus_u=defocus, defocus_v=defocus + 500.0, defocus_angle=30.0, voltage=300.0,
        spherical_aberration=2.7, amplitude_contrast=0.1, pre_exposure=dose, defocus_handedness=1.0,
    )  # fmt: skip


def make_poses(n: int) -> Any:
    from scipy.spatial.transform import Rotation

    import cryoxr

    rng = np.random.default_rng(7)
    # inside the field of view of the 60-degree tilts, so most tilts see every particle
    low = np.array([TOMO[0] * 0.3, TOMO[1] * 0.1, TOMO[2] * 0.3])
    high = np.array([TOMO[0] * 0.7, TOMO[1] * 0.9, TOMO[2] * 0.7])
    return cryoxr.make_poseset(
        rng.uniform(low, high, size=(n, 3)),
        orientation=Rotation.random(n, rng=rng),
        experiment_id="TS_01",
        pixel_spacing=PIXEL,
        extra={"rlnRandomSubset": rng.integers(1, 3, n)},
    )


def write_inputs(folder: Path) -> None:
    """The tilt series as MRC and OME-Zarr (noise: the timing does not depend on content)."""
    import cryoxr
    from cryoxr.io import write_mrc, write_ome_zarr

    rng = np.random.default_rng(3)
    stack = rng.standard_normal((T, *IMAGE), dtype=np.float32)
    image = cryoxr.Image.from_array(stack, pixel_spacing=PIXEL, experiment_id="TS_01", stack=True)
    write_mrc(image, folder / "TS_01.mrc", overwrite=True)
    write_ome_zarr(image, folder / "TS_01.ome.zarr", levels=1, overwrite=True)


def maps_graph(series: Any, n: int) -> Any:
    import cryoxr
    from cryoxr.reconstruction import task_particles

    model, poses = make_model(), make_poses(n)
    per_task = task_particles(T, BOX)  # one chunking for every step: dask finishes block after block
    sub = cryoxr.extract_subtilts(
        series,
        cryoxr.project(poses, model, chunks=per_task),
        box_size=BOX,
        mode="relion",
        projection_model=model,
        defocus=cryoxr.particle_defocus(poses, model, chunks=per_task),
        particles_per_task=per_task,
    )
    return cryoxr.reconstruct_particle(sub, poses, model)


def run_one(name: str, folder: Path, n: int) -> dict[str, Any]:
    """One contender, in this (fresh) process."""
    import dask

    import cryoxr
    from cryoxr.io import read_mrc, read_ome_zarr

    out: dict[str, Any] = {"name": name, "n": n}
    if name == "read once":
        series = read_mrc(folder / "TS_01.mrc")
        start = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            total = float(series.data.data.sum(dtype=np.float64).compute())
        out["seconds"] = time.perf_counter() - start
        out["check"] = total
    elif name == "insert only":
        import xarray as xr

        rng = np.random.default_rng(5)
        model, poses = make_model(), make_poses(n)
        patches = rng.standard_normal((n, T, BOX, BOX), dtype=np.float32)
        sub = xr.DataArray(patches, dims=("particle", "image", "y", "x"), attrs={"pixel_spacing": PIXEL})
        start = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            cryoxr.reconstruct_particle(sub, poses, model).compute()
        out["seconds"] = time.perf_counter() - start
    elif name in ("mrc", "zarr", "mrc 10N", "mrc cluster"):
        series = (
            read_mrc(folder / "TS_01.mrc") if name != "zarr" else read_ome_zarr(folder / "TS_01.ome.zarr")
        )
        maps = maps_graph(series, n)
        start = time.perf_counter()
        if name == "mrc cluster":
            from distributed import Client, LocalCluster

            with (
                LocalCluster(
                    n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=50
                ) as cluster,
                Client(cluster) as client,
            ):
                start = time.perf_counter()
                merged = client.compute(maps.merged.data).result()
        else:
            with dask.config.set(scheduler="threads"):
                merged = maps.merged.data.compute()
        out["seconds"] = time.perf_counter() - start
        np.save(folder / f"{name.replace(' ', '_')}_{n}.npy", merged)
    else:
        raise SystemExit(f"unknown contender {name!r}")
    out["peak_rss_mb"] = own_peak_rss_mb()
    return out


def own_peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM): ``ru_maxrss`` keeps the parent's RSS at
    the fork as a floor (here the driver that wrote a 688 MB tilt series)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def write_relion_project(folder: Path, model: Any, poses: Any, sizes: dict[str, Any]) -> None:
    """A RELION 5 project beside ``TS_01.mrc`` as the peer reads it: ``N@TS_01.mrc`` tilt
    names, and the optics-group name, original pixel size and binning RELION's own
    ``tomograms.star`` carries."""
    import starfile

    from cryoxr import io

    model = model.assign(rlnMicrographName=[f"{i + 1}@TS_01.mrc" for i in range(len(model))])
    io.write_relion_tilt_series(model, folder / "tomograms.star", tomograms=sizes, overwrite=True)
    io.write_relion_particles(poses, folder / "particles.star", version=5, tomograms=sizes, overwrite=True)
    table = starfile.read(folder / "tomograms.star", always_dict=True)["global"]
    table["rlnOpticsGroupName"] = "opticsGroup1"  # the name write_relion_particles gives its optics group
    table["rlnMicrographOriginalPixelSize"] = float(model.pixel_spacing.iloc[0])
    table["rlnTomoTomogramBinning"] = 1.0
    starfile.write({"global": table}, folder / "tomograms.star", overwrite=True)


def run_peer(peer_python: Path, folder: Path, box: int, *, no_ctf: bool = False) -> dict[str, Any]:
    """zarr-particle-tools' ``reconstruct local`` (it extracts, then back-projects), timed,
    with the peak RSS of its process tree."""
    command = [str(peer_python.parent / "zarr-particle-reconstruct"), "local"]
    command += ["--particles-starfile", "particles.star", "--tomograms-starfile", "tomograms.star"]
    command += ["--tiltseries-relative-dir", str(folder), "--box-size", str(box)]
    command += ["--output-dir", str(folder / "peer"), "--overwrite", *(["--no-ctf"] if no_ctf else [])]
    wrapper = (
        "import resource, subprocess, sys, time, json; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, 'err': r.stderr[-400:], "
        "'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, *command], cwd=folder, capture_output=True, text=True
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        return {"error": [out["err"].strip().splitlines()[-1] if out["err"].strip() else f"exit {out['rc']}"]}
    return {"seconds": out["seconds"], "peak_rss_mb": out["peak_rss_mb"]}


def planted_check(
    peer_python: Path, folder: Path, *, n: int = 150, box: int = 32, ctf: bool = False
) -> dict[str, float]:
    """The same RELION 5 project through ``cryoxr reconstruct`` and the peer: a planted
    particle (five Gaussian blobs) at n poses, 41 tilts of 512 x 512 px at 4 Å. Returns
    the correlations (inside the mask) of both maps with the planted particle and with
    each other (merged and halves)."""
    import mrcfile
    from scipy.spatial.transform import Rotation

    import cryoxr
    from cryoxr.cli import main as cryoxr_main

    folder.mkdir(parents=True, exist_ok=True)
    px, size, angles = 4.0, 512, np.linspace(-60, 60, T)
    model = cryoxr.make_projection_model(
        rotation_y=angles, rotation_z=85.0, dx=np.sin(np.radians(angles)) * 3, experiment_id="TS_01",
        pixel_spacing=px, tomogram_size_x=size, tomogram_size_y=size, tomogram_size_z=128,
        tilt_image_center_x=size // 2, tilt_image_center_y=size // 2, defocus_u=20000.0, defocus_v=20500.0,
        defocus_angle=30.0, voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1,
        pre_exposure=3.0 * np.arange(T), defocus_handedness=1.0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    rotation = Rotation.random(n, rng=rng)
    position = rng.uniform([100, 60, 40], [412, 452, 88], (n, 3))
    poses = cryoxr.make_poseset(
        position, orientation=rotation, experiment_id="TS_01", pixel_spacing=px,
        extra={"rlnRandomSubset": np.arange(n) % 2 + 1},
    )  # fmt: skip
    blobs = np.array([[0, 0, 0, 1.0], [5, 0, 0, 0.8], [0, 7, 0, 0.7], [0, 0, 4, 0.6], [-4, -3, 2, 0.5]])
    sigma = 1.5
    points = (position[:, None] + np.einsum("nij,kj->nki", rotation.as_matrix(), blobs[:, :3])).reshape(-1, 3)
    xy = cryoxr.project(cryoxr.make_poseset(points, experiment_id="TS_01", pixel_spacing=px), model).values
    images = np.zeros((T, size, size), np.float32)
    window, amplitude = np.arange(-6, 7), -np.tile(blobs[:, 3], n) * np.sqrt(2 * np.pi) * sigma
    for t in range(T):
        cols = np.rint(xy[:, t, 0]).astype(int)[:, None] + window
        rows = np.rint(xy[:, t, 1]).astype(int)[:, None] + window
        gx = np.exp(-((cols - xy[:, t, 0, None]) ** 2) / (2 * sigma**2))
        gy = np.exp(-((rows - xy[:, t, 1, None]) ** 2) / (2 * sigma**2))
        np.add.at(
            images[t],
            (rows[:, :, None], cols[:, None, :]),
            amplitude[:, None, None] * gy[:, :, None] * gx[:, None, :],
        )
    image = cryoxr.Image.from_array(images, pixel_spacing=px, experiment_id="TS_01", stack=True)
    cryoxr.io.write_mrc(image, folder / "TS_01.mrc", overwrite=True)
    write_relion_project(folder, model, poses, {"TS_01": (size, size, 128)})
    peer = run_peer(peer_python, folder, box, no_ctf=not ctf)
    if "error" in peer:
        return {"error": peer["error"][0]}
    argv = [
        "reconstruct",
        "--particles",
        str(folder / "particles.star"),
        "--tomograms",
        str(folder / "tomograms.star"),
    ]
    argv += [
        "--box-size",
        str(box),
        "--tilt-series-dir",
        str(folder),
        "--out",
        str(folder / "cryoxr" / "merged.mrc"),
    ]
    assert cryoxr_main([*argv, "--overwrite", "--no-progress", *([] if ctf else ["--no-ctf"])]) == 0
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    planted = sum(
        a * np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * sigma**2))
        for bx, by, bz, a in blobs
    )
    inside = np.sqrt(x**2 + y**2 + z**2) < box // 2 - 4

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a[inside], b[inside])[0, 1])

    ours = {
        k: mrcfile.read(folder / "cryoxr" / f"merged{'' if k == 'merged' else '_' + k}.mrc")
        for k in ("merged", "half1", "half2")
    }
    theirs = {k: mrcfile.read(folder / "peer" / f"{k}.mrc") for k in ("merged", "half1", "half2")}
    out = {"cryoxr~planted": corr(ours["merged"], planted), "peer~planted": corr(theirs["merged"], planted)}
    out.update({f"cryoxr~peer {k}": corr(ours[k], theirs[k]) for k in ours})
    return out


def in_subprocess(name: str, folder: Path, n: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, HERE, "--one", name, "--folder", str(folder), "--n", str(n)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return {"name": name, "n": n, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--peer-python",
        type=Path,
        default=PEER_PYTHON if (PEER_PYTHON.parent / "zarr-particle-reconstruct").exists() else None,
        help=f"python of a venv with zarr-particle-tools (default {PEER_PYTHON} when it has it: the venv "
        "bench_extraction.py installs)",
    )
    parser.add_argument("--only", default=None, help="comma-separated contenders to run (default: all)")
    parser.add_argument("--particles", type=int, default=None, help="N (default 500 quick, 10,000 full)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.folder, args.n)))
        return
    n = args.particles or (500 if args.quick else 10_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inputs(folder)
        wanted = set(args.only.split(",")) if args.only else None
        for name, count in (
            ("read once", n),
            ("insert only", n),
            ("mrc", n),
            ("zarr", n),
            ("mrc cluster", n),
            ("mrc 10N", 10 * n),
        ):
            if wanted is not None and name not in wanted:
                continue
            row = in_subprocess(name, folder, count)
            rows.append(row)
            print(json.dumps(row), flush=True)
        same = zarr_same = None
        threaded_path = folder / f"mrc_{n}.npy"
        if threaded_path.exists():
            threaded = np.load(threaded_path)
            scale = float(np.abs(threaded).max())
            for label, path in (
                ("cluster", folder / f"mrc_cluster_{n}.npy"),
                ("zarr", folder / f"zarr_{n}.npy"),
            ):
                if path.exists():
                    equal = bool(np.allclose(np.load(path), threaded, atol=1e-5 * scale))
                    same, zarr_same = (equal, zarr_same) if label == "cluster" else (same, equal)
        checks: dict[str, Any] = {}
        if args.peer_python is None:
            rows.append(
                {
                    "name": "peer",
                    "n": n,
                    "error": ["not run: pass --peer-python (a venv with zarr-particle-tools)"],
                }
            )
        elif wanted is None or "peer" in wanted:
            write_relion_project(folder, make_model(), make_poses(n), {"TS_01": TOMO})
            rows.append({"name": "peer", "n": n, **run_peer(args.peer_python, folder, BOX)})
            print(json.dumps(rows[-1]), flush=True)
            for ctf in (False, True):
                label = "ctf" if ctf else "no ctf"
                checks[label] = planted_check(
                    args.peer_python, folder / f"planted_{label.replace(' ', '_')}", ctf=ctf
                )  # no blanks: STAR values
                print(json.dumps(checks), flush=True)
    by = {r["name"]: r for r in rows}
    print()
    print(
        f"reconstruction, {n:,} particles x {T} tilts, box {BOX} ({platform.machine()}, {os.cpu_count()} cores)"
    )
    print(f"{'contender':<14}{'particles':>10}{'s':>9}{'particles/s':>13}{'peak RSS MB':>13}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<14}{r['n']:>10,}  {' '.join(r['error'])}")
            continue
        rate = r["n"] / r["seconds"] if r["name"] != "read once" else float("nan")
        print(f"{r['name']:<14}{r['n']:>10,}{r['seconds']:>9.2f}{rate:>13.0f}{r['peak_rss_mb']:>13.0f}")
    if "mrc" in by and "mrc 10N" in by and "error" not in by["mrc 10N"]:
        print(
            f"peak RSS 10N / N: {by['mrc 10N']['peak_rss_mb'] / by['mrc']['peak_rss_mb']:.2f} (target <= 1.2)"
        )
    print(f"LocalCluster map == threads: {same}; OME-Zarr map == MRC map: {zarr_same}")
    for label, values in checks.items():
        print(f"planted particle, {label}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": rows, "cluster_same": same, "zarr_same": zarr_same, "planted": checks}, indent=2
            )
        )


if __name__ == "__main__":
    main()
