"""SharedOutput / share_output: one output for a dask array computed alone."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest

from cryoxr._shared_output import SharedOutput, _finalize, scheduler_ships_tasks, share_output
from cryoxr.errors import InvalidValueError


def _doubled(x: da.Array) -> da.Array:
    """``2 * x`` (chunked along axis 0) whose own compute writes into one output."""
    y = 2 * x
    starts = np.cumsum((0, *x.chunks[0][:-1]))

    def fill(block: np.ndarray, start: np.ndarray, target: SharedOutput) -> np.ndarray:
        out = target.rows(int(start[0]), block.shape[0])
        out[...] = 2 * block
        return out

    def rows(target: SharedOutput) -> da.Array:
        return da.blockwise(
            fill, "ij", x, "ij", da.from_array(starts, chunks=1), "i", target, None,
            name=y.name, align_arrays=False, dtype=x.dtype, meta=np.empty((0, 0)),
        )  # fmt: skip

    return share_output(y, rows)


@pytest.fixture
def x() -> da.Array:
    return da.from_array(np.arange(70.0).reshape(35, 2), chunks=(10, 2))


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_compute_alone_returns_the_one_output(x: da.Array, scheduler: str) -> None:
    y = _doubled(x)
    with dask.config.set(scheduler=scheduler):
        result = y.compute()
        again = y.compute()
    np.testing.assert_array_equal(result, 2 * np.arange(70.0).reshape(35, 2))
    # the rows were written into one array, returned as it is: no concatenated copy
    assert result.flags.owndata
    assert result.base is None
    assert again is not result
    assert not np.shares_memory(again, result)
    np.testing.assert_array_equal(again, result)


def test_derived_arrays_run_the_original_graph(x: da.Array) -> None:
    y = _doubled(x)
    assert type(y) is da.Array  # a plain dask array: xarray mixes it with others
    assert type(y + 1) is da.Array
    assert type(y[3:]) is da.Array
    np.testing.assert_array_equal((y + 1).compute(), 2 * x.compute() + 1)
    np.testing.assert_array_equal(y[3:12].compute(), 2 * x.compute()[3:12])
    both, total = dask.compute(y, y.sum())
    np.testing.assert_array_equal(both, 2 * x.compute())
    assert total == 2 * x.compute().sum()
    persisted = y.persist()
    np.testing.assert_array_equal(persisted.compute(), 2 * x.compute())
    blocks = dask.compute(*y.to_delayed().ravel())
    np.testing.assert_array_equal(np.concatenate(blocks), 2 * x.compute())
    # blocks computed one at a time (streaming) are arrays of their own, not views keeping
    # a whole-size output alive
    first = y.to_delayed().ravel()[0].compute()
    assert first.base is None
    assert first.shape == (10, 2)


def test_processes_scheduler_keeps_the_original_graph(x: da.Array) -> None:
    y = _doubled(x)
    with dask.config.set(scheduler="processes"):
        assert scheduler_ships_tasks()
        result = y.compute()
    np.testing.assert_array_equal(result, 2 * x.compute())


def test_rows_handed_out_once_then_forgotten() -> None:
    out = SharedOutput((4, 3), np.float32)
    a, b = out.rows(0, 2), out.rows(2, 2)
    assert a.base is b.base
    assert a.base.shape == (4, 3)
    assert a.dtype == np.float32
    c = out.rows(0, 2)  # every row handed out: the next request starts a new output
    assert c.base is not a.base
    d = out.rows(0, 2)  # the same rows asked for twice (a task run again): never the same memory
    assert d.base is not c.base


def test_a_copy_in_another_process_gives_rows_of_their_own() -> None:
    out = SharedOutput((4, 3), np.float64)
    copy = pickle.loads(pickle.dumps(out))
    assert copy.rows(0, 4).base.shape == (4, 3)  # same process: shared
    copy._pid = -1  # as on a dask.distributed worker
    rows = copy.rows(0, 2)
    assert rows.shape == (2, 3)
    assert rows.base is None


def test_finalize_concatenates_anything_but_the_rows_in_order() -> None:
    base = np.empty((6, 2))  # owns its memory, as SharedOutput's array
    base[:] = np.arange(12.0).reshape(6, 2)
    assert _finalize([[base[:3]], [base[3:]]]) is base  # nested as dask's keys: (row block, column block)
    swapped = _finalize([[base[3:]], [base[:3]]])
    assert swapped is not base
    assert swapped.tolist() == np.concatenate([base[3:], base[:3]]).tolist()
    partial = _finalize([[base[:3]], [base[3:5]]])
    assert partial is not base
    assert partial.shape == (5, 2)


def test_wrap_refuses_chunks_along_other_axes() -> None:
    with pytest.raises(InvalidValueError, match="first axis only"):
        share_output(da.zeros((4, 4), chunks=(2, 2)), lambda target: da.zeros(4))


def test_xarray_mixes_it_with_plain_dask_arrays(x: da.Array, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import xarray as xr

    y = _doubled(x)
    ds = xr.Dataset({"y": (("i", "j"), y), "x": (("i", "j"), x), "m": (("i", "j"), y > 10)})
    ds.to_zarr(tmp_path / "a.zarr", mode="w-", consolidated=False)
    back = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)
    np.testing.assert_array_equal(back["y"].values, 2 * x.compute())
    np.testing.assert_array_equal(ds.compute()["y"].values, 2 * x.compute())
