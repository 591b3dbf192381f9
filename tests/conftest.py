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


#: a chiral tripod in reference pixels: (centre xyz, sigma, amplitude) of Gaussian blobs;
#: arms of different lengths along +x, +y and -z, so no rotation maps it onto its mirror image
CHIRAL_BLOBS = (
    ((0.0, 0.0, 0.0), 1.2, 0.3),
    ((5.0, 0.0, 0.0), 1.3, 1.0),
    ((0.0, 3.5, 0.0), 1.2, 1.0),
    ((0.0, 0.0, -3.5), 1.2, 1.0),
)


def _chiral_template(u: np.ndarray) -> np.ndarray:
    """The tripod at (..., 3) xyz reference coordinates (pixels)."""
    out = np.zeros(u.shape[:-1])
    for centre, sigma, amplitude in CHIRAL_BLOBS:
        d = u - np.asarray(centre)
        out += amplitude * np.exp(-(d * d).sum(-1) / (2 * sigma * sigma))
    return out


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic tomogram with a chiral template planted at known poses, on disk.

    32 particles on a jittered 4 x 4 x 2 grid (sub-pixel positions, uniform random
    orientations, every box inside) in a (64, 128, 128) float32 volume at 10 Å/px with
    Gaussian noise 0.15. Each
    particle is the template evaluated analytically at ``R.T @ (x - p)`` (cryotypes: the
    orientation turns the reference into the tomogram). Keys: ``volume``, ``poses``,
    ``template`` (on the box grid, (z, y, x)), ``template_at`` (the function), ``box``
    (20), ``mrc`` and ``zarr`` paths.
    """
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(7)
    shape = (64, 128, 128)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    position = (
        np.array([22.0, 22.0, 22.0])
        + grid * np.array([28.0, 28.0, 20.0])
        + rng.uniform(-2, 2, size=grid.shape)
    )
    rotation = Rotation.random(len(position), random_state=11)
    volume = rng.normal(0.0, 0.15, size=shape).astype(np.float32)
    reach = 11
    offsets = np.stack(np.meshgrid(*(np.arange(-reach, reach + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
    for p, matrix in zip(position, rotation.as_matrix(), strict=True):
        voxels = np.floor(p).astype(int) + offsets  # xyz
        voxels = voxels[((voxels >= 0) & (voxels < np.array(shape[::-1]))).all(axis=1)]
        volume[voxels[:, 2], voxels[:, 1], voxels[:, 0]] += _chiral_template((voxels - p) @ matrix)
    box = 20
    u = np.stack(np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij"), -1)[..., ::-1].astype(float)
    poses = cryoxr.make_poseset(position, orientation=rotation, experiment_id="TS_01", pixel_spacing=10.0)
    tomo = cryoxr.Tomogram.from_array(volume, pixel_spacing=10.0, experiment_id="TS_01")
    folder = tmp_path_factory.mktemp("planted")
    mrc = cryoxr.io.write_mrc(tomo, folder / "TS_01.mrc")
    zarr = cryoxr.io.write_ome_zarr(tomo, folder / "TS_01.ome.zarr", chunks=(16, 32, 32), levels=1)
    return {
        "volume": volume,
        "poses": poses,
        "template": _chiral_template(u),
        "template_at": _chiral_template,
        "box": box,
        "mrc": mrc,
        "zarr": zarr,
    }
