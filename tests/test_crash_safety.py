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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cryoxr
from cryoxr.errors import CryoxrError, WriteError
from cryoxr.io import _atomic, describe, open_image
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
    (target / "old").write_text("old")
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
    (target / "old").write_text("old")
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


def test_file_is_fsynced_before_rename_and_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        events.append("fsync")
        fsync(fd)

    def logged_replace(a: Any, b: Any) -> None:
        events.append("replace")
        replace(a, b)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    with _atomic.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("hello")
    assert events == ["fsync", "replace", "fsync"]


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
