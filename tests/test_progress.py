"""cryoxr.progress: lines in a log, dask's bar on a terminal, nothing when disabled or quick."""

from __future__ import annotations

import io
import time

import dask
import dask.array as da

from cryoxr.progress import LineProgress, progress


def _slow(x: object) -> object:
    time.sleep(0.02)
    return x


def _work() -> da.Array:
    return da.ones(40, chunks=1).map_blocks(_slow, dtype=float).sum()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_one_line_per_tenth_and_a_last_line() -> None:
    log = io.StringIO()
    with progress(stream=log, minimum=0):
        _work().compute(scheduler="sync")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert 2 <= len(lines) <= 12
    assert lines[-1].startswith("progress: 100% (")
    percents = [int(line.split()[1].rstrip("%")) for line in lines]
    assert percents == sorted(percents)


def test_terminal_gets_dasks_bar() -> None:
    term = FakeTerminal()
    with progress(stream=term, minimum=0):
        _work().compute(scheduler="sync")
    assert "\r" in term.getvalue()
    assert "100% Completed" in term.getvalue()


def test_disabled_and_quick_computes_print_nothing() -> None:
    log = io.StringIO()
    with progress(False, stream=log):
        _work().compute(scheduler="sync")
    with progress(stream=log, minimum=60):
        _work().compute(scheduler="sync")
    assert log.getvalue() == ""


def test_line_progress_is_a_dask_callback() -> None:
    log = io.StringIO()
    with LineProgress(log, minimum=0, every=0.0), dask.config.set(scheduler="threads"):
        _work().compute()
    assert log.getvalue().splitlines()[-1].startswith("progress: 100%")
