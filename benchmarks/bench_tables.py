"""STAR tables: cryoxr's reader and writer against ``starfile`` on the same RELION 5 file.

One synthetic RELION 5 particle file (``data_general``, ``data_optics``, ``data_particles``
with 20 columns: tomogram names, centred coordinates, origins, angles, scores, classes,
particle and image names), padded with runs of blanks as RELION pads its columns, is
written once per size. Every measurement runs in its own subprocess, which reports wall
time and peak RSS (``VmHWM``, reset with ``/proc/self/clear_refs`` just before the timed
call, so imports and the writers' shared input table are not counted twice).

Tasks
-----
- ``read``: ``cryoxr.io.star.read_star`` vs ``starfile.read`` (both give pandas tables);
- ``read PoseSet``: ``cryoxr.io.relion.read_relion_particles`` (table -> PoseSet, quaternions);
- ``write``: ``cryoxr.io.star.write_star`` vs ``starfile.write`` (default ``%.6f``) of the
  same DataFrames (read with cryoxr first, outside the timed part);
- ``write PoseSet``: ``cryoxr.io.relion.write_relion_particles`` of the PoseSet;
- ``parse vs pyarrow``: ``read_relion_particles`` against pyarrow's CSV parser on the same
  ``data_particles`` loop body alone (pyarrow parses single-space files only: ``--unpadded``;
  the file is read into memory before the timed call, for pyarrow only).

Usage::

    python benchmarks/bench_tables.py --quick          # 10^5 rows, well under a minute
    python benchmarks/bench_tables.py                  # 10^6 and 10^7 rows

``starfile`` is skipped above ``--baseline-max-rows`` (default 2 x 10^6): at 10^7 rows it
needs about 17 GB and several minutes per call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_TOMOGRAMS = 20
TOMOGRAM_SIZE = (4096, 4096, 1000)

CHILD = r"""
import json, os, sys, time
from pathlib import Path

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")

task, path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
sizes = {f"TS_{i:02d}": (4096, 4096, 1000) for i in range(%(n_tomograms)d)}
import starfile
from cryoxr.io.star import read_star, write_star
from cryoxr.io.relion import read_relion_particles, write_relion_particles
prepared = None
if task == "starfile write":
    prepared = {name: (b.table if b.loop else b.table.iloc[0].to_dict()) for name, b in read_star(path).items()}
elif task == "cryoxr write":
    prepared = read_star(path)
elif task == "cryoxr write PoseSet":
    prepared = read_relion_particles(path, tomograms=sizes)
elif task == "pyarrow parse":
    import pyarrow as pa, pyarrow.csv as pacsv
    text = path.read_bytes()
    start = text.index(b"data_particles")
    lines = text[start:].split(b"\n", 200)
    labels = [x.split()[0][1:].decode() for x in lines if x.startswith(b"_")]
    offset = start + sum(len(x) + 1 for x in lines[: max(i for i, x in enumerate(lines) if x.startswith(b"_")) + 1])
    body = memoryview(text)[offset:]
import resource
def cpu():
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime
base = rss("VmRSS:")
try:
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    pass
t0, c0 = time.perf_counter(), cpu()
if task == "pyarrow parse":
    # the baseline: pyarrow's CSV parser on the data_particles loop body alone (single spaces only)
    result = pacsv.read_csv(
        pa.py_buffer(body), read_options=pacsv.ReadOptions(column_names=labels),
        parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False),
    )
elif task == "starfile read":
    result = starfile.read(path)
elif task == "cryoxr read":
    result = read_star(path)
elif task == "cryoxr read PoseSet":
    result = read_relion_particles(path, tomograms=sizes)
elif task == "starfile write":
    starfile.write(prepared, out)
elif task == "cryoxr write":
    write_star(prepared, out, overwrite=True)
elif task == "cryoxr write PoseSet":
    write_relion_particles(prepared, out, overwrite=True)
seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": rss("VmHWM:"), "base_mib": base}))
"""

TASKS = [
    ("read", "starfile read", "cryoxr read"),
    ("read -> PoseSet", "starfile read", "cryoxr read PoseSet"),
    ("parse vs pyarrow", "pyarrow parse", "cryoxr read PoseSet"),
    ("write", "starfile write", "cryoxr write"),
    ("PoseSet -> write", "starfile write", "cryoxr write PoseSet"),
]


def make_relion5_file(path: Path, n: int, *, seed: int = 0, pad: bool = True) -> None:
    """A RELION 5 particle file of ``n`` rows, columns padded with blanks (vectorised);
    ``pad=False``: single spaces (as cryoxr writes), the same values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    labels = [
        "rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
        "rlnCenteredCoordinateZAngst", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst",
        "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnClassNumber", "rlnLogLikeliContribution",
        "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples", "rlnTomoParticleName",
        "rlnOpticsGroup", "rlnImageName", "rlnGroupNumber", "rlnRandomSubset", "rlnNormCorrection",
    ]  # fmt: skip
    head = (
        "\n# version 50001\n\ndata_general\n\n_rlnTomoSubTomosAre2DStacks                       1\n\n\n"
        "# version 50001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
        "_rlnTomoTiltSeriesPixelSize #3\n_rlnImagePixelSize #4\n_rlnImageSize #5\n_rlnImageDimensionality #6\n"
        "       1 opticsGroup1     1.350000     2.700000          128            2\n\n\n"
        "# version 50001\n\ndata_particles\n\nloop_\n"
        + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(labels))
    )
    names = np.array([f"TS_{i:02d}" for i in range(N_TOMOGRAMS)])

    def padded(values: np.ndarray, width: int = 12) -> pa.Array:
        arr = pa.array(np.round(values, 6) if values.dtype.kind == "f" else values)
        return pc.utf8_lpad(pc.cast(arr, pa.string()), width=width if pad else 0)

    with open(path, "wb") as fh:
        fh.write(head.encode())
        step = 500_000
        for start in range(0, n, step):
            k = min(step, n - start)
            index = np.arange(start, start + k)
            tomo = names[rng.integers(0, N_TOMOGRAMS, k)]
            half = np.array(TOMOGRAM_SIZE) / 2 * 1.35
            particle = pc.binary_join_element_wise(pa.array(tomo), pa.array(index.astype(str)), "/")
            image = pc.binary_join_element_wise(
                pa.array(np.char.mod("%06d", index % 1000)), pa.array(tomo), "@Subtomograms/"
            )
            columns = [
                padded(tomo.astype(object), 7),
                *(padded(rng.uniform(-h, h, k)) for h in half),
                *(padded(rng.normal(0, 3, k)) for _ in range(3)),
                padded(rng.uniform(-180, 180, k)),
                padded(rng.uniform(0, 180, k)),
                padded(rng.uniform(-180, 180, k)),
                padded(rng.integers(1, 4, k), 4),
                padded(rng.normal(1e5, 10, k), 14),
                padded(rng.uniform(0, 1, k)),
                padded(rng.integers(1, 100, k), 5),
                pc.utf8_lpad(particle, width=14 if pad else 0),
                padded(np.ones(k, dtype=np.int64), 3),
                pc.utf8_lpad(pc.binary_join_element_wise(image, "_stack2d.mrcs", ""), width=40 if pad else 0),
                padded(np.ones(k, dtype=np.int64), 3),
                padded(index % 2 + 1, 3),
                padded(rng.uniform(0.5, 1.5, k)),
            ]
            lines = pc.binary_join_element_wise(*columns, " ")
            lines = pc.binary_join_element_wise(lines, "", "\n")
            for chunk in pa.chunked_array([lines]).chunks:
                fh.write("".join(chunk.to_pylist()).encode())


def run(task: str, path: Path, out: Path) -> dict[str, float]:
    """Run ``task`` once in a fresh subprocess."""
    code = CHILD % {"n_tomograms": N_TOMOGRAMS}
    done = subprocess.run(
        [sys.executable, "-c", code, task, str(path), str(out)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    return result


def median_run(results: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median wall time."""
    return sorted(results, key=lambda r: r["seconds"])[len(results) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^5 rows only")
    parser.add_argument("--rows", type=int, nargs="*", help="row counts (overrides --quick)")
    parser.add_argument("--baseline-max-rows", type=int, default=2_000_000, help="skip starfile above this")
    parser.add_argument(
        "--folder", type=Path, default=None, help="where to put the files (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--unpadded",
        action="store_true",
        help="read a single-space separated copy (as cryoxr writes it) instead of the RELION-padded file",
    )
    parser.add_argument(
        "--tasks", nargs="*", choices=[label for label, _, _ in TASKS], help="only these tasks (default: all)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="fresh subprocesses per measurement; the median is reported"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the generated files in --folder and reuse them on the next run (10^7 rows: 2 GB, ~1 min)",
    )
    args = parser.parse_args(argv)
    sizes = args.rows or ([100_000] if args.quick else [1_000_000, 10_000_000])
    folder = args.folder or Path(tempfile.mkdtemp(prefix="cryoxr-bench-tables-"))
    print(
        f"machine: {os.cpu_count()} cores, {_memory_gib():.0f} GiB; load average {os.getloadavg()[0]:.1f}; folder {folder}"
    )
    results = []
    for n in sizes:
        path = folder / (f"particles_{n}_unpadded.star" if args.unpadded else f"particles_{n}.star")
        t0 = time.perf_counter()
        made = "reused"
        if not (args.keep and path.is_file()):
            make_relion5_file(path, n, pad=not args.unpadded)  # the same values, single spaces or padded
            made = f"made in {time.perf_counter() - t0:.1f} s"
        kind = "single-space" if args.unpadded else "padded"
        print(f"\n{n:,} rows: {path.stat().st_size / 2**20:.0f} MiB RELION 5 file ({kind}) {made}")
        tasks = [t for t in TASKS if not args.tasks or t[0] in args.tasks]
        runs: dict[str, list[dict[str, float]]] = {}
        for repeat in range(args.repeats):  # interleaved, so that load changes hit every tool alike
            for _, baseline, ours in tasks:
                for task in (baseline, ours):
                    if task.startswith("starfile") and n > args.baseline_max_rows:
                        continue
                    if task == "pyarrow parse" and not args.unpadded:
                        continue  # pyarrow's parser takes single spaces only: run with --unpadded
                    if len(runs.setdefault(task, [])) <= repeat:
                        runs[task].append(run(task, path, folder / f"out_{n}.star"))
        measured = {task: median_run(results) for task, results in runs.items()}
        print(f"load average after the runs: {os.getloadavg()[0]:.1f}")
        header = (
            f"{'task':<18}{'tool':<22}{'time s':>8}{'cpu s':>7}{'rows/s':>11}{'peak MiB':>9}{'+MiB':>7}"
            f"{'time x':>7}{'cpu x':>6}{'mem x':>6}"
        )
        print(header)
        print("-" * len(header))
        for label, baseline, ours in tasks:
            base = measured.get(baseline)
            for task in (baseline, ours):
                if task not in measured:
                    why = "run with --unpadded" if task == "pyarrow parse" else "skipped (memory/time)"
                    print(f"{label:<18}{task:<22}{why:>30}")
                    continue
                m = measured[task]
                ratio = cpu = mem = ""
                if base is not None and task == ours:
                    ratio = f"{base['seconds'] / m['seconds']:.1f}"
                    cpu = f"{base['cpu_seconds'] / m['cpu_seconds']:.1f}"
                    mem = f"{_grown(base) / _grown(m):.1f}"
                print(
                    f"{label:<18}{task:<22}{m['seconds']:>8.2f}{m['cpu_seconds']:>7.2f}{n / m['seconds']:>11,.0f}"
                    f"{m['peak_mib']:>9.0f}{_grown(m):>7.0f}{ratio:>7}{cpu:>6}{mem:>6}"
                )
                results.append({"rows": n, "task": label, "tool": task, **m})
        if not args.keep:
            path.unlink()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(
        "\ncpu s: user + system time of all threads; +MiB: peak RSS above the RSS before the timed call;\n"
        "time x / cpu x / mem x: starfile's time / cpu / +MiB divided by cryoxr's (higher is better for cryoxr)"
    )


def _grown(m: dict[str, float]) -> float:
    """Peak RSS above the RSS just before the timed call (imports and inputs excluded)."""
    return max(m["peak_mib"] - m["base_mib"], 1.0)


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


if __name__ == "__main__":
    main()
