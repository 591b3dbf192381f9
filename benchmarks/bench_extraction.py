"""Benchmark of RELION 5 subtilt extraction: ``cryoxr extract`` against its peer (issue 16).

One synthetic RELION 5 project (one tilt series of 41 tilts, a dose-symmetric scheme, per-tilt
defocus, random particles well inside the tomogram) is written once, with its tilt series as
an MRC stack and as an OME-Zarr 0.4 store (zstd, chunks of one tilt x 512 x 512), each named
tilt by tilt as ``N@tilt_series/TS_01.<mrcs|zarr>`` in its own ``tomograms*.star``. Every
contender then runs in a fresh subprocess (so its peak RSS is its own) on those files, box 64:

- ``bound``: each tilt image read once (MRC: ``np.fromfile`` per tilt; zarr: each tilt's
  chunks decoded with zarr), summed so nothing is skipped: what no extraction can beat
  without reading less than the tilt series;
- ``cryoxr``: ``cryoxr extract`` (threads, 2 cores), the RELION 5 folder written;
- ``peer``: ``zarr-particle-extract local`` of ``zarr-particle-tools`` (the CZ Imaging
  Institute's re-implementation of ``relion_tomo_subtomo``), installed from PyPI by this
  script into its own venv under /tmp (it pins zarr < 3, so it can never share cryoxr's
  environment); skipped, with the reason printed, when it cannot be installed or run;
- ``cryoxr cluster``: the same extraction on ``distributed.LocalCluster`` (2 workers x 1
  thread, processes); its stacks are compared file by file with the threaded run;
- ``cryoxr sink N``: the extraction streamed into a per-tilt sum over particles (no files),
  at N and 10 N particles: peak RSS must not grow with N.

The stacks of cryoxr and of the peer are compared too (largest difference per particle
relative to its standard deviation), since both claim RELION 5's algorithm.

Usage::

    python benchmarks/bench_extraction.py --quick     # 2,000 particles, 1024^2 tilts (~5 min)
    python benchmarks/bench_extraction.py             # 10,000 particles, 2048^2 tilts
    python benchmarks/bench_extraction.py --no-peer --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
T = 41
PX = 2.0
BOX = 64
PEER = "zarr-particle-tools==1.0.1"
PEER_VENV = Path("/tmp/cryoxr-bench-peer-venv")

# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------

_GLOBAL = [
    "rlnTomoName",
    "rlnTomoTiltSeriesStarFile",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographOriginalPixelSize",
    "rlnTomoHand",
    "rlnTomoTiltSeriesPixelSize",
    "rlnTomoTomogramBinning",
    "rlnTomoSizeX",
    "rlnTomoSizeY",
    "rlnTomoSizeZ",
    "rlnOpticsGroupName",
]
_TILT = [
    "rlnMicrographName",
    "rlnTomoTiltMovieIndex",
    "rlnTomoNominalStageTiltAngle",
    "rlnMicrographPreExposure",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfScalefactor",
    "rlnCtfBfactor",
    "rlnTomoXTilt",
    "rlnTomoYTilt",
    "rlnTomoZRot",
    "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst",
]


def _loop(name: str, labels: list[str], rows: list[str]) -> str:
    head = f"\n# version 50001\n\ndata_{name}\n\nloop_\n" + "".join(
        f"_{lab} #{i + 1}\n" for i, lab in enumerate(labels)
    )
    return head + "\n".join(rows) + "\n\n"


def make_project(folder: Path, n: int, size: int) -> None:
    """tomograms.star (MRC) and tomograms_zarr.star (OME-Zarr), tilt images and particles.star."""
    import mrcfile

    import cryoxr

    rng = np.random.default_rng(16)
    (folder / "tilt_series").mkdir(parents=True, exist_ok=True)
    stack_path = folder / "tilt_series" / "TS_01.mrcs"
    with mrcfile.new_mmap(stack_path, shape=(T, size, size), mrc_mode=2, overwrite=True) as mrc:
        for t in range(T):
            mrc.data[t] = rng.standard_normal((size, size), dtype=np.float32)
        mrc.voxel_size = PX
    images = cryoxr.io.read_mrc(stack_path, chunks=(1, size, size), pixel_spacing=PX)
    cryoxr.io.write_ome_zarr(
        images,
        folder / "tilt_series" / "TS_01.zarr",
        version="0.4",
        chunks=(1, 512, 512),
        levels=1,
        overwrite=True,
    )
    angles = np.arange(-60.0, 61.0, 3.0)
    acquisition = np.lexsort((angles < 0, np.abs(angles)))  # dose-symmetric: 0, +3, -3, +6, ...
    movie = np.empty(T, dtype=int)
    movie[acquisition] = np.arange(T)
    tomo = (size, size, size // 4)
    for kind, suffix in (("", "mrcs"), ("_zarr", "zarr")):
        rows = []
        for t, angle in enumerate(angles):
            rows.append(
                f"{t + 1}@tilt_series/TS_01.{suffix} {movie[t] + 1} {angle:.1f} {3.0 * movie[t]:.2f} "
                f"{30000 + 40 * t:.1f} {29500 + 40 * t:.1f} {45.0 + 0.1 * t:.2f} 0.0 1.0 0.0 "
                f"{0.3:.3f} {angle + 0.2:.3f} {85.0 + 0.01 * t:.3f} {rng.normal(0, 8):.4f} {rng.normal(0, 8):.4f}"
            )
        (folder / "tilt_series" / f"TS_01{kind}.star").write_text(_loop("TS_01", _TILT, rows))
        (folder / f"tomograms{kind}.star").write_text(
            _loop(
                "global",
                _GLOBAL,
                [
                    f"TS_01 tilt_series/TS_01{kind}.star 300.0 2.7 0.1 {PX / 2} -1.0 {PX} 4.0 {tomo[0]} {tomo[1]} {tomo[2]} opticsGroup1"
                ],
            )
        )
    margin = 0.2 * size
    points = rng.uniform(
        [margin, margin, tomo[2] * 0.3], [size - margin, size - margin, tomo[2] * 0.7], size=(n, 3)
    )
    quaternions = rng.normal(size=(n, 4))
    poses = cryoxr.make_poseset(
        points,
        orientation=quaternions / np.linalg.norm(quaternions, axis=1, keepdims=True),
        experiment_id="TS_01",
        pixel_spacing=PX,
        extra={"rlnTomoParticleName": np.array([f"TS_01/{i + 1}" for i in range(n)])},
    )
    cryoxr.io.write_relion_particles(
        poses, folder / "particles.star", version=5, tomograms=folder / "tomograms.star", overwrite=True
    )


# --------------------------------------------------------------------------------------
# contenders (each runs in its own subprocess: `--run NAME`)
# --------------------------------------------------------------------------------------


def run_bound(folder: Path, kind: str) -> dict[str, Any]:
    total = 0.0
    if kind == "mrc":
        import mrcfile

        with mrcfile.open(folder / "tilt_series" / "TS_01.mrcs", header_only=True) as mrc:
            nx, ny, nz = int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)
            offset = 1024 + int(mrc.header.nsymbt)
        with open(folder / "tilt_series" / "TS_01.mrcs", "rb") as handle:
            for t in range(nz):
                handle.seek(offset + t * nx * ny * 4)
                total += float(np.fromfile(handle, dtype="<f4", count=nx * ny).sum())
    else:
        import zarr

        array = zarr.open_array(str(folder / "tilt_series" / "TS_01.zarr" / "0"), mode="r")
        for t in range(array.shape[0]):
            total += float(np.asarray(array[t]).sum())
    return {"checksum": total}


def _extract_argv(folder: Path, kind: str, out: Path) -> list[str]:
    tomograms = "tomograms.star" if kind == "mrc" else "tomograms_zarr.star"
    return ["extract", "--particles", "particles.star", "--tomograms", tomograms, "--box-size", str(BOX),
            "--out", str(out), "--no-progress", "--overwrite"]  # fmt: skip


def run_cryoxr(folder: Path, kind: str, out: Path) -> dict[str, Any]:
    from cryoxr.cli import main

    os.chdir(folder)
    code = main(_extract_argv(folder, kind, out))
    if code:
        raise SystemExit(code)
    return {}


def _stacks(folder: Path, kind: str, n: int | None = None) -> Any:
    import cryoxr
    from cryoxr.io.relion import (
        open_relion_tilt_series,
        read_relion_particles,
        read_relion_tilt_series,
        with_image_geometry,
    )

    os.chdir(folder)
    tomograms = "tomograms.star" if kind == "mrc" else "tomograms_zarr.star"
    model = read_relion_tilt_series(tomograms)
    poses = read_relion_particles("particles.star", tomograms=tomograms)
    if n is not None and n != poses.sizes["particle"]:
        rng = np.random.default_rng(1)
        take = rng.integers(
            0, poses.sizes["particle"], n
        )  # the same particles, repeated: same work per particle
        poses = poses.isel(particle=take).drop_vars("rlnTomoParticleName")
    poses = poses.chunk({"particle": 1024})  # as cryoxr extract does
    series = open_relion_tilt_series(model)
    model = with_image_geometry(model, series)
    stacks = cryoxr.extract_subtilts(
        series, cryoxr.project(poses, model), box_size=BOX, mode="relion",
        projection_model=model, defocus=cryoxr.particle_defocus(poses, model),
    )  # fmt: skip
    return stacks, poses, tomograms


def run_cluster(folder: Path, kind: str, out: Path) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from cryoxr.io.relion import write_relion_subtilts

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as cluster,
        Client(cluster),
    ):
        stacks, poses, tomograms = _stacks(folder, kind)
        write_relion_subtilts(stacks, poses, out, tomograms=tomograms, overwrite=True)
    return {}


def run_sink(folder: Path, kind: str, n: int) -> dict[str, Any]:
    import dask

    stacks, _, _ = _stacks(folder, kind, n)
    with dask.config.set(scheduler="threads"):
        total = stacks.sum("particle").values
    return {"checksum": float(np.abs(total).sum())}


def peer_python() -> tuple[Path | None, str]:
    """The peer's venv python, installing it on first use; (None, reason) when impossible."""
    python = PEER_VENV / "bin" / "python"
    if (PEER_VENV / "bin" / "zarr-particle-extract").exists():
        return python, "installed"
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(PEER_VENV)], check=True, capture_output=True, timeout=300
        )
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", PEER], capture_output=True, text=True, timeout=1800
        )
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"could not create the venv: {err}"
    if result.returncode:
        return None, f"pip install {PEER} failed: {result.stderr.strip().splitlines()[-1:]}"
    return python, "installed now"


def run_peer(folder: Path, kind: str, out: Path) -> dict[str, Any]:
    tomograms = "tomograms.star" if kind == "mrc" else "tomograms_zarr.star"
    argv = [str(PEER_VENV / "bin" / "zarr-particle-extract"), "local", "--particles-starfile", "particles.star",
            "--tomograms-starfile", tomograms, "--box-size", str(BOX), "--output-dir", str(out),
            "--tiltseries-relative-dir", ".", "--overwrite"]  # fmt: skip
    result = subprocess.run(argv, cwd=folder, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"peer failed: {result.stderr.strip()[-2000:]}")
    return {}


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    folder, out = Path(args.folder), Path(args.out) if args.out else None
    start = time.perf_counter()
    if args.run == "bound":
        extra = run_bound(folder, args.kind)
    elif args.run == "cryoxr":
        extra = run_cryoxr(folder, args.kind, out)  # type: ignore[arg-type]
    elif args.run == "cluster":
        extra = run_cluster(folder, args.kind, out)  # type: ignore[arg-type]
    elif args.run == "sink":
        extra = run_sink(folder, args.kind, args.n)
    elif args.run == "peer":
        extra = run_peer(folder, args.kind, out)  # type: ignore[arg-type]
    else:
        raise SystemExit(f"unknown contender {args.run}")
    wall = time.perf_counter() - start
    # this process's own high-water mark (VmHWM: ru_maxrss would keep the parent's RSS at
    # the fork as a floor), and the largest child's (the peer's pool)
    status = Path("/proc/self/status").read_text().splitlines()
    own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    kcpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "wall": wall,
                "rss_mb": max(own, kids),
                "cpu": cpu.ru_utime + cpu.ru_stime + kcpu.ru_utime + kcpu.ru_stime,
                **extra,
            }
        )
    )


def contender(
    name: str, folder: Path, kind: str, out: Path | None = None, n: int | None = None
) -> dict[str, Any]:
    if out is not None and out.exists():
        shutil.rmtree(out)
    argv = [sys.executable, str(HERE), "--run", name, "--folder", str(folder), "--kind", kind]
    argv += ["--out", str(out)] if out is not None else []
    argv += ["--n", str(n)] if n is not None else []
    subprocess.run(["sync"], check=False)
    result = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if result.returncode:
        return {"error": (result.stderr or result.stdout).strip().splitlines()[-3:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_folders(a: Path, b: Path) -> dict[str, Any]:
    """Largest per-particle difference between two stack2d folders, relative to the particle's std."""
    import mrcfile

    worst, files, equal = 0.0, 0, True
    for path in sorted((a / "Subtomograms").rglob("*.mrcs")):
        other = b / path.relative_to(a)
        if not other.exists():
            return {"missing": str(other.relative_to(b))}
        with mrcfile.open(path) as x, mrcfile.open(other) as y:
            if x.data.shape != y.data.shape:
                return {"shape": [list(x.data.shape), list(y.data.shape), str(path.name)]}
            equal &= bool(np.array_equal(x.data, y.data))
            worst = max(worst, float(np.abs(x.data - y.data).max() / (x.data.std() or 1.0)))
        files += 1
    return {"files": files, "identical": equal, "max_rel_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--particles", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cryoxr-bench-extraction"))
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--sink", type=int, nargs="*", default=None, help="particle counts of the RSS runs (N, 10 N)"
    )
    parser.add_argument("--only-sink", action="store_true", help="run only the RSS runs")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="mrc", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        _child(args)
        return
    n = args.particles or (2_000 if args.quick else 10_000)
    size = args.image_size or (1024 if args.quick else 2048)
    folder = args.workdir
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"inputs: {n:,} particles x {T} tilts, tilts {size}^2 float32, box {BOX}; folder {folder}", flush=True
    )
    start = time.perf_counter()
    make_project(folder, n, size)
    print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
    peer, why = (None, "--no-peer") if args.no_peer else peer_python()
    print(f"peer {PEER}: {why}", flush=True)
    results: dict[str, Any] = {
        "particles": n,
        "tilts": T,
        "image_size": size,
        "box": BOX,
        "load": os.getloadavg(),
    }
    rows = []
    for kind in () if args.only_sink else ("mrc", "zarr"):
        bound = contender("bound", folder, kind)
        mine = contender("cryoxr", folder, kind, folder / f"out_cryoxr_{kind}")
        rows += [(kind, "bound: read each tilt once", bound), (kind, "cryoxr extract", mine)]
        if peer is not None:
            theirs = contender("peer", folder, kind, folder / f"out_peer_{kind}")
            rows.append((kind, "peer zarr-particle-extract", theirs))
            if "error" not in theirs and "error" not in mine:
                results[f"cryoxr_vs_peer_{kind}"] = compare_folders(
                    folder / f"out_cryoxr_{kind}", folder / f"out_peer_{kind}"
                )
            if "error" not in theirs:
                shutil.rmtree(folder / f"out_peer_{kind}", ignore_errors=True)
        if kind == "mrc":
            cluster = contender("cluster", folder, kind, folder / "out_cluster")
            rows.append((kind, "cryoxr on LocalCluster 2x1", cluster))
            if "error" not in cluster:
                results["cluster_vs_threads"] = compare_folders(
                    folder / "out_cryoxr_mrc", folder / "out_cluster"
                )
            shutil.rmtree(folder / "out_cluster", ignore_errors=True)
        shutil.rmtree(folder / f"out_cryoxr_{kind}", ignore_errors=True)
    for count in args.sink if args.sink is not None else (n, 10 * n):
        rows.append(("mrc", f"cryoxr sink, {count:,} particles", contender("sink", folder, "mrc", n=count)))
    print(
        f"\n{'input':<6}{'contender':<36}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'particle-tilts/s':>18}"
    )
    for kind, name, r in rows:
        if "error" in r:
            print(f"{kind:<6}{name:<36}  failed: {r['error']}")
            continue
        count = int(name.split()[2].rstrip(",").replace(",", "")) if name.startswith("cryoxr sink") else n
        rate = "" if name.startswith("bound") else f"{count * T / r['wall']:,.0f}"
        print(f"{kind:<6}{name:<36}{r['wall']:>9.1f}{r['cpu']:>9.1f}{r['rss_mb']:>13.0f}{rate:>18}")
    for key in [k for k in results if "_vs_" in k]:
        print(f"{key}: {results[key]}")
    print(f"load average at start: {results['load']}")
    results["rows"] = [{"input": k, "contender": c, **r} for k, c, r in rows]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
