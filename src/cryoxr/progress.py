"""Progress of long dask computes, on stderr: a bar on a terminal, plain lines in a log;
and the scheduler the ``cryoxr`` commands run them on.

Results go to stdout and progress to stderr, so ``cryoxr info --json > out.json`` and
``cryoxr project ... > log`` stay clean. On a terminal the bar is dask's own; when stderr
is a file or a pipe (a batch job's log), a line is printed at every tenth of the work
or every ``every`` seconds, whichever comes first, so a log never gets one endless line.

Examples
--------
>>> import io, dask.array as da
>>> from cryoxr.progress import progress
>>> log = io.StringIO()
>>> with progress(stream=log, minimum=0):
...     _ = da.ones(100, chunks=10).sum().compute(scheduler="sync")
>>> print(log.getvalue().splitlines()[-1])  # doctest: +ELLIPSIS
progress: 100% (... tasks) in ... s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from dask.callbacks import Callback

from cryoxr.errors import MissingDependencyError

__all__ = ["LineProgress", "progress", "scheduler"]


class LineProgress(Callback):
    """A dask callback that prints ``progress: 40% (96/240 tasks) in 3.1 s`` lines.

    Parameters
    ----------
    stream
        Where the lines go (stderr by default).
    minimum
        Computes shorter than this many seconds print nothing.
    every
        Longest pause between two lines, in seconds.
    """

    def __init__(self, stream: IO[str] | None = None, *, minimum: float = 0.5, every: float = 10.0) -> None:
        super().__init__()
        self._stream = stream
        self._minimum = minimum
        self._every = every

    def _start(self, dsk: Any) -> None:
        self._t0 = time.perf_counter()
        self._last_line = self._t0
        self._last_tenth = 0

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        done = len(state["finished"])
        total = done + len(state["ready"]) + len(state["waiting"]) + len(state["running"])
        now = time.perf_counter()
        tenth = (10 * done) // max(total, 1)
        if now - self._t0 < self._minimum:
            return
        if tenth > self._last_tenth or now - self._last_line >= self._every:
            self._last_tenth, self._last_line = tenth, now
            self._write(done, total, now)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        now = time.perf_counter()
        if errored or now - self._t0 < self._minimum:
            return
        done = len(state["finished"])
        if self._last_tenth < 10:
            self._write(done, done, now)

    def _write(self, done: int, total: int, now: float) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        percent = 100 * done // max(total, 1)
        stream.write(f"progress: {percent}% ({done}/{total} tasks) in {now - self._t0:.1f} s\n")
        stream.flush()


@contextmanager
def progress(enabled: bool = True, *, stream: IO[str] | None = None, minimum: float = 0.5) -> Iterator[None]:
    """Show the progress of dask computes inside the block on ``stream`` (stderr).

    Parameters
    ----------
    enabled
        False shows nothing (the block runs unchanged).
    stream
        A text stream; a terminal gets dask's bar, anything else plain lines.
    minimum
        Computes shorter than this many seconds show nothing.
    """
    if not enabled:
        yield
        return
    out = stream if stream is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    if callable(isatty) and isatty():
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=minimum, dt=0.25, out=out):
            yield
    else:
        with LineProgress(out, minimum=minimum):
            yield


@contextmanager
def scheduler(name: str, show_progress: bool = True) -> Iterator[Any]:
    """Run the dask computes inside the block on the named scheduler, with progress on stderr.

    ``name`` is ``"threads"``, ``"processes"`` or ``"sync"`` (local, with :func:`progress`),
    or the address of a dask.distributed scheduler (``tcp://...``), for which the block
    gets the ``Client`` (the caller shows ``distributed.progress``). Used by the ``cryoxr``
    commands' ``--scheduler``.
    """
    import dask

    if name in ("threads", "processes", "sync"):
        with dask.config.set(scheduler=name), progress(show_progress):
            yield None
        return
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"--scheduler {name}: needs dask.distributed (pip install 'cryoxr[distributed]')"
        ) from err
    with Client(name) as client:
        yield client
