"""Shared fixtures: canonical objects, eager and chunked twins, a compute-counting scheduler."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cryoxr
from cryoxr.testing import random_poses


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture
def tilt_model() -> pd.DataFrame:
    """41 tilts, -60..60, tilt axis 85 deg, small shifts: a typical dose-symmetric series."""
    angles = np.linspace(-60, 60, 41)
    return cryoxr.make_projection_model(
        rotation_x=0.3,
        rotation_y=angles,
        rotation_z=85.0,
        dx=np.sin(np.deg2rad(angles)) * 3.0,
        dy=np.cos(np.deg2rad(angles)) * -2.0,
        experiment_id="TS_01",
        pixel_spacing=1.35,
        source="synthetic",
    )


@pytest.fixture
def poses(rng: np.random.Generator) -> xr.Dataset:
    """1,000 particles in a 4096 x 4096 x 1000 bin-1 tomogram, numpy-backed."""
    return random_poses(rng, 1000)


@pytest.fixture(params=["numpy", "dask"])
def poses_twin(request: pytest.FixtureRequest, rng: np.random.Generator) -> xr.Dataset:
    """The same poses eager and chunked (chunks of 300 particles)."""
    return random_poses(rng, 1000, chunks=None if request.param == "numpy" else 300)


@pytest.fixture
def local_cluster() -> Iterator[Any]:
    """A ``distributed.Client`` on a 2-worker x 1-thread LocalCluster of processes.

    Every port is picked by the OS (the dashboard too: ``dashboard_address=None`` still
    tries 8787 and warns, which fails the suite where another program holds that port).
    """
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """Close the figures a test opened (plot tests draw many; each holds its pixels)."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="run the reader fuzzing with thousands of examples (same as CRYOXR_FUZZ_LONG=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # set before collection: tests/test_fuzz_readers.py reads it at import
    if config.getoption("--fuzz-long", default=False):
        os.environ["CRYOXR_FUZZ_LONG"] = "1"
