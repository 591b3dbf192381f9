"""The built-in demo: synthetic tomogram, tilt series and a million particles, end to end.

:func:`run_demo` is what ``cryoxr demo`` runs. Everything is generated here, nothing is
downloaded: a bin-8 tomogram with particles planted as Gaussian blobs, a 41-tilt
dose-symmetric tilt-series alignment, N particles with random orientations. It writes
them in the field's formats, projects every particle into every tilt (streamed to zarr),
counts the particles in the field of view per tilt with the fused kernel, extracts
sub-tilts of a sample from a rendered tilt series and checks that the mean patch peaks at
the box centre, then draws a figure. Each step is timed.

Examples
--------
>>> import tempfile
>>> from cryoxr.demo import run_demo
>>> summary = run_demo(n_particles=2_000, out_dir=tempfile.mkdtemp(), progress=False, figure=False)
>>> summary.n_particles, summary.n_tilts
(2000, 41)
>>> summary.peak_offset_px <= 0.5
True
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryoxr.errors import FileExistsNoOverwriteError, InvalidValueError
from cryoxr.extraction import extract_subtilts
from cryoxr.field_of_view import count_in_field_of_view
from cryoxr.image import Image, Tomogram
from cryoxr.poseset import make_poseset, rescale
from cryoxr.progress import progress as show_progress
from cryoxr.projection import project, project_into
from cryoxr.projection_model import PMDL, PTC, make_projection_model
from cryoxr.reconstruction import reconstruct_particle

__all__ = ["DemoSummary", "make_demo_data", "run_demo"]

#: bin-1 geometry of the simulated data set (a typical K3 tilt series at 1.35 Å/px)
BIN1_SPACING = 1.35
BIN1_TOMOGRAM = (4096, 4096, 1024)
TOMOGRAM_BINNING = 8
TILT_BINNING = 4
EXPERIMENT = "TS_01"


@dataclass
class DemoSummary:
    """What :func:`run_demo` did, with timings in seconds."""

    n_particles: int
    n_tilts: int
    tomogram_shape: tuple[int, ...]
    tilt_image_shape: tuple[int, int]
    in_field_of_view: np.ndarray
    peak_offset_px: float
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: correlation of the reconstructed particle with the planted one (inside the mask)
    map_correlation: float = float("nan")

    def format(self) -> str:
        """A human-readable report."""
        total = self.n_particles * self.n_tilts
        project_s = self.timings.get("project -> zarr", float("nan"))
        fov_s = self.timings.get("field-of-view count (fused)", float("nan"))
        lines = [
            "cryoxr demo",
            f"  tomogram        {' x '.join(map(str, self.tomogram_shape))} voxels (z, y, x), "
            f"{BIN1_SPACING * TOMOGRAM_BINNING:g} Å/px",
            f"  tilt series     {self.n_tilts} tilts of {self.tilt_image_shape[1]} x {self.tilt_image_shape[0]} px, "
            f"{BIN1_SPACING * TILT_BINNING:g} Å/px",
            f"  particles       {self.n_particles:,}",
            f"  projected       {total:,} particle-tilts in {project_s:.2f} s "
            f"({total / project_s / 1e6:.0f} M/s, streamed to zarr)",
            f"  field of view   {fov_s:.2f} s fused count; per tilt {int(self.in_field_of_view.min()):,} "
            f"(at +-60 deg) to {int(self.in_field_of_view.max()):,} (near 0 deg) particles inside",
            f"  sub-tilts       mean patch peaks {self.peak_offset_px:.2f} px from the box centre (<= 0.5 expected)",
            f"  particle map    {RECONSTRUCT_SAMPLE} particles' RELION-style subtilts back-projected: correlation "
            f"{self.map_correlation:.3f} with the planted particle",
            "  timings (s)     " + ", ".join(f"{k} {v:.2f}" for k, v in self.timings.items()),
        ]
        if self.files:
            lines.append("  wrote")
            width = max(len(name) for name in self.files) + 2
            lines.extend(f"    {name:<{width}}{path}" for name, path in self.files.items())
        return "\n".join(lines)


def _tilt_angles() -> np.ndarray:
    """41 tilts, -60..60 in 3-degree steps, in dose-symmetric acquisition order."""
    order = [0.0]
    for step in range(1, 21):
        order.extend([step * 3.0, -step * 3.0])
    return np.array(order)


def make_demo_data(n_particles: int, *, seed: int = 0, chunks: int = 100_000) -> dict[str, Any]:
    """Build the demo's poses, alignment and (lazy) tomogram.

    Returns
    -------
    dict
        ``poses`` (PoseSet in bin-8 tomogram pixels), ``model`` (ProjectionModel at bin 4),
        ``tomogram`` (lazy Tomogram), ``tomogram_dimensions`` (xyz, bin 8),
        ``tilt_image_shape`` ((ny, nx), bin 4), ``tilt_image_center`` (xy).
    """
    rng = np.random.default_rng(seed)
    dims = np.array(BIN1_TOMOGRAM) // TOMOGRAM_BINNING
    spacing = BIN1_SPACING * TOMOGRAM_BINNING
    # particles in the middle 80% of the slab, where a lamella has material
    low, high = dims * [0.02, 0.02, 0.25], dims * [0.98, 0.98, 0.75]
    position = rng.uniform(low, high, size=(n_particles, 3))
    shift = rng.normal(0, 0.3, size=(n_particles, 3))
    orientation = Rotation.random(n_particles, rng=rng) if n_particles else np.zeros((0, 4))
    poses = make_poseset(
        position,
        shift=shift,
        orientation=orientation,
        experiment_id=EXPERIMENT,
        pixel_spacing=spacing,
        source="cryoxr demo",
        extra={"score": rng.uniform(0, 1, n_particles), "class_number": rng.integers(1, 4, n_particles)},
        chunks=chunks,
    )
    angles = _tilt_angles()
    n = len(angles)
    tilt_shape = (BIN1_TOMOGRAM[1] // TILT_BINNING, BIN1_TOMOGRAM[0] // TILT_BINNING)
    model = make_projection_model(
        rotation_x=0.0,
        rotation_y=angles,
        rotation_z=85.0 + rng.normal(0, 0.2, n),
        dx=rng.normal(0, 3, n),
        dy=rng.normal(0, 3, n),
        experiment_id=EXPERIMENT,
        pixel_spacing=BIN1_SPACING * TILT_BINNING,
        source="cryoxr demo",
        # what a RELION 5 project knows about each tilt, as columns (they travel with the model)
        extra={
            PTC.TOMOGRAM_SIZE_X: BIN1_TOMOGRAM[0] // TILT_BINNING,
            PTC.TOMOGRAM_SIZE_Y: BIN1_TOMOGRAM[1] // TILT_BINNING,
            PTC.TOMOGRAM_SIZE_Z: BIN1_TOMOGRAM[2] // TILT_BINNING,
            PTC.IMAGE_SIZE_X: tilt_shape[1],
            PTC.IMAGE_SIZE_Y: tilt_shape[0],
            PTC.TILT_IMAGE_CENTER_X: tilt_shape[1] // 2,  # RELION's rule: int(N / 2)
            PTC.TILT_IMAGE_CENTER_Y: tilt_shape[0] // 2,
            PTC.DEFOCUS_U: 30_000.0 + rng.normal(0, 500, n),
            PTC.DEFOCUS_V: 29_500.0 + rng.normal(0, 500, n),
            PTC.DEFOCUS_ANGLE: 45.0,
            PTC.VOLTAGE: 300.0,
            PTC.SPHERICAL_ABERRATION: 2.7,
            PTC.AMPLITUDE_CONTRAST: 0.07,
            PTC.PRE_EXPOSURE: np.arange(n) * 3.0,  # 3 e/Å² per tilt, in acquisition order
            PTC.ACQUISITION_ORDER: np.arange(n),
        },
    )
    zyx = (int(dims[2]), int(dims[1]), int(dims[0]))
    tomogram = _synthetic_tomogram(zyx, position[:2000], spacing, seed)
    return {
        "poses": poses,
        "model": model,
        "tomogram": tomogram,
        "tomogram_dimensions": tuple(int(d) for d in dims),
        "tilt_image_shape": tilt_shape,
        "tilt_image_center": (tilt_shape[1] // 2, tilt_shape[0] // 2),
    }


def _tomogram_block(
    block_info: dict[Any, Any] | None, blobs: np.ndarray, seed: int, sigma: float
) -> np.ndarray:
    """One chunk of the synthetic tomogram: noise plus Gaussian blobs at particle positions."""
    assert block_info is not None
    info = block_info[None]
    (z0, z1), (y0, y1), (x0, x1) = info["array-location"]
    rng = np.random.default_rng([seed, *(loc[0] for loc in info["array-location"])])
    out = rng.normal(0, 0.3, size=(z1 - z0, y1 - y0, x1 - x0)).astype(np.float32)
    reach = 4 * sigma
    near = blobs[
        (blobs[:, 0] > x0 - reach)
        & (blobs[:, 0] < x1 + reach)
        & (blobs[:, 1] > y0 - reach)
        & (blobs[:, 1] < y1 + reach)
        & (blobs[:, 2] > z0 - reach)
        & (blobs[:, 2] < z1 + reach)
    ]
    r = int(np.ceil(reach))
    for x, y, z in near:  # each blob touches only its (2r+1)^3 neighbourhood
        cx, cy, cz = round(x), round(y), round(z)
        lo = np.maximum([cz - r - z0, cy - r - y0, cx - r - x0], 0)
        hi = np.minimum([cz + r + 1 - z0, cy + r + 1 - y0, cx + r + 1 - x0], out.shape)
        if (hi <= lo).any():
            continue
        zz, yy, xx = np.ogrid[lo[0] + z0 : hi[0] + z0, lo[1] + y0 : hi[1] + y0, lo[2] + x0 : hi[2] + x0]
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * sigma**2))
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += blob.astype(np.float32)
    return out


def _synthetic_tomogram(
    shape: tuple[int, int, int], blobs: np.ndarray, spacing: float, seed: int
) -> Tomogram:
    array = da.map_blocks(
        _tomogram_block,
        blobs=blobs,
        seed=seed,
        sigma=1.5,
        chunks=da.core.normalize_chunks((64, 128, 128), shape),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    return Tomogram.from_array(array, pixel_spacing=spacing, experiment_id=EXPERIMENT, source="cryoxr demo")


def render_tilt_series(
    points: np.ndarray, shape: tuple[int, int], *, sigma: float = 1.2, seed: int = 0
) -> np.ndarray:
    """(T, ny, nx) float32 tilt images with a Gaussian spot at each projected (particle, tilt) point."""
    n_tilts = points.shape[1]
    rng = np.random.default_rng(seed)
    images = np.zeros((n_tilts, *shape), dtype=np.float32)
    for t in range(n_tilts):  # one scatter + one filter per tilt: 41 vectorised steps
        xy = points[:, t]
        inside = np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] <= shape[1] - 1)
        inside &= (xy[:, 1] >= 0) & (xy[:, 1] <= shape[0] - 1)
        ix = np.rint(xy[inside]).astype(np.int64)
        delta = np.zeros(shape, dtype=np.float32)
        np.add.at(delta, (ix[:, 1], ix[:, 0]), 1.0)
        images[t] = ndimage.gaussian_filter(delta, sigma) * (2 * np.pi * sigma**2)
        images[t] += rng.normal(0, 0.05, size=shape).astype(np.float32)
    return images


def _timed(timings: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = work()
    timings[name] = time.perf_counter() - start
    return result


def run_demo(
    n_particles: int = 1_000_000,
    out_dir: str | Path = "cryoxr-demo",
    *,
    seed: int = 0,
    progress: bool = True,
    figure: bool = True,
    write_files: bool = True,
    overwrite: bool = False,
) -> DemoSummary:
    """Run the end-to-end demo and return what it measured.

    Parameters
    ----------
    n_particles
        Particles to simulate and project.
    out_dir
        Folder for the outputs (created).
    seed
        Random seed.
    progress
        Show dask progress bars.
    figure
        Draw PNG figures into ``out_dir/figures`` (needs matplotlib).
    write_files
        Write the tomogram (OME-Zarr), particles (RELION 5 STAR) and alignment.
    overwrite
        Replace the outputs of an earlier run in ``out_dir``. Without it, an ``out_dir``
        that exists and is not empty is refused before anything is computed (other files
        in the folder are never touched either way).

    Raises
    ------
    FileExistsNoOverwriteError
        ``out_dir`` exists, is not empty, and ``overwrite`` is false.
    InvalidValueError
        ``n_particles`` is negative.
    """
    n_particles = operator.index(n_particles)
    if n_particles < 0:
        raise InvalidValueError(f"run_demo: n_particles must be >= 0, found {n_particles}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsNoOverwriteError(
            f"{out}: exists and is not a folder; the demo writes a folder of files"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsNoOverwriteError(
            f"{out}: exists and is not empty; pass overwrite=True to replace the outputs of an earlier demo "
            "(other files in it are left alone), or choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data = _timed(timings, "generate", lambda: make_demo_data(n_particles, seed=seed))
    poses: xr.Dataset = data["poses"]
    model: pd.DataFrame = data["model"]
    dims, centre, tilt_shape = (
        data["tomogram_dimensions"],
        data["tilt_image_center"],
        data["tilt_image_shape"],
    )
    files: dict[str, Path] = {}
    if write_files:
        files.update(
            _timed(
                timings,
                "write files",
                lambda: _write_inputs(data, out, overwrite=overwrite, progress=progress),
            )
        )

    store = out / "projected.zarr"

    def _store() -> None:
        # positions of random particles do not compress (zstd gains ~10% at 5x the time):
        # store them raw, each task's GEMM writing straight into its rows of the target
        target = zarr.create_array(
            store,
            shape=(n_particles, len(model), 2),
            dtype=np.float64,
            chunks=(max(1, min(100_000, n_particles)), len(model), 2),
            compressors=None,
            overwrite=overwrite,
        )
        with show_progress(progress), dask.config.set(scheduler="threads"):
            project_into(
                target, poses, model, tomogram_dimensions=dims, tilt_image_center=centre, chunks=100_000
            )

    _timed(timings, "project -> zarr", _store)
    files["projected"] = store

    def _count() -> np.ndarray:
        counts = count_in_field_of_view(
            poses, model, tomogram_dimensions=dims, tilt_image_center=centre, image_shape=tilt_shape, margin=0
        )
        with dask.config.set(scheduler="threads"):
            return np.asarray(counts.values)

    fov = _timed(timings, "field-of-view count (fused)", _count)

    sample = poses.isel(particle=slice(0, min(2000, n_particles)))

    def _extract() -> float:
        sub = project(sample, model, tomogram_dimensions=dims, tilt_image_center=centre)
        points = np.asarray(sub.values)
        sub = sub.copy(data=points)  # extraction and the figure reuse these values, not the graph
        tilt_series = Image.from_array(
            render_tilt_series(points, tilt_shape, seed=seed),
            stack=True,
            pixel_spacing=float(model.pixel_spacing.iloc[0]),
            experiment_id=EXPERIMENT,
        )
        box = 16
        with dask.config.set(scheduler="threads"):
            mean = extract_subtilts(tilt_series, sub, box_size=box).mean("particle", skipna=True).values
        worst = 0.0
        yy, xx = np.mgrid[0:box, 0:box]
        for patch in mean:
            w = np.where(patch > np.nanmax(patch) * 0.3, patch, 0.0)
            cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
            worst = max(worst, float(np.hypot(cx - box // 2, cy - box // 2)))
        if figure:
            files.update(_draw(data, tilt_series, sub, out / "figures"))
        return worst

    peak = _timed(timings, "extract + check", _extract) if n_particles else 0.0
    sample = poses.isel(particle=slice(0, min(RECONSTRUCT_SAMPLE, n_particles)))
    correlation = (
        _timed(
            timings,
            "subtilts -> map",
            lambda: _reconstruct(
                data, sample, out, seed, figure, files, write=write_files, overwrite=overwrite
            ),
        )
        if n_particles
        else float("nan")
    )
    return DemoSummary(
        n_particles=n_particles,
        n_tilts=len(model),
        tomogram_shape=tuple(data["tomogram"].shape),
        tilt_image_shape=tilt_shape,
        in_field_of_view=fov,
        peak_offset_px=peak,
        files=files,
        timings=timings,
        map_correlation=correlation,
    )


#: the planted particle of the reconstruction step: Gaussian blobs at (x, y, z) voxel offsets
#: from the centre of a RECONSTRUCT_BOX map at the tilt-series pixel size, with amplitudes
#: (an asymmetric, chiral arrangement, so a wrong hand or axis shows)
PLANTED_BLOBS = np.array(
    [
        [0.0, 0.0, 0.0, 1.0],
        [5.0, 0.0, 0.0, 0.8],
        [0.0, 7.0, 0.0, 0.7],
        [0.0, 0.0, 4.0, 0.6],
        [-4.0, -3.0, 2.0, 0.5],
    ]
)
PLANTED_SIGMA = 1.5  # voxels
RECONSTRUCT_BOX = 32
RECONSTRUCT_SAMPLE = 200


def planted_particle(box: int = RECONSTRUCT_BOX) -> np.ndarray:
    """The (z, y, x) map of the demo's planted particle, centred at voxel ``box // 2``."""
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    out = np.zeros((box,) * 3)
    for bx, by, bz, a in PLANTED_BLOBS:
        out += a * np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * PLANTED_SIGMA**2))
    return out


def _render_particles(
    points: np.ndarray, amplitude: np.ndarray, shape: tuple[int, int], seed: int
) -> np.ndarray:
    """(T, ny, nx) tilt images: each projected blob a dark Gaussian spot (the blob's line
    integral, sampled at pixel centres in an 11-pixel window), on faint noise."""
    rng = np.random.default_rng([seed, 1])
    noise = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(0.02)
    images = np.empty((points.shape[1], *shape), dtype=np.float32)
    weight = -amplitude * np.sqrt(2 * np.pi) * PLANTED_SIGMA
    window = np.arange(-5, 6)
    for t in range(points.shape[1]):
        xy = points[:, t]
        ok = np.isfinite(xy).all(axis=1)
        ok[ok] = (xy[ok] >= 5).all(axis=1) & (xy[ok, 0] < shape[1] - 6) & (xy[ok, 1] < shape[0] - 6)
        cols = np.rint(xy[ok, 0]).astype(np.int64)[:, None] + window  # (n, 11)
        rows = np.rint(xy[ok, 1]).astype(np.int64)[:, None] + window
        gx = np.exp(-((cols - xy[ok, 0, None]) ** 2) / (2 * PLANTED_SIGMA**2))
        gy = np.exp(-((rows - xy[ok, 1, None]) ** 2) / (2 * PLANTED_SIGMA**2))
        values = weight[ok, None, None] * gy[:, :, None] * gx[:, None, :]
        images[t] = np.roll(noise, 37 * t, axis=1)  # one noise field, shifted per tilt
        np.add.at(images[t], (rows[:, :, None], cols[:, None, :]), values.astype(np.float32))
    return images


def _reconstruct(
    data: dict[str, Any],
    sample: xr.Dataset,
    out: Path,
    seed: int,
    figure: bool,
    files: dict[str, Path],
    *,
    write: bool,
    overwrite: bool,
) -> float:
    """Render the planted particle at a sample's poses into a tilt series, cut RELION-style
    subtilts (no CTF: the rendering has none; contrast inverted as RELION does), write them
    as a RELION 5 2D-stack set (``write``), back-project them into the particle's map;
    returns its correlation with the planted particle."""
    model: pd.DataFrame = data["model"]
    dims, centre, shape = data["tomogram_dimensions"], data["tilt_image_center"], data["tilt_image_shape"]
    tilt_spacing = float(model.pixel_spacing.iloc[0])
    n = sample.sizes["particle"]
    # blob centres in the tomogram (pixels of the poses), through each particle's orientation
    rotation = Rotation.from_quat(np.asarray(sample.orientation.values))
    at = np.asarray((sample["position"] + sample["shift"]).values)
    offsets = PLANTED_BLOBS[:, :3] * tilt_spacing / float(sample.attrs["pixel_spacing"])
    blobs = (at[:, None, :] + np.einsum("nij,kj->nki", rotation.as_matrix(), offsets)).reshape(-1, 3)
    points = make_poseset(blobs, experiment_id=EXPERIMENT, pixel_spacing=float(sample.attrs["pixel_spacing"]))
    with dask.config.set(scheduler="threads"):
        xy = np.asarray(project(points, model, tomogram_dimensions=dims, tilt_image_center=centre).values)
        amplitude = np.tile(PLANTED_BLOBS[:, 3], n)
        tilt_series = Image.from_array(
            _render_particles(xy, amplitude, shape, seed),
            stack=True,
            pixel_spacing=tilt_spacing,
            experiment_id=EXPERIMENT,
        )
        projected = project(sample, model, tomogram_dimensions=dims, tilt_image_center=centre)
        subtilts = extract_subtilts(
            tilt_series, projected, box_size=RECONSTRUCT_BOX, mode="relion", projection_model=model,
            ctf=False, dose_weight=False,
        )  # fmt: skip
        subtilts = subtilts.persist()  # written and back-projected: cut once
        if write:
            files["subtilts (RELION 5 job)"] = _write_subtilts(
                subtilts, sample, data, out, overwrite=overwrite
            )
        maps = reconstruct_particle(subtilts, sample, model).compute()
    reference = planted_particle()
    c = np.arange(RECONSTRUCT_BOX) - RECONSTRUCT_BOX // 2
    inside = (
        np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
        < RECONSTRUCT_BOX // 2 - 4
    )
    correlation = float(np.corrcoef(maps.merged.values[inside], reference[inside])[0, 1])
    if figure:
        import matplotlib.pyplot as plt  # optional: needs the plot extra

        from cryoxr import plot

        folder = out / "figures"
        folder.mkdir(exist_ok=True)
        fig = plot.plot_map_slices(
            {
                "reconstruction": maps.merged,
                "planted particle": xr.DataArray(
                    reference, dims=("z", "y", "x"), attrs={"pixel_spacing": tilt_spacing}
                ),
            },
            title=f"{n} particles x {len(model)} tilts back-projected (correlation {correlation:.3f})",
        )
        path = folder / "particle_map.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files["particle map figure"] = path
    return correlation


def _write_subtilts(
    subtilts: xr.DataArray, sample: xr.Dataset, data: dict[str, Any], out: Path, *, overwrite: bool
) -> Path:
    """The sample's subtilts as RELION 5 writes them (``relion_tomo_subtomo --stack2d``)."""
    from cryoxr.io import write_relion_subtilts

    tilt_spacing = float(data["model"].pixel_spacing.iloc[0])
    ratio = float(sample.attrs["pixel_spacing"]) / tilt_spacing
    sizes = {EXPERIMENT: tuple(round(d * ratio) for d in data["tomogram_dimensions"])}
    folder = out / "subtilts"
    write_relion_subtilts(
        subtilts, rescale(sample, tilt_spacing), folder, tomograms=sizes, overwrite=overwrite
    )
    return folder  # a RELION job folder: particles.star, optimisation_set.star, the stacks


def _write_inputs(data: dict[str, Any], out: Path, *, overwrite: bool, progress: bool) -> dict[str, Path]:
    """Write the demo inputs in the field's formats (the IO layer, imported here only)."""
    from cryoxr.io import (
        write_imod_alignment,
        write_ome_zarr,
        write_relion_particles,
        write_relion_tilt_series,
    )

    model: pd.DataFrame = data["model"]
    tilt_spacing = float(model.pixel_spacing.iloc[0])
    # RELION keeps particles in pixels of the tilt series: rescale the bin-8 poses
    poses = rescale(data["poses"], tilt_spacing)
    ratio = float(data["poses"].attrs["pixel_spacing"]) / tilt_spacing
    sizes = {EXPERIMENT: tuple(round(d * ratio) for d in data["tomogram_dimensions"])}
    files = {
        "tomogram": out / f"{EXPERIMENT}.ome.zarr",
        "particles": out / "particles.star",
        "tilt series": out / "tomograms.star",
        "imod": out / f"{EXPERIMENT}.xf",
    }
    with show_progress(progress), dask.config.set(scheduler="threads"):
        write_ome_zarr(data["tomogram"], files["tomogram"], levels=3, overwrite=overwrite)
        write_relion_particles(poses, files["particles"], version=5, tomograms=sizes, overwrite=overwrite)
    written = write_relion_tilt_series(model, files["tilt series"], tomograms=sizes, overwrite=overwrite)
    files.update({f"tilt series ({path.stem})": path for path in written[1:]})
    # IMOD's .xf/.tlt hold the alignment only: the per-tilt optics stay in the RELION files
    geometry = model[[c for c in model.columns if c in PMDL.ALL]]
    files["imod tilt angles"] = out / f"{EXPERIMENT}.tlt"
    write_imod_alignment(geometry, files["imod"], files["imod tilt angles"], overwrite=overwrite)
    return files


def _draw(data: dict[str, Any], tilt_series: Image, projected: xr.DataArray, folder: Path) -> dict[str, Path]:
    """One PNG per picture: tomogram slices, the 0-degree tilt with particles, orientations, tilt scheme."""
    import matplotlib.pyplot as plt  # optional: needs the plot extra

    from cryoxr import plot

    folder.mkdir(exist_ok=True)
    model = data["model"]
    zero_tilt = int(np.argmin(np.abs(model.rotation_y.to_numpy())))
    n_drawn, n_total = projected.sizes["particle"], data["poses"].sizes["particle"]
    angle = float(model.rotation_y.iloc[zero_tilt])
    # the centre, a quarter of the width across: the rendered spots under the markers show
    ny, nx = data["tilt_image_shape"]
    spacing = float(model.pixel_spacing.iloc[0])
    cx, cy, half = nx / 2 * spacing, ny / 2 * spacing, nx / 8 * spacing
    particles = plot.plot_projected(
        tilt_series,
        projected,
        image=zero_tilt,
        image_shape=data["tilt_image_shape"],
        title=f"{EXPERIMENT}, tilt {angle:+g}° (image {zero_tilt}): a sample of {n_drawn:,} "
        f"of {n_total:,} particles, centre",
        region=(cx - half, cx + half, cy - half, cy + half),
    )
    figures = {
        "slices": plot.plot_orthoslices(data["tomogram"]),
        "particles": particles,
        "orientations": plot.plot_orientations(data["poses"]),
        "tilt scheme": plot.plot_tilt_scheme(data["model"]),
    }
    paths = {}
    for name, fig in figures.items():
        path = folder / f"{name.replace(' ', '_')}.png"
        fig.savefig(path, dpi=100)
        paths[f"{name} figure"] = path
        plt.close(fig)
    return paths
