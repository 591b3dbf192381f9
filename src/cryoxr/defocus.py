"""Per-particle, per-tilt defocus: the tilt's defocus plus the particle's depth, lazily.

A particle above or below the specimen centre sits at another height in the beam in
every tilt, so its defocus differs from the tilt's central defocus. RELION 5 computes it
in ``Tomogram::getCtf`` (``src/jaz/tomography/tomogram.cpp``) as::

    depth  = (P_t [p, 1])_z - (P_t [c, 1])_z     # Tomogram::getDepthOffset, bin-1 pixels
    dz     = rlnTomoHand * pixel_size * rlnTomoDefocusSlope * depth
    defocus_u = rlnDefocusU + dz,  defocus_v = rlnDefocusV + dz

with ``P_t`` the tilt's projection matrix (its third row: the depth along the beam), ``p``
the particle position (RELION's ``getPosition``: origins applied, i.e. cryoxr's
``position + shift``) and ``c = (X / 2.0, Y / 2.0, Z / 2.0)`` the tomogram centre
(``TomogramSet::loadTomogram``; note ``N / 2.0``, where the rotation centre is
``int(N / 2)``: the two differ by half a pixel for odd sizes, and the depth is measured
from ``c``). cryoxr's :func:`particle_defocus` is that formula on the model's columns
(``defocus_u``, ``defocus_v``, ``defocus_handedness``, ``pixel_spacing``, the tomogram
size), run as one GEMM per chunk of particles like :func:`cryoxr.project`.

Worked numbers: 2 Å/px, tomogram 100 x 100 x 50 (centre z = 25 px), a particle 100 Å
above it (z = 75 px), tilt defocus 20,000 Å, handedness -1: at 0 degrees the depth is
100 Å and the defocus 19,900 Å; at 60 degrees about y the depth is
``cos(60) * 100 = 50`` Å and the defocus 19,950 Å.

Examples
--------
>>> import cryoxr
>>> model = cryoxr.make_projection_model(rotation_y=[0.0, 60.0], experiment_id="t", pixel_spacing=2.0,
...     defocus_u=20000.0, defocus_v=19000.0, defocus_handedness=-1,
...     tomogram_size_x=100, tomogram_size_y=100, tomogram_size_z=50)
>>> poses = cryoxr.make_poseset([[50.0, 50.0, 75.0]], experiment_id="t", pixel_spacing=2.0)
>>> d = cryoxr.particle_defocus(poses, model)
>>> d.defocus_u.values.round(6).tolist(), d.defocus_v.values.round(6).tolist()
([[19900.0, 19950.0]], [[18900.0, 18950.0]])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.geometry import ExperimentGeometry, PerExperiment, experiment_geometries, pack_operators
from cryoxr.poseset import validate_poseset
from cryoxr.projection import _check_float, _kernel_inputs, _particle_chunks, _project_block, _Projection
from cryoxr.projection_model import PTC

__all__ = ["particle_defocus"]

PerExperimentNumber = float | Mapping[str, float]


def _number(value: PerExperimentNumber | None, eid: str) -> float | None:
    if isinstance(value, Mapping):
        return None if eid not in value else float(value[eid])
    return None if value is None else float(value)


def _handedness(geometry: ExperimentGeometry, value: PerExperimentNumber | None) -> float:
    """The experiment's handedness: argument, else its ``defocus_handedness`` column."""
    eid = geometry.experiment_id
    explicit = _number(value, eid)
    if explicit is None and PTC.DEFOCUS_HANDEDNESS in geometry.rows.columns:
        values = geometry.rows[PTC.DEFOCUS_HANDEDNESS].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isfinite(values).all() and (values == values[0]).all():
            explicit = float(values[0])
    if explicit is None:
        raise InvalidValueError(
            f"particle_defocus: experiment {eid!r} has no defocus handedness: the projection model lacks "
            f"column {PTC.DEFOCUS_HANDEDNESS!r} (or holds NaN or several values there); pass "
            "defocus_handedness=+1 or -1 (RELION: rlnTomoHand)"
        )
    if explicit not in (-1.0, 1.0):
        raise InvalidValueError(
            f"particle_defocus: defocus_handedness of experiment {eid!r} must be +1 or -1, found {explicit}"
        )
    return explicit


def _tilt_defocus(geometry: ExperimentGeometry) -> np.ndarray:
    """(T, 2) defocus U, V of the experiment's tilts (Å)."""
    columns = [PTC.DEFOCUS_U, PTC.DEFOCUS_V]
    absent = [c for c in columns if c not in geometry.rows.columns]
    if absent:
        raise InvalidValueError(
            f"particle_defocus: experiment {geometry.experiment_id!r}: the projection model lacks column(s) "
            f"{absent}: per-tilt defocus in Å (RELION: rlnDefocusU / rlnDefocusV)"
        )
    return geometry.rows[columns].to_numpy(dtype=np.float64, na_value=np.nan)


def particle_defocus(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment | None = None,
    specimen_center: PerExperiment | None = None,
    defocus_handedness: PerExperimentNumber | None = None,
    defocus_slope: PerExperimentNumber = 1.0,
    chunks: int | None = None,
    dtype: Any = np.float64,
) -> xr.Dataset:
    """Defocus U and V of every particle in every tilt of its experiment, lazily (Å).

    ``defocus = tilt defocus + handedness * slope * pixel_spacing * depth``, with the
    depth along the beam measured from the tomogram centre ``size / 2.0`` (RELION 5's
    ``Tomogram::getDepthOffset`` and ``getCtf``; see the module docstring).

    Parameters
    ----------
    poses
        A PoseSet; the particle is at ``position + shift``.
    projection_model
        A ProjectionModel with ``defocus_u`` and ``defocus_v`` (Å) for every tilt of the
        poses' experiments; the rotations place the particle in the beam.
    tomogram_dimensions
        Tomogram size (x, y, z) in pixels of the poses, or a mapping; the depth is
        measured from ``size / 2.0``. Default: the model's ``tomogram_size_x/_y/_z``.
    specimen_center
        Measure the depth from this xyz point instead (pixels of the poses), or a mapping.
    defocus_handedness
        +1 or -1 (or a mapping); default: the model's ``defocus_handedness`` column.
    defocus_slope
        RELION's ``rlnTomoDefocusSlope`` (default 1.0, as RELION when the label is absent;
        the RELION reader keeps that label as a column when a file has it), or a mapping.
    chunks
        Particles per chunk, as for :func:`cryoxr.project`.
    dtype
        float64 (default) or float32.

    Returns
    -------
    xarray.Dataset
        Lazy ``defocus_u`` and ``defocus_v`` with dims ``("particle", "image")``, Å
        (underfocus positive); NaN for tilts an experiment lacks or whose defocus is NaN.

    Raises
    ------
    InvalidValueError
        Missing defocus columns, handedness or tomogram size (the message names the
        column and the argument), a handedness other than +1 / -1.

    Examples
    --------
    See the module docstring.
    """
    validate_poseset(poses, check_values=False)
    dtype = np.dtype(dtype)
    _check_float(dtype, "particle_defocus: dtype")
    geometries = experiment_geometries(
        poses,
        projection_model,
        tomogram_dimensions=tomogram_dimensions,
        tilt_image_center=(0.0, 0.0),  # the depth does not depend on it
        specimen_center=specimen_center,
        where="particle_defocus",
    )
    weights_per_tilt, bias_per_tilt = [], []
    for geometry in geometries:
        slope = _number(defocus_slope, geometry.experiment_id)
        if slope is None or not np.isfinite(slope):
            raise InvalidValueError(
                f"particle_defocus: defocus_slope must be a finite number for experiment "
                f"{geometry.experiment_id!r}, found {defocus_slope!r}"
            )
        scale = _handedness(geometry, defocus_handedness) * slope * geometry.pixel_spacing
        rotation = geometry.matrices[:, :3, :3]
        depth_weights = rotation[:, 2, :]  # (T, 3): the third row
        depth_bias = -(rotation @ geometry.depth_center)[:, 2]  # from RELION's centre, not int(N / 2)
        tilt = _tilt_defocus(geometry)
        weights_per_tilt.append(np.repeat(depth_weights[:, None, :] * scale, 2, axis=1))
        bias_per_tilt.append(depth_bias[:, None] * scale + tilt)
    weights, bias = pack_operators(geometries, weights_per_tilt, bias_per_tilt)
    experiments = [g.experiment_id for g in geometries]
    pchunks = _particle_chunks(poses, chunks)
    t_max = weights.shape[2] // 2
    inputs = _kernel_inputs(poses, experiments, weights, bias, dtype, pchunks)
    out = da.blockwise(
        _project_block,
        "pta",
        *inputs,
        dtype,
        None,
        concatenate=True,
        new_axes={"t": t_max, "a": 2},
        meta=np.empty((0, 0, 0), dtype=dtype),
    )
    coords: dict[str, Any] = {"image": np.arange(t_max)}
    if "experiment_id" in poses.coords:
        coords["experiment_id"] = ("particle", np.asarray(poses.coords["experiment_id"].values))
    attrs = {"units": "angstrom", "experiment_ids": experiments}
    recipe = _Projection(out.name, poses, experiments, inputs, weights, bias, dtype, pchunks)
    variables = {}
    for i, name in enumerate((PTC.DEFOCUS_U, PTC.DEFOCUS_V)):
        column = out[:, :, i]
        # what a fused kernel (the subtilt extraction) needs to compute this defocus itself
        column._cryoxr_defocus = (recipe, i, column.name)
        variables[name] = xr.DataArray(
            column, dims=("particle", "image"), coords=coords, attrs=attrs, name=name
        )
    return xr.Dataset(variables)


def defocus_of(defocus: xr.Dataset) -> _Projection | None:
    """How :func:`particle_defocus` made ``defocus`` (its U, V operators), when both
    variables are exactly the dask arrays it returned; else None."""
    recipes = []
    for i, name in enumerate((PTC.DEFOCUS_U, PTC.DEFOCUS_V)):
        data = defocus[name].data if name in defocus.data_vars else None
        tag = getattr(data, "_cryoxr_defocus", None)
        if not (isinstance(tag, tuple) and isinstance(data, da.Array) and tag[1:] == (i, data.name)):
            return None
        recipes.append(tag[0])
    return recipes[0] if recipes[0] is recipes[1] else None
