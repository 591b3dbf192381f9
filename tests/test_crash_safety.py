"""Crash-safe writers (issue 8, item 2): SIGKILL at random points, and full disks.

A writer is killed with SIGKILL at reproducible points while it writes MRC, OME-Zarr and
RELION STAR over an existing file. Afterwards the target must be byte-identical to the
original or to a complete new file (never a mix), cryoxr must read it back, and the only
thing left beside it may be a hidden ``.name.cryoxr-tmp-*`` temporary, which the next
write to the target removes. A full disk (a file-size limit, a tiny tmpfs) must give a
:class:`~cryoxr.errors.WriteError` naming the file and leave the original untouched
and no temporary behind.

To kill writes quickly and at precise points, a *zygote* subprocess imports cryoxr and
builds the data once, then forks one child per write (it never computes anything itself,
so it holds no dask threads when it forks); the test kills the child ``delay`` seconds
after the child says it starts writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cryoxr
from cryoxr.errors import CryoxrError, FileExistsNoOverwriteError, WriteError
from cryoxr.io import _atomic, _publish, describe, open_image
from cryoxr.io._atomic import TMP_MARKER
from cryoxr.io.mrc import write_mrc
from cryoxr.io.ome_zarr import write_ome_zarr
from cryoxr.io.relion import read_relion_particles, write_relion_particles

FORMATS = ("mrc", "ome-zarr", "star")
TARGET_NAMES = {"mrc": "tomo.mrc", "ome-zarr": "tomo.ome.zarr", "star": "particles.star"}
#: (volume shape, particles) of the killed writes (each ~0.2-1 s here) and of the disk-full ones
SIZES = {"full": ((64, 384, 384), 200_000), "small": ((32, 256, 256), 50_000)}
#: kill points as fractions of an uninterrupted write, fixed seed (reproducible in CI);
#: the last ones land after the write has finished
KILL_FRACTIONS = [(k + float(u)) / 8 for k, u in enumerate(np.random.default_rng(8).uniform(0, 1, 7))] + [1.5]
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- content
def build(fmt: str, version: int, size: str = "full") -> Any:
    """The object written: version 0 is the original, version 1 the new content."""
    shape, n = SIZES[size]
    rng = np.random.default_rng(1000 * version + len(fmt))
    if fmt in ("mrc", "ome-zarr"):
        volume = rng.standard_normal(shape, dtype=np.float32) + version
        # several chunks, so that a kill lands between partial writes
        return cryoxr.Tomogram.from_array(
            volume, pixel_spacing=10.0 + version, experiment_id=f"v{version}", chunks=(8, -1, -1)
        )
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return cryoxr.make_poseset(
        rng.uniform(0, 1000, (n, 3)), orientation=q, experiment_id=f"TS_{version}", pixel_spacing=1.35
    )


def write(fmt: str, obj: Any, target: str | Path) -> None:
    if fmt == "mrc":
        write_mrc(obj, target, overwrite=True)
    elif fmt == "ome-zarr":
        write_ome_zarr(obj, target, levels=2, chunks=(64, 64, 64), overwrite=True)
    else:
        write_relion_particles(obj, target, version=4, overwrite=True)


def read_back(fmt: str, path: Path) -> np.ndarray:
    if fmt == "star":
        poses = read_relion_particles(path)
        return np.concatenate([poses.position.values, poses.cryo.rotation.as_matrix().reshape(-1, 9)], axis=1)
    return np.asarray(open_image(path).data.values)


def expected(fmt: str, version: int, size: str = "full") -> np.ndarray:
    obj = build(fmt, version, size)
    if fmt == "star":
        return np.concatenate([obj.position.values, obj.cryo.rotation.as_matrix().reshape(-1, 9)], axis=1)
    return np.asarray(obj.data.values)


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file of a directory by relative path."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def restore(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def split_listing(folder: Path, name: str) -> tuple[list[str], list[str]]:
    """(visible entries, hidden temporaries of ``name``); any other hidden entry fails."""
    entries = sorted(os.listdir(folder))
    visible = [e for e in entries if not e.startswith(".")]
    hidden = [e for e in entries if e.startswith(".")]
    assert all(e.startswith(f".{name}{TMP_MARKER}") for e in hidden), hidden
    return visible, hidden


# ----------------------------------------------------------------------------- zygote
ZYGOTE = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from test_crash_safety import FORMATS, build, write
objects = {(f, v): build(f, v) for f in FORMATS for v in (0, 1)}
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    obj = objects[(cmd["format"], cmd["version"])]
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            print(json.dumps({"started": os.getpid()}), flush=True)
            start = time.perf_counter()
            write(cmd["format"], obj, cmd["target"])
            print(json.dumps({"done": time.perf_counter() - start}), flush=True)
        except BaseException as err:
            print(json.dumps({"error": repr(err)}), flush=True)
            status = 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": status}), flush=True)
"""


class Zygote:
    """A subprocess that forks one writer child per command."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(HERE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.expect("ready", timeout=120)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put({"eof": True})

    def expect(self, key: str, timeout: float = 60) -> dict[str, Any]:
        message = self.lines.get(timeout=timeout)
        assert key in message, f"zygote: expected {key!r}, got {message}"
        return message

    def write(self, fmt: str, version: int, target: Path, kill_after: float | None = None) -> dict[str, Any]:
        """Run one write; kill it ``kill_after`` s after it starts. Returns what happened."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"format": fmt, "version": version, "target": str(target)}) + "\n")
        self.proc.stdin.flush()
        pid = self.expect("started")["started"]
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        result: dict[str, Any] = {}
        while "exit" not in result:
            result.update(self.lines.get(timeout=120))
        status = result["exit"]
        result["killed"] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_sigkill_leaves_original_or_new(fmt: str, zygote: Zygote, tmp_path: Path) -> None:
    """Kills at fixed fractions of the write: old or new, never a mix; temporaries hidden, then cleaned."""
    name = TARGET_NAMES[fmt]
    refs = {v: tmp_path / f"ref{v}" / name for v in (0, 1)}
    durations = []
    for version, ref in refs.items():
        ref.parent.mkdir()
        run = zygote.write(fmt, version, ref)
        assert "done" in run, run
        durations.append(run["done"])
    duration = min(durations)  # the kill points then land inside the write even if one run was slow
    snaps = {v: snapshot(ref) for v, ref in refs.items()}
    assert snaps[0] != snaps[1]
    values = {v: expected(fmt, v) for v in (0, 1)}
    work = tmp_path / "work"
    work.mkdir()
    target = work / name
    outcomes: list[tuple[float, bool, int, int]] = []
    restore(refs[0], target)
    for fraction in KILL_FRACTIONS:
        if outcomes and outcomes[-1][2] != 0:
            restore(refs[0], target)
        run = zygote.write(fmt, 1, target, kill_after=fraction * duration)
        state = snapshot(target)
        assert state in (snaps[0], snaps[1]), f"{fmt}: kill at {fraction:.2f} of the write left a mix"
        version = 0 if state == snaps[0] else 1
        if not run["killed"]:
            assert version == 1, run
            assert "done" in run, run
        np.testing.assert_allclose(read_back(fmt, target), values[version], rtol=0, atol=1e-6)
        visible, hidden = split_listing(work, name)
        assert visible == [name], f"{fmt}: litter visible to readers: {visible}"
        assert describe(target)["format"]  # `cryoxr info` reads the target, not a temporary
        outcomes.append((round(fraction, 2), run["killed"], version, len(hidden)))
    # the next write removes the temporaries the killed writers left
    run = zygote.write(fmt, 0, target)
    assert "done" in run, run
    assert snapshot(target) == snaps[0]
    assert split_listing(work, name) == ([name], [])
    killed = [o for o in outcomes if o[1]]
    print(
        f"\n{fmt}: {len(killed)} kills of {len(outcomes)} writes (write {duration:.2f} s); "
        f"original intact {sum(o[2] == 0 for o in killed)}, new complete {sum(o[2] == 1 for o in killed)}, "
        f"hidden temporaries left {sum(o[3] for o in killed)} (all removed by the next write); {outcomes}"
    )
    assert len(killed) >= 4, outcomes  # most kill points land inside the write


# ----------------------------------------------------------------------------- full disk
FSIZE_CHILD = r"""
import json, resource, signal, sys
sys.path.insert(0, sys.argv[1])
from test_crash_safety import build, write
fmt, target, limit = sys.argv[2], sys.argv[3], int(sys.argv[4])
obj = build(fmt, 1, "small")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write(fmt, obj, target)
    print(json.dumps({"error": None}))
except Exception as err:
    print(json.dumps({"error": type(err).__name__, "mro": [c.__name__ for c in type(err).__mro__],
                      "message": str(err)}))
"""

#: per-file size limits: MRC fails at its first step (the sparse truncate to full size),
#: STAR half-way through its rows, OME-Zarr at its first chunk (metadata files pass)
FSIZE_LIMITS = {"mrc": 2**20, "ome-zarr": 2**16, "star": 2 * 2**20}


def _original(fmt: str, folder: Path) -> tuple[Path, dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / TARGET_NAMES[fmt]
    write(fmt, build(fmt, 0, "small"), target)
    return target, snapshot(target)


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_size_limit_gives_write_error(fmt: str, tmp_path: Path) -> None:
    """RLIMIT_FSIZE (SIGXFSZ ignored) in a subprocess: EFBIG -> WriteError, original kept, no temporary."""
    target, original = _original(fmt, tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, str(HERE), fmt, str(target), str(FSIZE_LIMITS[fmt])],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] == "WriteError", (result, out.stderr[-2000:])
    assert {"CryoxrError", "OSError"} <= set(result["mro"])
    assert str(target) in result["message"]
    assert "File too large" in result["message"]
    print(f"\n{fmt}: {result['message']}")
    assert snapshot(target) == original
    assert sorted(os.listdir(tmp_path)) == [target.name]


@contextlib.contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``folder`` (root and a kernel that allow it, else skip)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size // 1024 + 1}k", "cryoxr-test", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_tmpfs_gives_write_error(fmt: str, tmp_path: Path) -> None:
    """A tmpfs 1.5x the original's size: ENOSPC part-way through the new file."""
    source, original = _original(fmt, tmp_path / "source")
    size = sum(p.stat().st_size for p in ([source] if source.is_file() else source.rglob("*")) if p.is_file())
    with tmpfs(tmp_path / "tmpfs", int(size * 1.5)) as disk:
        target = disk / source.name
        restore(source, target)
        with pytest.raises(WriteError, match="No space left on device") as info:
            write(fmt, build(fmt, 1, "small"), target)
        assert isinstance(info.value, CryoxrError)
        assert isinstance(info.value, OSError)
        assert str(target) in str(info.value)
        print(f"\n{fmt}: {info.value}")
        assert snapshot(target) == original
        assert sorted(os.listdir(disk)) == [target.name]
        # and with room again the write goes through
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        write(fmt, build(fmt, 1, "small"), target)
        np.testing.assert_allclose(read_back(fmt, target), expected(fmt, 1, "small"), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- atomic_path
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_names_are_hidden_and_carry_host_and_pid(tmp_path: Path) -> None:
    with _atomic.atomic_path(tmp_path / "a.mrc") as tmp:
        assert tmp.name.startswith(f".a.mrc{TMP_MARKER}{_atomic._HOST}.{os.getpid()}.")
        assert tmp.suffix != ".mrc"  # no reader takes it for an MRC file
        tmp.write_bytes(b"x")
    assert os.listdir(tmp_path) == ["a.mrc"]
    assert oct((tmp_path / "a.mrc").stat().st_mode & 0o777) == oct(0o666 & ~_atomic._umask())


def test_next_write_removes_only_stale_temporaries(tmp_path: Path) -> None:
    host, prefix = _atomic._HOST, f".t.star{TMP_MARKER}"
    dead = tmp_path / f"{prefix}{host}.{_dead_pid()}.abc"
    dead_dir = tmp_path / f"{prefix}{host}.{_dead_pid()}.def"
    alive = tmp_path / f"{prefix}{host}.{os.getppid()}.ghi"  # a live process: maybe writing
    foreign = tmp_path / f"{prefix}{host}x.{_dead_pid()}.jkl"  # another host: cannot tell
    legacy_old = tmp_path / f"{prefix}old_format"
    legacy_new = tmp_path / f"{prefix}new_format"
    other_target = tmp_path / f".u.star{TMP_MARKER}{host}.{_dead_pid()}.mno"
    for path in (dead, alive, foreign, legacy_old, legacy_new, other_target):
        path.write_text("partial")
    dead_dir.mkdir()
    (dead_dir / "zarr.json").write_text("{}")
    before = _atomic._PROCESS_START - 60
    os.utime(legacy_old, (before, before))
    os.utime(legacy_new, (time.time() + 60, time.time() + 60))
    with _atomic.atomic_path(tmp_path / "t.star") as tmp:
        tmp.write_text("done")
    left = sorted(os.listdir(tmp_path))
    assert left == [*sorted(p.name for p in (alive, foreign, legacy_new, other_target)), "t.star"]


def test_directory_replaced_in_one_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "s.zarr"
    target.mkdir()
    (target / "zarr.json").write_text("{}")  # a zarr store: overwrite replaces only those
    swaps: list[tuple[Path, Path]] = []
    exchange = _atomic._exchange

    def counted(a: Path, b: Path) -> bool:
        swaps.append((a, b))
        return exchange(a, b)

    def refused(a: Any, b: Any) -> None:
        raise AssertionError("the swap alone must do it")

    monkeypatch.setattr(_atomic, "_exchange", counted)
    monkeypatch.setattr(os, "replace", refused)
    with _atomic.atomic_path(target, overwrite=True, directory=True) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert len(swaps) == 1
    assert os.listdir(tmp_path) == ["s.zarr"]
    assert os.listdir(target) == ["new"]


def test_fallback_swap_and_recovery_from_a_kill_between_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_atomic, "_exchange", lambda a, b: False)  # no renameat2 (macOS, some NFS)
    target = tmp_path / "s.zarr"
    target.mkdir()
    (target / "zarr.json").write_text("{}")  # a zarr store: overwrite replaces only those
    with _atomic.atomic_path(target, overwrite=True, directory=True) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert os.listdir(tmp_path) == ["s.zarr"]
    assert os.listdir(target) == ["new"]
    # a writer killed after moving the original aside and before renaming its new store in
    aside = tmp_path / f".s.zarr{TMP_MARKER}{_atomic._HOST}.{_dead_pid()}.old.xyz"
    new = tmp_path / f".s.zarr{TMP_MARKER}{_atomic._HOST}.{_dead_pid()}.abc"
    os.rename(target, aside)
    new.mkdir()
    assert _atomic.remove_stale_temporaries(target) == [new]
    assert os.listdir(tmp_path) == ["s.zarr"]
    assert os.listdir(target) == ["new"]  # the original is back


@pytest.mark.parametrize("overwrite", [False, True])
def test_file_is_fsynced_before_rename_and_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    events: list[str] = []
    fsync, replace, noreplace = os.fsync, os.replace, _atomic._rename_noreplace

    def logged_fsync(fd: int) -> None:
        events.append("fsync")
        fsync(fd)

    def logged_replace(a: Any, b: Any) -> None:
        events.append("replace")
        replace(a, b)

    def logged_noreplace(a: Any, b: Any, *, directory: bool) -> None:
        events.append("rename-noreplace")
        noreplace(a, b, directory=directory)

    if overwrite:
        (tmp_path / "a.txt").write_text("old")
    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    monkeypatch.setattr(_atomic, "_rename_noreplace", logged_noreplace)
    with _atomic.atomic_path(tmp_path / "a.txt", overwrite=overwrite) as tmp:
        tmp.write_text("hello")
    assert events == ["fsync", "replace" if overwrite else "rename-noreplace", "fsync"]
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_failed_write_removes_its_temporary(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("original")

    def half_write() -> None:
        with _atomic.atomic_path(tmp_path / "a.txt", overwrite=True) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=r"a\.txt: writing failed \(No space left on device\)"):
        half_write()
    assert os.listdir(tmp_path) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "original"


# ----------------------------------------------------------------------------- kinds and races
#: every writer that goes through _atomic: name -> the outputs it writes (relative paths)
RACE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "mrc": ("t.mrc",),
    "ome-zarr": ("t.ome.zarr",),
    "star": ("b.star",),
    "relion-particles": ("p.star",),
    "relion-tilt-series": ("tomograms.star", "tilt_series/TS_01.star"),
    "imod": ("a.xf", "a.tlt"),
    "aretomo": ("a.aln",),
    "dynamo": ("d.tbl", "d.doc"),
}
#: writers whose set of files is published as one set, so that overwrite=True races are tested
#: too (the RELION tilt-series writer publishes its files one by one: io/relion's to change)
RACE_OVERWRITE = ("mrc", "ome-zarr", "star", "relion-particles", "imod", "aretomo", "dynamo")
RACE_TRIALS = int(os.environ.get("CRYOXR_RACE_TRIALS", "12"))


def race_write(writer: str, value: int, folder: Path, overwrite: bool) -> None:
    """Write ``writer``'s outputs into ``folder``, with content that tells ``value`` apart."""
    from cryoxr.io import aretomo, dynamo, imod, relion
    from cryoxr.io.star import StarBlock, write_star

    if writer in ("mrc", "ome-zarr"):
        tomo = cryoxr.Tomogram.from_array(
            np.full((8, 16, 16), value, np.float32), pixel_spacing=1.0, experiment_id="t", chunks=(2, -1, -1)
        )
        if writer == "mrc":
            write_mrc(tomo, folder / "t.mrc", overwrite=overwrite)
        else:
            write_ome_zarr(tomo, folder / "t.ome.zarr", levels=1, chunks=(4, 8, 8), overwrite=overwrite)
        return
    if writer == "star":
        block = StarBlock("b", pd.DataFrame({"rlnFoo": [value] * 50, "rlnBar": ["x y"] * 50}))
        write_star([block], folder / "b.star", overwrite=overwrite)
        return
    model = cryoxr.make_projection_model(
        rotation_y=[-30.0, 0.0, 30.0], dx=float(value), experiment_id="TS_01", pixel_spacing=1.35
    )
    poses = cryoxr.make_poseset(np.full((20, 3), float(value)), experiment_id="TS_01", pixel_spacing=1.35)
    if writer == "relion-particles":
        relion.write_relion_particles(poses, folder / "p.star", version=4, overwrite=overwrite)
    elif writer == "relion-tilt-series":
        relion.write_relion_tilt_series(
            model, folder / "tomograms.star", tomograms={"TS_01": (64, 64, 32)}, overwrite=overwrite
        )
    elif writer == "imod":
        imod.write_imod_alignment(model, folder / "a.xf", folder / "a.tlt", overwrite=overwrite)
    elif writer == "aretomo":
        aretomo.write_aretomo_alignment(model, folder / "a.aln", image_size=(64, 48), overwrite=overwrite)
    else:
        dynamo.write_dynamo_table(poses, folder / "d.tbl", tomogram_map=folder / "d.doc", overwrite=overwrite)


def outputs_snapshot(writer: str, folder: Path) -> dict[str, dict[str, str]]:
    return {name: snapshot(folder / name) for name in RACE_OUTPUTS[writer] if (folder / name).exists()}


def _race_worker(value: int, commands: Any, results: Any, barrier: Any) -> None:
    """One of two racing processes: for each command, meet the other at the barrier, then write."""
    while True:
        command = commands.get()
        if command is None:
            return
        writer, folder, overwrite = command
        barrier.wait()
        try:
            race_write(writer, value, Path(folder), overwrite)
            results.put((value, "ok", ""))
        except CryoxrError as err:
            results.put((value, type(err).__name__, str(err)))
        except BaseException as err:  # reported, so that the parent fails with it
            results.put((value, f"raw {type(err).__name__}", repr(err)))


@pytest.fixture(scope="module")
def racers() -> Iterator[Any]:
    """Two real processes (spawned: no threads inherited) that write at the same moment."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    queues = [context.Queue(), context.Queue()]
    results = context.Queue()
    workers = [
        context.Process(target=_race_worker, args=(value, queues[value - 1], results, barrier), daemon=True)
        for value in (1, 2)
    ]
    for worker in workers:
        worker.start()

    def race(writer: str, folder: Path, overwrite: bool) -> dict[int, tuple[str, str]]:
        for q in queues:
            q.put((writer, str(folder), overwrite))
        outcome: dict[int, tuple[str, str]] = {}
        for _ in range(2):
            value, status, message = results.get(timeout=120)
            outcome[value] = (status, message)
        return outcome

    yield race
    for q in queues:
        q.put(None)
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()


@pytest.mark.parametrize("writer", list(RACE_OUTPUTS))
def test_two_processes_racing_for_a_new_target_one_wins(writer: str, racers: Any, tmp_path: Path) -> None:
    """Issue 22: with overwrite=False, exactly one of two processes started at once writes."""
    references = {}
    for value in (1, 2):
        folder = tmp_path / f"reference{value}"
        folder.mkdir()
        race_write(writer, value, folder, False)
        references[value] = outputs_snapshot(writer, folder)
    assert references[1] != references[2]
    for trial in range(RACE_TRIALS):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        outcome = racers(writer, folder, False)
        statuses = sorted(status for status, _ in outcome.values())
        assert statuses == ["FileExistsNoOverwriteError", "ok"], outcome
        winner = next(value for value, (status, _) in outcome.items() if status == "ok")
        loser_message = outcome[3 - winner][1]
        assert "overwrite=True" in loser_message
        assert str(folder) in loser_message
        assert outputs_snapshot(writer, folder) == references[winner]
        visible = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.startswith("."))
        assert not [p for p in folder.rglob(".*")], f"left behind: {list(folder.rglob('.*'))}"
        assert set(RACE_OUTPUTS[writer]) <= set(visible)


@pytest.mark.parametrize("writer", RACE_OVERWRITE)
def test_two_processes_racing_to_overwrite_leave_one_whole_result(
    writer: str, racers: Any, tmp_path: Path
) -> None:
    """With overwrite=True both succeed and the result is one writer's, whole (never a mix)."""
    references = {}
    for value in (0, 1, 2):
        folder = tmp_path / f"reference{value}"
        folder.mkdir()
        race_write(writer, value, folder, False)
        references[value] = outputs_snapshot(writer, folder)
    for trial in range(max(2, RACE_TRIALS // 2)):
        folder = tmp_path / f"trial{trial}"
        shutil.copytree(tmp_path / "reference0", folder)
        outcome = racers(writer, folder, True)
        assert [status for status, _ in outcome.values()] == ["ok", "ok"], outcome
        result = outputs_snapshot(writer, folder)
        assert result in (references[1], references[2])
        assert not [p for p in folder.rglob(".*")], f"left behind: {list(folder.rglob('.*'))}"


#: an object of every kind that overwrite=True must refuse to replace, by how it is made
def _make_folder(path: Path) -> None:
    path.mkdir()
    (path / "notes.txt").write_text("unrelated, keep me")


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize("writer", list(RACE_OUTPUTS))
@pytest.mark.parametrize("make", [_make_folder, _make_fifo], ids=["folder", "fifo"])
def test_overwrite_never_replaces_something_of_another_kind(
    writer: str, make: Callable[[Path], None], tmp_path: Path
) -> None:
    """Issue 22: write_mrc(..., overwrite=True) onto a non-empty folder deleted it."""
    target = tmp_path / RACE_OUTPUTS[writer][0]
    make(target)
    before = sorted(os.listdir(tmp_path)), (sorted(os.listdir(target)) if target.is_dir() else None)
    with pytest.raises(FileExistsNoOverwriteError, match="overwrite=True replaces only") as info:
        race_write(writer, 1, tmp_path, True)
    assert str(target) in str(info.value)
    after = sorted(os.listdir(tmp_path)), (sorted(os.listdir(target)) if target.is_dir() else None)
    if writer == "relion-tilt-series":
        # it writes the per-tilt-series files before tomograms.star, one by one (io/relion's to change)
        after = ([n for n in after[0] if n != "tilt_series"], after[1])
    assert after == before
    if make is _make_folder:
        assert (target / "notes.txt").read_text() == "unrelated, keep me"


def test_ome_zarr_overwrite_replaces_a_store_or_an_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ome.zarr"
    empty.mkdir()
    tomo = cryoxr.Tomogram.from_array(np.ones((4, 4, 4), np.float32), pixel_spacing=1.0, experiment_id="t")
    write_ome_zarr(tomo, empty, levels=1, overwrite=True)
    assert (empty / "zarr.json").is_file()
    write_ome_zarr(tomo, empty, levels=1, overwrite=True)  # now a store: replaced
    # a file where a store goes, and a store where an MRC file goes: refused
    (tmp_path / "file.ome.zarr").write_text("not a store")
    with pytest.raises(FileExistsNoOverwriteError, match="is a regular file"):
        write_ome_zarr(tomo, tmp_path / "file.ome.zarr", levels=1, overwrite=True)
    with pytest.raises(FileExistsNoOverwriteError, match="is a folder"):
        write_mrc(tomo, empty, overwrite=True)
    assert (empty / "zarr.json").is_file()


def test_overwrite_replaces_a_symlink_not_what_it_points_to(tmp_path: Path) -> None:
    real = tmp_path / "real.mrc"
    real.write_bytes(b"precious")
    link = tmp_path / "t.mrc"
    link.symlink_to(real)
    tomo = cryoxr.Tomogram.from_array(np.ones((2, 2, 2), np.float32), pixel_spacing=1.0, experiment_id="t")
    write_mrc(tomo, link, overwrite=True)
    assert not link.is_symlink()
    assert link.stat().st_size > 1024
    assert real.read_bytes() == b"precious"


def test_no_replace_fallbacks_give_one_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without renameat2 (macOS, old kernels, some NFS): os.link for files, a mkdir lock for folders."""
    monkeypatch.setattr(_publish, "_renameat2", lambda a, b, flags: False)
    for directory in (False, True):
        target = tmp_path / f"t{int(directory)}"
        with _atomic.atomic_path(target, directory=directory) as tmp:
            tmp.mkdir() if directory else tmp.write_text("first")
        with pytest.raises(FileExistsNoOverwriteError, match="created by another writer"):  # noqa: PT012
            other = tmp_path / f"other{int(directory)}"
            with _atomic.atomic_path(other, directory=directory) as tmp:
                tmp.mkdir() if directory else tmp.write_text("second")
                os.rename(target, other)  # the other writer publishes first
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # links unsupported (FAT, some FUSE mounts): the lock takes over
    monkeypatch.setattr(os, "link", lambda a, b: (_ for _ in ()).throw(PermissionError(1, "no links")))
    with _atomic.atomic_path(tmp_path / "t2") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "t2").read_text() == "x"
