"""Tilt-series alignments as a pandas DataFrame (the cryotypes ProjectionModel).

One row per tilt image; columns exactly as cryotypes: ``rotation_x``, ``rotation_y``,
``rotation_z`` (degrees; extrinsic rotation of the specimen about x, then y, then z),
``dx``, ``dy`` (pixels; shift in the tilt image after projection along z),
``experiment_id``, ``pixel_spacing`` (Å) and ``source``. Several experiments may share
one frame; extra columns (tilt index, a file's own labels, ...) are kept.

Per-tilt columns
----------------
What a file knows about a tilt beyond cryotypes' seven columns lives in ordinary columns
with fixed names and units (:class:`PerTiltColumns`, :data:`PER_TILT_COLUMNS`), never only
in ``DataFrame.attrs`` (which ``pd.concat``, filters and parquet drop). All are optional;
per-experiment constants (voltage, tomogram size) repeat on each row of their experiment;
a value a file lacks is absent or NaN, never guessed.

=============================  ==============  ==========================================
column                         unit            meaning
=============================  ==============  ==========================================
``tomogram_size_x/_y/_z``      px (model)      reconstructed volume size, in pixels of the
                                               row's ``pixel_spacing`` (RELION: bin-1)
``image_size_x/_y``            px              tilt-image size
``tilt_image_center_x/_y``     px              rotation centre in the tilt image, in the
                                               convention of the tool that wrote it:
                                               RELION ``nx // 2``, IMOD ``(nx - 1) / 2``
``defocus_u``, ``defocus_v``   Å               per-tilt defocus, underfocus positive
``defocus_angle``              degree          astigmatism angle
``phase_shift``                degree          phase-plate shift
``voltage``                    kV              acceleration voltage (60 .. 1000)
``spherical_aberration``       mm              Cs
``amplitude_contrast``         fraction        0 .. 1
``ctf_scale``                  1               CTF scale factor (>= 0)
``ctf_bfactor``                Å²              CTF B-factor
``pre_exposure``               e/Å²            cumulative dose before this tilt (>= 0)
``acquisition_order``          index           0-based order in which the tilt was recorded
``excluded``                   bool            tilt not to be used
``defocus_handedness``         +1 / -1         sign of the depth term in per-particle defocus
=============================  ==============  ==========================================

:func:`validate_projection_model` checks the ones present (numbers, ranges, units: a
defocus of 3.5 is reported as probably µm); :func:`cryoxr.project` takes tomogram size
and tilt-image centre from them when no argument is given.

The projection matrix of a tilt (cryotypes 0.2.0, left-multiplying xyzw column vectors)::

    P = S(tilt_image_center) . S(dx, dy) . Rz(rotation_z) . Ry(rotation_y) . Rx(rotation_x)
        . S(-specimen_center)

with ``specimen_center = tomogram_dimensions // 2`` unless given explicitly.

Examples
--------
>>> from cryoxr import make_projection_model, projection_model_to_projection_matrices
>>> df = make_projection_model(rotation_y=[-30.0, 0.0, 30.0], experiment_id="TS_01",
...                            pixel_spacing=1.35, defocus_u=[25000.0, 25100.0, 25200.0])
>>> list(df.columns)
['rotation_x', 'rotation_y', 'rotation_z', 'dx', 'dy', 'experiment_id', 'pixel_spacing', \
'source', 'defocus_u']
>>> projection_model_to_projection_matrices(df, (2048, 2048), (4096, 4096, 1000)).shape
(3, 4, 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import numpy as np
import pandas as pd

from cryoxr.errors import InvalidValueError, SchemaError
from cryoxr.per_tilt import (
    COLUMN_RULES,
    PER_TILT_COLUMNS,
    PTC,
    ColumnRule,
    PerTiltColumns,
    check_per_tilt_columns,
)

__all__ = [
    "COLUMN_RULES",
    "PER_TILT_COLUMNS",
    "PTC",
    "ColumnRule",
    "PerTiltColumns",
    "ProjectionModel",
    "ProjectionModelDataLabels",
    "make_projection_model",
    "projection_model_to_projection_matrices",
    "rotation_matrices",
    "validate_projection_model",
]

ProjectionModel: TypeAlias = pd.DataFrame


class ProjectionModelDataLabels:
    """Column labels of a ProjectionModel, as in cryotypes."""

    ROTATION_X = "rotation_x"
    ROTATION_Y = "rotation_y"
    ROTATION_Z = "rotation_z"
    ROTATION: ClassVar[list[str]] = [ROTATION_X, ROTATION_Y, ROTATION_Z]
    SHIFT_X = "dx"
    SHIFT_Y = "dy"
    SHIFT: ClassVar[list[str]] = [SHIFT_X, SHIFT_Y]
    EXPERIMENT_ID = "experiment_id"
    PIXEL_SPACING = "pixel_spacing"
    SOURCE = "source"
    NUMERIC: ClassVar[list[str]] = [ROTATION_X, ROTATION_Y, ROTATION_Z, SHIFT_X, SHIFT_Y, PIXEL_SPACING]
    ALL: ClassVar[list[str]] = [
        ROTATION_X,
        ROTATION_Y,
        ROTATION_Z,
        SHIFT_X,
        SHIFT_Y,
        EXPERIMENT_ID,
        PIXEL_SPACING,
        SOURCE,
    ]


PMDL = ProjectionModelDataLabels


def make_projection_model(
    *,
    rotation_x: Sequence[float] | np.ndarray | float = 0.0,
    rotation_y: Sequence[float] | np.ndarray | float = 0.0,
    rotation_z: Sequence[float] | np.ndarray | float = 0.0,
    dx: Sequence[float] | np.ndarray | float = 0.0,
    dy: Sequence[float] | np.ndarray | float = 0.0,
    experiment_id: str | Sequence[str],
    pixel_spacing: float | Sequence[float],
    source: str | Path = "",
    extra: Mapping[str, Any] | None = None,
    **per_tilt: Any,
) -> pd.DataFrame:
    """Build a validated ProjectionModel DataFrame.

    Scalars broadcast to the number of tilts given by the sequence arguments.

    Parameters
    ----------
    rotation_x, rotation_y, rotation_z
        Degrees, per tilt (rotation_y is the tilt angle, rotation_z the tilt-axis angle).
    dx, dy
        Pixels of the tilt image, per tilt.
    experiment_id
        One str, or one per tilt.
    pixel_spacing
        Å per pixel of the tilt images; one value, or one per tilt.
    source
        Where the alignment came from.
    extra
        Further columns (name -> per-tilt values), kept after the model's columns.
    **per_tilt
        Per-tilt columns of :data:`PER_TILT_COLUMNS` by name (``defocus_u=``,
        ``voltage=``, ``tomogram_size_x=`` ...): one value, or one per tilt. They follow
        the seven cryotypes columns in the order of :data:`PER_TILT_COLUMNS`.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    InvalidValueError
        Lengths that disagree, an unknown keyword, values :func:`validate_projection_model`
        refuses.

    Examples
    --------
    >>> make_projection_model(rotation_y=[0, 3], rotation_z=85, experiment_id="a",
    ...                       pixel_spacing=1.0).rotation_z.tolist()
    [85.0, 85.0]
    >>> make_projection_model(rotation_y=[0, 3], experiment_id="a", pixel_spacing=1.0,
    ...                       voltage=300.0, excluded=[False, True])[["voltage", "excluded"]].values.tolist()
    [[300.0, False], [300.0, True]]
    """
    unknown = [k for k in per_tilt if k not in PER_TILT_COLUMNS]
    if unknown:
        raise InvalidValueError(
            f"make_projection_model: unknown per-tilt column(s) {unknown}; known: {list(PER_TILT_COLUMNS)} "
            "(pass other columns as extra=)"
        )
    per_tilt = {k: per_tilt[k] for k in PER_TILT_COLUMNS if k in per_tilt}
    columns: dict[str, Any] = {
        PMDL.ROTATION_X: rotation_x,
        PMDL.ROTATION_Y: rotation_y,
        PMDL.ROTATION_Z: rotation_z,
        PMDL.SHIFT_X: dx,
        PMDL.SHIFT_Y: dy,
    }
    lengths = {k: len(v) for k, v in {**columns, **per_tilt}.items() if np.ndim(v) == 1}
    if not isinstance(experiment_id, str):
        lengths[PMDL.EXPERIMENT_ID] = len(experiment_id)
    if np.ndim(pixel_spacing) == 1:
        lengths[PMDL.PIXEL_SPACING] = len(pixel_spacing)  # type: ignore[arg-type]
    n_set = set(lengths.values())
    if len(n_set) > 1:
        raise InvalidValueError(f"make_projection_model: per-tilt arguments disagree in length: {lengths}")
    n = n_set.pop() if n_set else 1
    frame: dict[str, Any] = {}
    for key, value in columns.items():
        try:
            frame[key] = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
        except (TypeError, ValueError):
            raise InvalidValueError(
                f"make_projection_model: {key} must be numbers, found {value!r}"
            ) from None
    frame[PMDL.EXPERIMENT_ID] = [experiment_id] * n if isinstance(experiment_id, str) else list(experiment_id)
    frame[PMDL.PIXEL_SPACING] = np.broadcast_to(np.asarray(pixel_spacing, dtype=np.float64), (n,)).copy()
    frame[PMDL.SOURCE] = [str(source)] * n
    for key, value in per_tilt.items():
        if np.ndim(value) > 1:
            raise InvalidValueError(
                f"make_projection_model: {key} must be one value or one per tilt, found {value!r}"
            )
        frame[key] = np.broadcast_to(np.asarray(value), (n,)).copy()
    for key, value in (extra or {}).items():
        if key in frame:
            raise InvalidValueError(f"make_projection_model: extra column {key!r} clashes with the model")
        frame[key] = value
    df = pd.DataFrame(frame)
    validate_projection_model(df)
    return df


def validate_projection_model(df: pd.DataFrame, *, name: str = "ProjectionModel") -> pd.DataFrame:
    """Check columns, dtypes, finiteness, ranges and one pixel spacing per experiment.

    The seven cryotypes columns are required: rotations finite with ``|angle| <= 360``,
    shifts finite, pixel spacing > 0 and one per experiment, experiment ids non-empty.
    The per-tilt columns present (:data:`PER_TILT_COLUMNS`) are checked against
    :data:`COLUMN_RULES` (numbers in their unit's plausible range, NaN = not known).

    Parameters
    ----------
    df
        The DataFrame to check.
    name
        How to call it in error messages (e.g. the file it came from).

    Returns
    -------
    pandas.DataFrame
        ``df``, unchanged.

    Raises
    ------
    SchemaError
        A missing column or a non-numeric one.
    InvalidValueError
        NaN/inf, angles beyond 360 degrees, non-positive or inconsistent pixel spacing,
        empty experiment ids, per-tilt values out of range (the message names the likely
        unit mistake: a defocus of 3.5 is µm, a voltage of 300000 is volts).

    Examples
    --------
    >>> import pandas as pd
    >>> validate_projection_model(pd.DataFrame({"rotation_x": [0.0]}))
    Traceback (most recent call last):
    ...
    cryoxr.errors.SchemaError: ProjectionModel: missing column(s) ['rotation_y', 'rotation_z', \
'dx', 'dy', 'experiment_id', 'pixel_spacing', 'source']; found ['rotation_x']
    """
    if not isinstance(df, pd.DataFrame):
        raise SchemaError(f"{name}: expected a pandas.DataFrame, found {type(df).__name__}")
    missing = [c for c in PMDL.ALL if c not in df.columns]
    if missing:
        raise SchemaError(f"{name}: missing column(s) {missing}; found {list(map(str, df.columns))}")
    if len(df) == 0:
        raise InvalidValueError(f"{name}: expected at least one tilt, found 0 rows")
    for col in PMDL.NUMERIC:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            raise SchemaError(f"{name}: column {col!r} must be numeric, found dtype {df[col].dtype}")
        values = df[col].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise InvalidValueError(
                f"{name}: column {col!r} must be finite, found {values[bad][0]} at row {int(np.argmax(bad))}"
            )
        if col in PMDL.ROTATION and (np.abs(values) > 360.0).any():
            row = int(np.argmax(np.abs(values) > 360.0))
            raise InvalidValueError(
                f"{name}: column {col!r} (degrees) must be within [-360, 360], found {values[row]} at row {row}"
            )
    spacing = df[PMDL.PIXEL_SPACING].to_numpy(dtype=np.float64)
    if (spacing <= 0).any():
        raise InvalidValueError(
            f"{name}: pixel_spacing must be > 0, found {spacing[spacing <= 0][0]} at row {int(np.argmax(spacing <= 0))}"
        )
    ids = df[PMDL.EXPERIMENT_ID]
    empty = ids.isna() | (ids.astype(str) == "")
    if empty.any():
        raise InvalidValueError(
            f"{name}: experiment_id must be non-empty, found an empty one at row {int(np.argmax(empty.to_numpy()))}"
        )
    per_experiment = df.groupby(PMDL.EXPERIMENT_ID, sort=False)[PMDL.PIXEL_SPACING].nunique()
    if (per_experiment > 1).any():
        eid = per_experiment.index[per_experiment > 1][0]
        raise InvalidValueError(
            f"{name}: experiment {eid!r} must have one pixel_spacing, found "
            f"{sorted(df.loc[df[PMDL.EXPERIMENT_ID] == eid, PMDL.PIXEL_SPACING].unique().tolist())}"
        )
    check_per_tilt_columns(df, name)
    return df


def rotation_matrices(axis: str, degrees: np.ndarray) -> np.ndarray:
    """(n, 3, 3) right-handed active rotations about ``axis`` ('x', 'y' or 'z').

    Examples
    --------
    >>> rotation_matrices("z", np.array([90.0])).round(12)[0].tolist()
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64).reshape(-1))
    c, s = np.cos(theta), np.sin(theta)
    out = np.zeros((theta.size, 3, 3))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    k = 3 - i - j
    out[:, k, k] = 1.0
    out[:, i, i] = c
    out[:, j, j] = c
    out[:, i, j] = -s
    out[:, j, i] = s
    return out


def projection_model_to_projection_matrices(
    df: pd.DataFrame,
    tilt_image_center: Sequence[float] | np.ndarray,
    tomogram_dimensions: Sequence[float] | np.ndarray,
    *,
    specimen_center: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """(n, 4, 4) matrices projecting xyzw tomogram positions into each tilt image.

    Equal to ``cryotypes.projectionmodel.projection_model_to_projection_matrices`` to
    floating-point precision, vectorised (no Python loop over tilts).

    Parameters
    ----------
    df
        A ProjectionModel.
    tilt_image_center
        Rotation centre in the tilt images, xy pixels.
    tomogram_dimensions
        Size of the tomogram, xyz pixels; the specimen centre is ``dims // 2``
        (cryotypes, RELION) unless ``specimen_center`` is given.
    specimen_center
        Explicit xyz centre of rotation in the tomogram (e.g. IMOD's ``(N - 1) / 2``).

    Returns
    -------
    numpy.ndarray
        (n_tilts, 4, 4) float64; ``P @ [x, y, z, 1]`` gives the tilt-image xy in rows 0-1.

    Examples
    --------
    A 0-degree tilt maps (x, y, z) to (x - cx + ix, y - cy + iy):

    >>> df = make_projection_model(experiment_id="a", pixel_spacing=1.0)
    >>> P = projection_model_to_projection_matrices(df, (50, 60), (100, 200, 30))
    >>> (P[0] @ [10.0, 20.0, 5.0, 1.0])[:2].tolist()
    [10.0, -20.0]
    """
    validate_projection_model(df)
    tic = np.asarray(tilt_image_center, dtype=np.float64).reshape(-1)
    if tic.shape != (2,) or not np.isfinite(tic).all():
        raise InvalidValueError(
            f"projection matrices: tilt_image_center must be 2 finite numbers (x, y), found {tilt_image_center!r}"
        )
    if specimen_center is None:
        dims = np.asarray(tomogram_dimensions)
        if dims.shape != (3,) or not np.isfinite(dims.astype(np.float64)).all():
            raise InvalidValueError(
                f"projection matrices: tomogram_dimensions must be 3 numbers (x, y, z), found {tomogram_dimensions!r}"
            )
        center = (dims // 2).astype(np.float64)
    else:
        center = np.asarray(specimen_center, dtype=np.float64).reshape(-1)
        if center.shape != (3,) or not np.isfinite(center).all():
            raise InvalidValueError(
                f"projection matrices: specimen_center must be 3 finite numbers (x, y, z), found {specimen_center!r}"
            )
    rx = rotation_matrices("x", df[PMDL.ROTATION_X].to_numpy())
    ry = rotation_matrices("y", df[PMDL.ROTATION_Y].to_numpy())
    rz = rotation_matrices("z", df[PMDL.ROTATION_Z].to_numpy())
    rot = rz @ ry @ rx
    shift2d = df[PMDL.SHIFT].to_numpy(dtype=np.float64) + tic
    n = len(df)
    out = np.zeros((n, 4, 4))
    out[:, :3, :3] = rot
    # translation = shift_after + R @ (-specimen_center)
    out[:, :3, 3] = -(rot @ center)
    out[:, :2, 3] += shift2d
    out[:, 3, 3] = 1.0
    return out
