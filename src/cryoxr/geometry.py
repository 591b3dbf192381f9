"""The geometry of each experiment: tomogram size and centres, from arguments or columns.

:func:`cryoxr.project`, :func:`cryoxr.count_in_field_of_view`, :func:`cryoxr.project_into`
and :func:`cryoxr.particle_defocus` all need, per experiment, where the specimen rotates
(``specimen_center``) and where that centre lands in the tilt images
(``tilt_image_center``). Each comes from, in this order:

1. an explicit argument (one value for every experiment, or a mapping
   ``experiment_id -> value``), in pixels **of the poses** for the tomogram side
   (``tomogram_dimensions``, ``specimen_center``) and in tilt-image pixels for
   ``tilt_image_center``;
2. the ProjectionModel's per-tilt columns (:data:`cryoxr.projection_model.PER_TILT_COLUMNS`):
   ``specimen_center_x/_y/_z`` when a reader states its tool's centre (IMOD's
   ``(n - 1) / 2``), else ``tomogram_size_x/_y/_z`` in pixels of the model's
   ``pixel_spacing`` (specimen centre ``size // 2``, cryotypes' and RELION's rule), and
   ``tilt_image_center_x/_y`` per tilt;
3. nothing: a :class:`~cryoxr.errors.InvalidValueError` naming the experiment, the
   column(s) and the argument.

Units: the tomogram side of the model is in pixels of the model's ``pixel_spacing``. Poses
at another spacing (bin-4 picks on unbinned tilts) are scaled by
``ratio = poses.pixel_spacing / model.pixel_spacing`` into model pixels before the
matrices act, so binned and unbinned poses of the same particles project to the same tilt
pixels. Worked example: bin-1 tomogram 4095 x 4095 x 999 (columns), a particle at bin-1
(2047, 2047, 499), i.e. (511.75, 511.75, 124.75) at bin 4: both project at a 0-degree tilt
onto the tilt-image centre, because ``4 * 511.75 - 4095 // 2 = 0``. (An explicit
``tomogram_dimensions`` is taken in pixels of the poses and its centre ``dims // 2`` is
scaled, so ``(1024, 1024, 250)`` at bin 4 puts the centre at (2048, 2048, 500) bin-1
pixels: give the model its bin-1 size for RELION's exact centre.)

Examples
--------
>>> import cryoxr
>>> model = cryoxr.make_projection_model(rotation_y=[0.0], experiment_id="t", pixel_spacing=1.35,
...     tomogram_size_x=4095, tomogram_size_y=4095, tomogram_size_z=999,
...     tilt_image_center_x=2048, tilt_image_center_y=2048)
>>> binned = cryoxr.make_poseset([[511.75, 511.75, 124.75]], experiment_id="t", pixel_spacing=5.4)
>>> cryoxr.project(binned, model).values.round(9).tolist()
[[[2048.0, 2048.0]]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.poseset import experiment_ids
from cryoxr.projection_model import PMDL, PTC, rotation_matrices, validate_projection_model

__all__ = [
    "ExperimentGeometry",
    "PerExperiment",
    "experiment_geometries",
    "model_groups",
    "pack_operators",
    "projection_operators",
]

Vector = Sequence[float] | np.ndarray
PerExperiment = Vector | Mapping[str, Vector]


@dataclass(frozen=True)
class ExperimentGeometry:
    """One experiment's projection, resolved from arguments or columns.

    ``matrices`` (T, 4, 4) act on ``[x, y, z, 1]`` in pixels **of the model**: rows 0-1
    give tilt-image pixels, row 2 the depth along the beam about ``specimen_center``.
    Positions of the poses are first multiplied by ``ratio``.
    """

    experiment_id: str
    rows: pd.DataFrame
    matrices: np.ndarray
    ratio: float
    specimen_center: np.ndarray  #: (3,) model pixels, the rotation centre
    depth_center: np.ndarray  #: (3,) model pixels, RELION's ``Tomogram::centre`` (size / 2.0)
    pixel_spacing: float  #: Å per model pixel


def _entry(value: PerExperiment | None, eid: str) -> tuple[Vector | None, bool]:
    """``(value for eid, whether a mapping lacked it)``."""
    if value is None or not isinstance(value, Mapping):
        return value, False
    if eid not in value:
        return None, True
    return value[eid], False


def _vector(value: Vector, size: int, name: str, where: str, eid: str) -> np.ndarray:
    try:
        out = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (size,) or not np.isfinite(out).all():
        axes = ("x", "y", "z")[:size]
        raise InvalidValueError(
            f"{where}: {name} must be {size} finite numbers {axes}, found {value!r} (experiment {eid!r})"
        )
    return out


def _constant_columns(rows: pd.DataFrame, columns: Sequence[str]) -> np.ndarray | None:
    """The one finite value per column of this experiment's rows, else None."""
    if not all(c in rows.columns for c in columns):
        return None
    values = rows[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(values).all() or (values != values[0]).any():
        return None
    return values[0]


def _missing(where: str, eid: str, what: str, columns: Sequence[str], argument: str, lacked: bool) -> str:
    mapping = f"the {argument.split('=')[0]} mapping has no entry for it and " if lacked else ""
    return (
        f"{where}: experiment {eid!r} has no {what}: {mapping}the projection model lacks "
        f"column(s) {list(columns)} (or holds NaN there); pass {argument}"
    )


def _centres(
    rows: pd.DataFrame,
    eid: str,
    ratio: float,
    tomogram_dimensions: PerExperiment | None,
    specimen_center: PerExperiment | None,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(rotation centre, depth centre) in model pixels: argument, else columns, else error."""
    explicit, lacked_centre = _entry(specimen_center, eid)
    if explicit is not None:
        centre = _vector(explicit, 3, "specimen_center", where, eid) * ratio
        return centre, centre
    dims, lacked = _entry(tomogram_dimensions, eid)
    if dims is not None:
        size = _vector(dims, 3, "tomogram_dimensions", where, eid)
        return (size // 2) * ratio, size / 2.0 * ratio
    centre_columns = _constant_columns(rows, PTC.SPECIMEN_CENTER)
    if centre_columns is not None:  # a tool whose rule is not size // 2 (IMOD: (n - 1) / 2)
        return centre_columns, centre_columns
    columns = _constant_columns(rows, PTC.TOMOGRAM_SIZE)
    if columns is not None:
        return columns // 2, columns / 2.0
    raise InvalidValueError(
        _missing(
            where,
            eid,
            "tomogram size",
            PTC.TOMOGRAM_SIZE,
            "tomogram_dimensions=(x, y, z) in pixels of the poses (or specimen_center=)",
            lacked or lacked_centre,
        )
    )


def _image_centres(
    rows: pd.DataFrame, eid: str, tilt_image_center: PerExperiment | None, where: str
) -> np.ndarray:
    """(T, 2) tilt-image centres: argument, else the per-tilt columns, else error."""
    explicit, lacked = _entry(tilt_image_center, eid)
    if explicit is not None:
        return np.broadcast_to(_vector(explicit, 2, "tilt_image_center", where, eid), (len(rows), 2))
    if all(c in rows.columns for c in PTC.TILT_IMAGE_CENTER):
        values = rows[PTC.TILT_IMAGE_CENTER].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isfinite(values).all():
            return values
    raise InvalidValueError(
        _missing(
            where,
            eid,
            "tilt-image centre",
            PTC.TILT_IMAGE_CENTER,
            "tilt_image_center=(x, y) in tilt-image pixels (RELION: (nx // 2, ny // 2); IMOD: ((nx - 1) / 2, "
            "(ny - 1) / 2))",
            lacked,
        )
    )


def model_groups(
    projection_model: pd.DataFrame, experiments: Sequence[str], *, where: str
) -> dict[str, pd.DataFrame]:
    """The model's rows of each of ``experiments`` (model row order kept), all of them present.

    Raises
    ------
    InvalidValueError
        An experiment the model lacks (the message lists what it holds).

    Examples
    --------
    >>> import pandas as pd
    >>> model = pd.DataFrame({"experiment_id": ["a", "b", "a"], "rotation_y": [0.0, 5.0, 10.0]})
    >>> model_groups(model, ["a"], where="demo")["a"]["rotation_y"].tolist()
    [0.0, 10.0]
    >>> model_groups(model, ["c"], where="demo")
    Traceback (most recent call last):
    ...
    cryoxr.errors.InvalidValueError: demo: experiment(s) ['c'] of the poses are absent from the projection model, which holds ['a', 'b']
    """
    groups = {str(k): g for k, g in projection_model.groupby(PMDL.EXPERIMENT_ID, sort=False)}
    missing = [e for e in experiments if e not in groups]
    if missing:
        raise InvalidValueError(
            f"{where}: experiment(s) {missing} of the poses are absent from the projection "
            f"model, which holds {list(groups)}"
        )
    return {e: groups[e] for e in experiments}


def experiment_geometries(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment | None = None,
    tilt_image_center: PerExperiment | None = None,
    specimen_center: PerExperiment | None = None,
    where: str = "project",
) -> list[ExperimentGeometry]:
    """Resolve every experiment of ``poses`` (see the module docstring for the order).

    Returns
    -------
    list of ExperimentGeometry
        In the order of :func:`cryoxr.poseset.experiment_ids`.

    Raises
    ------
    InvalidValueError
        An experiment absent from the model, or one without tomogram size or tilt-image
        centre (the message names the column(s) and the argument).
    """
    validate_projection_model(projection_model)
    wanted = experiment_ids(poses)
    groups = model_groups(projection_model, wanted, where=where)
    ps_poses = float(poses.attrs["pixel_spacing"])
    out = []
    for eid in wanted:
        rows = groups[eid]
        ps_model = float(rows[PMDL.PIXEL_SPACING].iloc[0])
        ratio = ps_poses / ps_model
        centre, depth_centre = _centres(rows, eid, ratio, tomogram_dimensions, specimen_center, where)
        image_centre = _image_centres(rows, eid, tilt_image_center, where)
        rotation = (
            rotation_matrices("z", rows[PMDL.ROTATION_Z].to_numpy())
            @ rotation_matrices("y", rows[PMDL.ROTATION_Y].to_numpy())
            @ rotation_matrices("x", rows[PMDL.ROTATION_X].to_numpy())
        )
        matrices = np.zeros((len(rows), 4, 4))
        matrices[:, :3, :3] = rotation
        # P = S(tilt_image_center) S(dx, dy) R S(-centre), as cryotypes
        matrices[:, :3, 3] = -(rotation @ centre)
        matrices[:, :2, 3] += rows[PMDL.SHIFT].to_numpy(dtype=np.float64) + image_centre
        matrices[:, 3, 3] = 1.0
        out.append(ExperimentGeometry(eid, rows, matrices, ratio, centre, depth_centre, ps_model))
    return out


def pack_operators(
    geometries: Sequence[ExperimentGeometry],
    weights_per_tilt: Sequence[np.ndarray],
    bias_per_tilt: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-experiment ``(T, k, 3)`` weights (model pixels) and ``(T, k)`` biases.

    Returns ``weights`` (E, 3, k * T_max) acting on positions **of the poses** (the ratio
    folded in) and ``bias`` (E, k * T_max); NaN where an experiment has fewer tilts. Column
    ``k * t + a`` is output ``a`` of tilt ``t``.
    """
    k = weights_per_tilt[0].shape[1] if weights_per_tilt else 2
    t_max = max((w.shape[0] for w in weights_per_tilt), default=0)
    weights = np.full((len(geometries), 3, k * t_max), np.nan)
    bias = np.full((len(geometries), k * t_max), np.nan)
    for e, (geometry, w, b) in enumerate(zip(geometries, weights_per_tilt, bias_per_tilt, strict=True)):
        t = w.shape[0]
        weights[e, :, : k * t] = w.reshape(k * t, 3).T * geometry.ratio
        bias[e, : k * t] = b.reshape(k * t)
    return weights, bias


def projection_operators(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment | None = None,
    tilt_image_center: PerExperiment | None = None,
    specimen_center: PerExperiment | None = None,
    depth: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The per-experiment linear operators that :func:`cryoxr.project` applies.

    Positions (pixels of ``poses``) map to tilt-image pixels as
    ``xy[n, t, :] = (p[n] @ weights[e]).reshape(T, k)[t] + bias[e].reshape(T, k)[t]``,
    with the pixel-size ratio folded into ``weights``; ``k`` is 2 (x, y), or 3 with
    ``depth`` (x, y and the depth along the beam in model pixels, the projection's third
    row).

    Returns
    -------
    experiments : list of str
        Experiment ids, in the order of the operators.
    weights : numpy.ndarray
        (E, 3, k * T_max) float64; NaN where an experiment has fewer tilts.
    bias : numpy.ndarray
        (E, k * T_max) float64.
    n_tilts : numpy.ndarray
        (E,) tilts per experiment.
    pixel_spacing : numpy.ndarray
        (E,) Å per tilt-image pixel.
    """
    geometries = experiment_geometries(
        poses,
        projection_model,
        tomogram_dimensions=tomogram_dimensions,
        tilt_image_center=tilt_image_center,
        specimen_center=specimen_center,
    )
    k = 3 if depth else 2
    weights, bias = pack_operators(
        geometries, [g.matrices[:, :k, :3] for g in geometries], [g.matrices[:, :k, 3] for g in geometries]
    )
    n_tilts = np.array([len(g.rows) for g in geometries], dtype=np.int64)
    spacing = np.array([g.pixel_spacing for g in geometries], dtype=np.float64)
    return [g.experiment_id for g in geometries], weights, bias, n_tilts, spacing
