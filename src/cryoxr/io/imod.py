"""IMOD tilt-series alignments (``.xf`` + ``.tlt`` [+ ``.xtilt``]) <-> ProjectionModel.

File contents (one line per view, in stack order):

==========  =============================  =============================================
file        columns                        meaning
==========  =============================  =============================================
``.xf``     ``A11 A12 A21 A22 DX DY``      raw -> aligned image:
                                           ``x' = A (x - c) + D + c'`` (pixels of the raw
                                           stack; ``c`` = image centre)
``.tlt``    ``angle``                      tilt angle (deg), AngleOffset already included
``.xtilt``  ``angle``                      per-view tilt about x (deg)
==========  =============================  =============================================

Conversion (docs/CONVENTIONS.md §7)::

    rotation_z = atan2(A12, A11)                      # tilt-axis angle, CCW from y
    (dx, dy)   = -A^-1 (DX, DY)                       # pixels of the raw stack
    rotation_y = tlt + angle_offset - subtract_angle_offset
    rotation_x = s * (xtilt - x_axis_tilt)            # s = +1 "rotx", -1 "flipyz"

and back: ``A = Rz2(-rotation_z)``, ``(DX, DY) = -A (dx, dy)``.

**Magnification.** tiltalign may solve a magnification per view: ``A = m Rz2(-rotation_z)``.
A ProjectionModel has no scale, so the reader keeps ``m`` in column
``imod_magnification`` (written back by the writer) and warns: projecting through the
model ignores it, an error of ``|1 - 1/m| r`` pixels at ``r`` pixels from the centre (the
shift ``-A^-1 (DX, DY)`` stays exact at the centre). A stretch or skew (``A / m`` not a
rotation) or a mirror is refused. Files without a pixel size: ``pixel_spacing=`` is
required.

**Per-tilt columns** (DESIGN.md): ``view``; with ``image_size`` the tilt-image size and
IMOD's centre (``image_size_x/y``, ``tilt_image_center_x/y``); with
``tomogram_dimensions`` the ``tomogram_size_x/y/z``; with ``defocus`` (ctfplotter's
``.defocus``, :mod:`cryoxr.io.imod_defocus`) ``defocus_u/v``, ``defocus_angle`` and as the
file holds them ``phase_shift`` and ``imod_cut_on_frequency``.

**Centres.** IMOD rotates images about ``nx / 2`` measured from the *corner* of the first
pixel, i.e. ``((nx - 1) / 2, (ny - 1) / 2)`` in cryoxr's pixel-centre frame, and its
tomogram centre is ``(N - 1) / 2`` (``newstack.f90``, ``tilt.f90``, ``cubinterp.c``).
These differ by half a pixel from cryotypes' / RELION's ``n // 2``; the reader returns
them in ``df.attrs["tilt_image_center"]`` and ``df.attrs["specimen_center"]`` (when
``image_size`` / ``tomogram_dimensions`` are given) so that::

    project(poses, df, tomogram_dimensions=dims,
            tilt_image_center=df.attrs["tilt_image_center"],
            specimen_center=df.attrs["specimen_center"])

reproduces IMOD's geometry.

Examples
--------
A round trip of two tilts about an 85 degree axis:

>>> import tempfile, pathlib
>>> import cryoxr
>>> where = pathlib.Path(tempfile.mkdtemp())
>>> series = cryoxr.make_projection_model(rotation_y=[-30.0, 30.0], rotation_z=85.0, dx=5.0,
...                                       dy=-10.0, experiment_id="TS_01", pixel_spacing=1.35)
>>> write_imod_alignment(series, where / "TS_01.xf", where / "TS_01.tlt")
>>> back = read_imod_alignment(where / "TS_01.xf", where / "TS_01.tlt", pixel_spacing=1.35,
...                            image_size=(4096, 4096))
>>> back[["rotation_y", "rotation_z", "dx", "dy"]].round(6).values.tolist()
[[-30.0, 85.0, 5.0, -10.0], [30.0, 85.0, 5.0, -10.0]]
>>> back.attrs["tilt_image_center"], float(back.tilt_image_center_x[0])
((2047.5, 2047.5), 2047.5)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._atomic import atomic_paths
from cryoxr.io._paths import PathLike
from cryoxr.io.imod_defocus import DEFOCUS_COLUMNS, defocus_file_lines, read_imod_defocus
from cryoxr.io.plaintext import (
    data_row_line,
    file_model,
    read_numeric_table,
    require_pixel_spacing,
    warn_unstored_columns,
)
from cryoxr.projection_model import PMDL, PTC, validate_projection_model

__all__ = [
    "IMOD_CENTER_RULE",
    "MAGNIFICATION_COLUMN",
    "TLT_COLUMNS",
    "XF_COLUMNS",
    "XTILT_SIGN",
    "imod_centers",
    "read_imod_alignment",
    "write_imod_alignment",
]

XtiltConvention = Literal["rotx", "flipyz"]

#: ``.xf`` columns: name and meaning, in file order
XF_COLUMNS: tuple[tuple[str, str], ...] = (
    ("A11", "rotation matrix, row 1 col 1"),
    ("A12", "rotation matrix, row 1 col 2"),
    ("A21", "rotation matrix, row 2 col 1"),
    ("A22", "rotation matrix, row 2 col 2"),
    ("DX", "x shift applied after rotation (raw-stack pixels)"),
    ("DY", "y shift applied after rotation (raw-stack pixels)"),
)
#: ``.tlt`` / ``.xtilt`` column
TLT_COLUMNS: tuple[tuple[str, str], ...] = (("angle", "degrees"),)
#: sign of ``rotation_x`` relative to ``xtilt - x_axis_tilt``, by final volume orientation
XTILT_SIGN: dict[str, float] = {"rotx": 1.0, "flipyz": -1.0}
#: how IMOD centres images and tomograms, in cryoxr's pixel-centre frame
IMOD_CENTER_RULE = "(n - 1) / 2"
#: largest angle (deg) accepted in a .tlt / .xtilt
MAX_ANGLE = 360.0
#: column that keeps a per-view magnification of the ``.xf`` (1 = none)
MAGNIFICATION_COLUMN = "imod_magnification"
#: largest magnification (and 1 / smallest) an ``.xf`` may hold: tiltalign's are near 1
MAX_MAGNIFICATION = 1000.0
#: ``|m - 1|`` (and the departure of ``A / m`` from a rotation) below which an ``.xf`` is a
#: pure rotation: files hold 7 significant digits
XF_TOLERANCE = 1e-5


def _xtilt_sign(convention: str, where: str) -> float:
    if convention not in XTILT_SIGN:
        raise InvalidValueError(
            f"{where}: xtilt_convention must be one of {sorted(XTILT_SIGN)}, found {convention!r}"
        )
    return XTILT_SIGN[convention]


def imod_centers(
    image_size: Sequence[int] | None = None, tomogram_dimensions: Sequence[int] | None = None
) -> dict[str, tuple[float, ...] | None]:
    """IMOD's tilt-image and specimen centres, ``(n - 1) / 2`` per axis.

    Parameters
    ----------
    image_size
        Raw tilt-image size ``(nx, ny)`` in pixels.
    tomogram_dimensions
        Tomogram size ``(nx, ny, nz)`` in pixels of the same (unbinned) stack.

    Returns
    -------
    dict
        ``tilt_image_center`` (x, y) and ``specimen_center`` (x, y, z); None where the
        size was not given.

    Examples
    --------
    >>> imod_centers((4096, 4095), (4096, 4096, 1000))
    {'tilt_image_center': (2047.5, 2047.0), 'specimen_center': (2047.5, 2047.5, 499.5)}
    """

    def centre(size: Sequence[int] | None, n: int, name: str) -> tuple[float, ...] | None:
        if size is None:
            return None
        values = np.asarray(size, dtype=np.float64).reshape(-1)
        if values.shape != (n,) or not np.isfinite(values).all() or (values <= 0).any():
            raise InvalidValueError(f"imod_centers: {name} must be {n} positive sizes, found {size!r}")
        return tuple(float((v - 1.0) / 2.0) for v in values)

    return {
        "tilt_image_center": centre(image_size, 2, "image_size"),
        "specimen_center": centre(tomogram_dimensions, 3, "tomogram_dimensions"),
    }


def _read_angles(path: PathLike, what: str) -> tuple[Path, np.ndarray]:
    p, table = read_numeric_table(path, names=[name for name, _ in TLT_COLUMNS], n_columns=1, what=what)
    bad = np.abs(table[:, 0]) > MAX_ANGLE
    if bad.any():
        row = int(np.argmax(bad))
        raise FormatError(
            f"{p}, line {data_row_line(p, row)}: expected an angle within ±{MAX_ANGLE:g} deg, "
            f"found {float(table[row, 0])!r}"
        )
    return p, table[:, 0]


def _rotation_and_magnification(path: Path, a: np.ndarray) -> np.ndarray:
    """Per-view magnification ``m`` of ``A = m R``; refuses singular, mirrored, stretched ``A``."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # 1e308 entries: no warning
        det = np.linalg.det(a)
        scale = np.abs(a).max(axis=(1, 2))
        unit = a / scale[:, None, None]  # det of the rescaled A cannot overflow
        root = np.sqrt(np.abs(np.linalg.det(unit)))
        magnification = scale * root
        b = unit / root[:, None, None]
        off = np.abs(np.einsum("nji,njk->nik", b, b) - np.eye(2)).max(axis=(1, 2))
    checks = (
        (~(np.abs(det) > 1e-12), "an invertible A11 A12 A21 A22 matrix", "determinant {det:g}"),
        (det < 0, "a rotation (positive determinant), not a mirror", "determinant {det:g}"),
        (
            ~(off <= XF_TOLERANCE),
            "a rotation with at most a magnification (no stretch or skew, which a ProjectionModel "
            "cannot hold)",
            "A / sqrt|det| off a rotation by {off:.3g}",
        ),
        (
            ~((magnification >= 1 / MAX_MAGNIFICATION) & (magnification <= MAX_MAGNIFICATION)),
            f"a magnification sqrt|det A| within {1 / MAX_MAGNIFICATION:g}..{MAX_MAGNIFICATION:g}",
            "{mag:g}",
        ),
    )
    for bad, expected, found in checks:
        if bad.any():
            row = int(np.argmax(bad))
            line = data_row_line(path, row)  # the file's line, blank lines counted
            values = {"det": det[row], "off": off[row], "mag": magnification[row]}
            raise FormatError(f"{path}, line {line}: expected {expected}, found " + found.format(**values))
    return magnification


def _defocus_columns(defocus: PathLike, n: int) -> dict[str, np.ndarray]:
    table = read_imod_defocus(defocus, n_views=n)
    return {str(c): table[c].to_numpy() for c in table.columns}


def read_imod_alignment(
    xf: PathLike,
    tlt: PathLike,
    *,
    pixel_spacing: float | None = None,
    xtilt: PathLike | None = None,
    defocus: PathLike | None = None,
    image_size: Sequence[int] | None = None,
    tomogram_dimensions: Sequence[int] | None = None,
    angle_offset: float = 0.0,
    subtract_angle_offset: float = 0.0,
    x_axis_tilt: float = 0.0,
    xtilt_convention: XtiltConvention = "rotx",
    experiment_id: str | None = None,
) -> pd.DataFrame:
    """Read an IMOD alignment (``.xf`` + ``.tlt`` [+ ``.xtilt``, ``.defocus``]) as a ProjectionModel.

    Parameters
    ----------
    xf
        The ``.xf`` file: ``A11 A12 A21 A22 DX DY`` per view.
    tlt
        The ``.tlt`` file: one tilt angle per view (tiltalign's solved angles, which
        already include its AngleOffset), or a ``.rawtlt`` (the nominal angles).
    pixel_spacing
        Å per raw-stack pixel. Required: IMOD's alignment files store no pixel size.
    xtilt
        Optional ``.xtilt`` file: per-view tilt about x (deg). Absent: 0 for every view.
    defocus
        Optional ctfplotter ``.defocus`` file (versions 2 and 3): per-view defocus,
        astigmatism and phase shift columns (:mod:`cryoxr.io.imod_defocus`).
    image_size
        Raw tilt-image size ``(nx, ny)``: IMOD's image centre in attrs and in columns
        ``tilt_image_center_x/y``, the size in ``image_size_x/y``.
    tomogram_dimensions
        Tomogram size ``(nx, ny, nz)`` in raw-stack pixels: IMOD's specimen centre in
        attrs, the size in columns ``tomogram_size_x/y/z``.
    angle_offset
        tilt.com ``OFFSET`` (DELANG, deg), added to every angle as IMOD's ``tilt`` does.
        Default 0.
    subtract_angle_offset
        An angle (deg) to subtract from every ``.tlt`` angle. RELION 5 subtracts
        align.log's ``AngleOffset`` (its tomograms are rotated about y by that angle
        relative to IMOD's); pass it here to reproduce RELION. Default 0: IMOD's own
        geometry.
    x_axis_tilt
        tilt.com ``XAXISTILT`` (deg), subtracted from the per-view x tilts as ``tilt``
        does. Default 0.
    xtilt_convention
        ``"rotx"`` (default): ``rotation_x = xtilt - x_axis_tilt``, for volumes rotated to
        the usual final orientation with ``clip rotx`` / ``trimvol -rx``;
        ``"flipyz"``: the negative, for flipyz'd or unrotated volumes.
    experiment_id
        Default: the ``.xf`` file's stem.

    Returns
    -------
    pandas.DataFrame
        The ProjectionModel, one row per view in stack order; extra column ``view``
        (0-based index in the stack) and the per-tilt columns of the module docstring.
        ``df.attrs``: ``format`` ``"imod"``, ``center_rule`` ``"(n - 1) / 2"``,
        ``tilt_image_center`` and ``specimen_center`` (tuples, or None when the size was
        not given), and the options used.

    Raises
    ------
    InvalidValueError
        No ``pixel_spacing``.
    FormatError
        A line with other than 6 numbers in the ``.xf`` (or 1 in ``.tlt`` / ``.xtilt``),
        text or NaN where numbers belong, files of different lengths, a singular,
        mirrored or stretched ``A``, an empty or non-UTF-8 file, a bad ``.defocus``.
    CryoxrFileNotFoundError
        A file does not exist.

    Warns
    -----
    UserWarning
        The ``.xf`` holds a magnification (kept in ``imod_magnification``).

    Examples
    --------
    The worked numbers of docs/CONVENTIONS.md §7:

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.xf").write_text("0.0871557 0.9961947 -0.9961947 0.0871557 9.526 5.853\\n")
    >>> _ = (folder / "a.tlt").write_text("30.0\\n")
    >>> df = read_imod_alignment(folder / "a.xf", folder / "a.tlt", pixel_spacing=1.35)
    >>> df[["rotation_x", "rotation_y", "rotation_z", "dx", "dy"]].round(3).values.tolist()
    [[0.0, 30.0, 85.0, 5.0, -10.0]]
    """
    spacing = require_pixel_spacing(pixel_spacing, xf, "IMOD .xf")
    sign = _xtilt_sign(xtilt_convention, "read_imod_alignment")
    names = [name for name, _ in XF_COLUMNS]
    xf_path, table = read_numeric_table(xf, names=names, n_columns=len(XF_COLUMNS), what="IMOD .xf")
    n = table.shape[0]
    a = table[:, :4].reshape(n, 2, 2)
    d = table[:, 4:6]
    magnification = _rotation_and_magnification(xf_path, a)
    tlt_path, angles = _read_angles(tlt, "IMOD .tlt")
    if angles.shape[0] != n:
        raise FormatError(
            f"{tlt_path}: expected one tilt angle per view of {xf_path.name} ({n}), found {angles.shape[0]}"
        )
    if xtilt is not None:
        xtilt_path, xtilts = _read_angles(xtilt, "IMOD .xtilt")
        if xtilts.shape[0] != n:
            raise FormatError(
                f"{xtilt_path}: expected one x tilt per view of {xf_path.name} ({n}), found {xtilts.shape[0]}"
            )
    else:
        xtilts = np.zeros(n)
    with np.errstate(over="ignore", invalid="ignore"):
        shifts = -np.linalg.solve(a, d[:, :, None])[:, :, 0]
    overflow = ~np.isfinite(shifts).all(axis=1)
    if overflow.any():
        row = int(np.argmax(overflow))
        line = data_row_line(xf_path, row)
        raise FormatError(
            f"{xf_path}, line {line}: expected A11 A12 A21 A22 DX DY giving a finite shift -A^-1 (DX, DY), "
            f"found {shifts[row].tolist()}"
        )
    centers = imod_centers(image_size, tomogram_dimensions)
    extra: dict[str, Any] = {"view": np.arange(n, dtype=np.int64)}
    if np.abs(magnification - 1.0).max() > XF_TOLERANCE:
        extra[MAGNIFICATION_COLUMN] = magnification
        worst = float(np.abs(1.0 - 1.0 / magnification).max())
        warnings.warn(
            f"{xf_path}: the .xf holds magnifications {magnification.min():.6g}..{magnification.max():.6g}; "
            f"kept in column {MAGNIFICATION_COLUMN!r}, but projections ignore them (up to {worst:.3g} px "
            "per px from the image centre)",
            stacklevel=2,
        )
    if image_size is not None:
        extra.update(dict(zip(PTC.IMAGE_SIZE, np.asarray(image_size, dtype=np.int64), strict=True)))
        extra.update(dict(zip(PTC.TILT_IMAGE_CENTER, centers["tilt_image_center"] or (), strict=True)))
    if tomogram_dimensions is not None:
        extra.update(
            dict(zip(PTC.TOMOGRAM_SIZE, np.asarray(tomogram_dimensions, dtype=np.int64), strict=True))
        )
        # IMOD rotates about (n - 1) / 2, not the size // 2 that the size alone implies
        extra.update(dict(zip(PTC.SPECIMEN_CENTER, centers["specimen_center"] or (), strict=True)))
    if defocus is not None:
        extra.update(_defocus_columns(defocus, n))
    return file_model(
        xf_path,
        {
            PMDL.ROTATION_X: sign * (xtilts - float(x_axis_tilt)),
            PMDL.ROTATION_Y: angles + float(angle_offset) - float(subtract_angle_offset),
            PMDL.ROTATION_Z: np.rad2deg(np.arctan2(a[:, 0, 1], a[:, 0, 0])),
            PMDL.SHIFT_X: shifts[:, 0],
            PMDL.SHIFT_Y: shifts[:, 1],
        },
        experiment_id=experiment_id,
        pixel_spacing=spacing,
        extra=extra,
        attrs={
            "format": "imod",
            "center_rule": IMOD_CENTER_RULE,
            **centers,
            "tilt_angles": str(tlt_path),
            "angle_offset": float(angle_offset),
            "subtract_angle_offset": float(subtract_angle_offset),
            "x_axis_tilt": float(x_axis_tilt),
            "xtilt_convention": xtilt_convention,
        },
    )


def _fmt(value: float) -> str:
    """Shortest text that reads back to the same float64."""
    text = repr(float(value))
    return "0.0" if text == "-0.0" else text


def write_imod_alignment(
    model: pd.DataFrame,
    xf: PathLike,
    tlt: PathLike,
    *,
    xtilt: PathLike | None = None,
    defocus: PathLike | None = None,
    angle_offset: float = 0.0,
    subtract_angle_offset: float = 0.0,
    x_axis_tilt: float = 0.0,
    xtilt_convention: XtiltConvention = "rotx",
    overwrite: bool = False,
) -> None:
    """Write a one-experiment ProjectionModel as IMOD ``.xf`` + ``.tlt`` [+ ``.xtilt``, ``.defocus``].

    The exact inverse of :func:`read_imod_alignment` with the same options:
    ``A = m Rz2(-rotation_z)`` (``m`` from column ``imod_magnification``, else 1),
    ``(DX, DY) = -A (dx, dy)``, ``tlt = rotation_y - angle_offset + subtract_angle_offset``,
    ``xtilt = s * rotation_x + x_axis_tilt``. Numbers are written with full float64
    precision (IMOD reads them free-format). Other columns (dose, sizes, and the defocus
    columns when no ``defocus`` path is given) have no place in these files: the writer
    warns, naming them. IMOD files store no pixel size.

    Parameters
    ----------
    model
        A ProjectionModel with a single ``experiment_id``; rows in stack order.
    xf, tlt
        Output paths.
    xtilt
        Output path for the per-view x tilts; required when any ``rotation_x`` differs
        from ``-x_axis_tilt`` (the value that needs no ``.xtilt``).
    defocus
        Output path for a ctfplotter ``.defocus`` file (version 3) of the columns
        ``defocus_u``, ``defocus_v``, ``defocus_angle`` [, ``phase_shift``].
    angle_offset, subtract_angle_offset, x_axis_tilt, xtilt_convention
        As in :func:`read_imod_alignment`.
    overwrite
        Replace files that exist. Without it, an existing output raises
        :class:`~cryoxr.errors.FileExistsNoOverwriteError` and no file is written.

    Examples
    --------
    The worked numbers of docs/CONVENTIONS.md §7, written:

    >>> import tempfile, pathlib
    >>> import cryoxr
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> tilt = cryoxr.make_projection_model(rotation_y=30.0, rotation_z=85.0, dx=5.0, dy=-10.0,
    ...                                     experiment_id="a", pixel_spacing=1.0)
    >>> write_imod_alignment(tilt, out / "a.xf", out / "a.tlt")
    >>> [round(float(v), 3) for v in (out / "a.xf").read_text().split()]
    [0.087, 0.996, -0.996, 0.087, 9.526, 5.853]
    """
    validate_projection_model(model, name="write_imod_alignment")
    sign = _xtilt_sign(xtilt_convention, "write_imod_alignment")
    ids = pd.unique(model[PMDL.EXPERIMENT_ID])
    if len(ids) != 1:
        raise InvalidValueError(
            f"write_imod_alignment: an .xf holds one tilt series, found {len(ids)} experiments "
            f"{[str(i) for i in ids[:5]]}; select one first (df[df.experiment_id == ...])"
        )
    rz = np.deg2rad(model[PMDL.ROTATION_Z].to_numpy(dtype=np.float64))
    c, s = np.cos(rz), np.sin(rz)
    a = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)  # Rz2(-rotation_z)
    if MAGNIFICATION_COLUMN in model.columns:
        magnification = model[MAGNIFICATION_COLUMN].to_numpy(dtype=np.float64)
        if not (np.isfinite(magnification) & (magnification > 0)).all():
            raise InvalidValueError(
                f"write_imod_alignment: column {MAGNIFICATION_COLUMN!r} must be finite and > 0, found "
                f"{magnification[~(np.isfinite(magnification) & (magnification > 0))][:3].tolist()}"
            )
        a = a * magnification[:, None, None]
    shift = model[PMDL.SHIFT].to_numpy(dtype=np.float64)
    d = -np.einsum("nij,nj->ni", a, shift)
    angles = (
        model[PMDL.ROTATION_Y].to_numpy(dtype=np.float64) - float(angle_offset) + float(subtract_angle_offset)
    )
    xtilts = sign * model[PMDL.ROTATION_X].to_numpy(dtype=np.float64) + float(x_axis_tilt)
    if xtilt is None and np.any(np.abs(xtilts) > 1e-12):
        raise InvalidValueError(
            "write_imod_alignment: rotation_x needs a per-view .xtilt file (found x tilts up to "
            f"{float(np.max(np.abs(xtilts))):g} deg); pass xtilt=<path>"
        )
    xf_lines = [
        " ".join(f"{_fmt(v):>22}" for v in (*row_a.reshape(-1), *row_d))
        for row_a, row_d in zip(a, d, strict=True)
    ]
    outputs: list[tuple[PathLike, list[str]]] = [(xf, xf_lines), (tlt, [_fmt(v) for v in angles])]
    if xtilt is not None:
        outputs.append((xtilt, [_fmt(v) for v in xtilts]))
    stored = ["view", MAGNIFICATION_COLUMN]
    if defocus is not None:
        outputs.append((defocus, defocus_file_lines(model, str(defocus))))
        stored.extend(column for _, _, column, _ in DEFOCUS_COLUMNS)
    warn_unstored_columns(model, stored, f"{xf} (IMOD .xf/.tlt)")
    _write_all(outputs, overwrite=overwrite)


def _write_all(outputs: Sequence[tuple[PathLike, Sequence[str]]], *, overwrite: bool) -> None:
    """Write several text files as a set: none is replaced unless all could be written."""
    with atomic_paths([path for path, _ in outputs], overwrite=overwrite) as temporaries:
        for tmp, (_, lines) in zip(temporaries, outputs, strict=True):
            tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
