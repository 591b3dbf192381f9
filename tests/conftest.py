"""Shared fixtures: canonical objects, eager and chunked twins, a compute-counting scheduler."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
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


_RELION5_GLOBAL_LABELS = [
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
]
_RELION5_TILT_LABELS = [
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
    "rlnCtfFigureOfMerit",
    "rlnTomoXTilt",
    "rlnTomoYTilt",
    "rlnTomoZRot",
    "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst",
]


def _relion5_project(
    folder: Path,
    name: str,
    *,
    size: tuple[int, int, int],
    image: tuple[int, int],
    px: float,
    tilt: float = 0.0,
) -> Path:
    """A RELION 5 project laid out as RELION writes it (labels of its own test project),
    with the tilt images on disk (2D MRC files, int8) so that their size can be read."""
    import mrcfile

    (folder / "frames").mkdir(parents=True, exist_ok=True)
    (folder / "tilt_series").mkdir(exist_ok=True)
    rows = []
    angles = [0.0, 3.0, -3.0, -6.0, 6.0, 60.0]
    for i, angle in enumerate(angles):
        mic = f"frames/{name}_{i:03d}.mrc"
        with mrcfile.new(folder / mic) as mrc:
            mrc.set_data(np.zeros((image[1], image[0]), dtype=np.int8))
        rows.append(
            f"{mic} {i + 1} {angle:.2f} {3.0 * i:.1f} {39000 + 100 * i:.1f} {38500 + 100 * i:.1f} {50 + i:.1f} "
            f"0.0 1.0 {-10.0 * i:.1f} 0.03 {0.1 * i:.3f} {angle + 0.5 + tilt:.3f} {85 + 0.01 * i + tilt:.3f} {i * 1.35:.4f} "
            f"{-2.7:.4f}"
        )
    (folder / "tilt_series" / f"{name}.star").write_text(
        f"\n# version 50001\n\ndata_{name}\n\nloop_\n"
        + "".join(f"_{label} #{i + 1}\n" for i, label in enumerate(_RELION5_TILT_LABELS))
        + "\n".join(rows)
        + "\n"
    )
    path = folder / "tomograms.star"
    path.write_text(
        "\n# version 50001\n\ndata_global\n\nloop_\n"
        + "".join(f"_{label} #{i + 1}\n" for i, label in enumerate(_RELION5_GLOBAL_LABELS))
        + f"{name} tilt_series/{name}.star 300.0 2.7 0.1 {px / 2} -1.0 {px} 8.0 {size[0]} {size[1]} {size[2]}\n"
    )
    return path


@pytest.fixture
def relion5_project() -> Any:
    """Writes a RELION 5 project (tomograms.star, tilt_series/<name>.star, frames/*.mrc):
    ``relion5_project(folder, name, size=(X, Y, Z), image=(nx, ny), px=1.35, tilt=0.0)``.

    The labels are those of RELION 5's own test project (``src/tomography_python_programs/
    _tests/test_project_directory``); the tilt images are 2D int8 MRC files of the given size.
    """
    return _relion5_project


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
