"""RELION STAR files: particles (3.1, 4 and 5) and RELION 5 tilt series.

Particles -> PoseSet (CONVENTIONS.md sections 3 and 7)
------------------------------------------------------
- ``orientation = A_sub * A`` with ``A = Rotation.from_euler("ZYZ", [rot, tilt, psi],
  degrees=True).inv()`` (RELION's particle -> tomogram matrix) and ``A_sub`` the same
  for ``rlnTomoSubtomogramRot/Tilt/Psi`` (identity when absent).
- ``shift = -A_sub . origin / px`` (``rlnOriginX/Y/ZAngst``), so ``position + shift`` is
  RELION's ``ParticleSet::getPosition``.
- ``position = rlnCoordinateX/Y/Z`` (RELION 3.1/4, bin-1 pixels), or for RELION 5
  ``rlnCenteredCoordinateX/Y/ZAngst / px + size / 2.0`` with ``size`` the bin-1
  ``rlnTomoSizeX/Y/Z`` of the particle's tomogram (RELION's own de-centring, including its
  half pixel for odd sizes: ``N / 2.0``, not ``N // 2``).
- ``px`` is ``rlnTomoTiltSeriesPixelSize`` of the particle's optics group (else
  ``rlnMicrographPixelSize``, else ``rlnImagePixelSize``); the PoseSet's ``pixel_spacing``.
- ``experiment_id`` per particle from ``rlnTomoName`` (``rlnMicrographName`` for 2D sets).

Every other column (scores, classes, CTF, ``rlnImageName``, the subtomogram angles, ...)
becomes a data variable on ``particle`` with its RELION label as name, and the other blocks
(optics, general), the column order and the ``# version`` line go to ``attrs["relion"]``
(plain lists and dicts, so the attrs survive zarr), so :func:`write_relion_particles` gives
back the same table. Writers print floats in the shortest form that reads back exactly;
the values cryoxr computes (coordinates, origins, angles) are rounded to
:data:`DECIMALS` decimals, so a file read and written again keeps its printed values.

Tilt series -> ProjectionModel
------------------------------
:func:`read_relion_tilt_series` reads a RELION 5 ``tomograms.star`` and every per-tilt-series
STAR file it lists (``rlnTomoXTilt/YTilt/ZRot`` -> ``rotation_x/y/z``,
``rlnTomoX/YShiftAngst / px`` -> ``dx, dy``), or a RELION 4 / Warp ``tomograms.star`` whose
per-tilt blocks carry ``rlnTomoProjX/Y/Z/W`` matrix rows (converted to angles and shifts).
It returns one ProjectionModel for all tilt series; per-tilt columns cryoxr does not model
are kept as columns, and ``model.attrs`` holds (choice: attrs, like the other alignment
readers, so :func:`cryoxr.io.tables.read_alignment` can return it as is):

- ``tomogram_dimensions``: ``{tomo_name: [X, Y, Z]}`` bin-1 pixels,
- ``specimen_center``: ``{tomo_name: [X // 2, Y // 2, Z // 2]}`` (RELION's ``int(N / 2)``),
- ``tilt_image_center``: ``{tomo_name: [nx // 2, ny // 2]}`` of the tilt images, assumed
  ``(X, Y)`` unless ``tilt_image_size`` says otherwise,
- ``relion``: the ``tomograms.star`` table (sizes, binning, pixel sizes, ...) as
  ``{label: [values]}`` -- :func:`relion_tomograms_table` turns it into a DataFrame -- and
  the per-file layout needed to write the files back.

The three centre mappings go straight into :func:`cryoxr.project`.

Paths inside STAR files are resolved relative to the folder of the file that names them,
then relative to that folder's ancestors (RELION writes paths relative to its project
folder), then the current directory.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np
>>> import cryoxr
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> poses = cryoxr.make_poseset([[1000.0, 1500.0, 400.0]], shift=[[-1.0, 2.0, 0.0]],
...                             experiment_id=["TS_01"], pixel_spacing=1.35)
>>> write_relion_particles(poses, folder / "particles.star", version=4)
>>> back = read_relion_particles(folder / "particles.star")
>>> back.position.values.tolist(), back["shift"].values.tolist()
([[1000.0, 1500.0, 400.0]], [[-1.0, 2.0, 0.0]])
>>> print((folder / "particles.star").read_text().splitlines()[-1])
TS_01 1000.0 1500.0 400.0 1.35 -2.7 0.0 0.0 0.0 0.0 1
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import CryoxrFileNotFoundError, FileExistsNoOverwriteError, FormatError, InvalidValueError
from cryoxr.io._atomic import atomic_path
from cryoxr.io._star import (
    WRITE_CHUNK_ROWS,
    StarBlock,
    _format_rows_buffer,
    format_block_header,
    read_star,
    write_star,
    write_star_blocks,
)
from cryoxr.poseset import make_poseset, validate_poseset
from cryoxr.projection_model import PMDL, make_projection_model, validate_projection_model

__all__ = [
    "DECIMALS",
    "PARTICLE_LAYOUTS",
    "TILT_ALIGNMENT_LABELS",
    "VERSIONS",
    "read_relion_particles",
    "read_relion_tilt_series",
    "relion_tomograms_table",
    "write_relion_particles",
    "write_relion_tilt_series",
]

#: decimals kept of the values cryoxr computes when writing (Å, pixels, degrees)
DECIMALS = 10


@dataclass(frozen=True)
class CoordinateLayout:
    """How particle positions are written in one RELION flavour."""

    labels: tuple[str, ...]  #: x, y(, z) labels
    unit: str  #: "pixel" (bin-1 tilt-series pixels) or "angstrom"
    centred: bool  #: relative to the tomogram centre ``size / 2.0`` (RELION 5)


#: the coordinate layouts, by name
PARTICLE_LAYOUTS: dict[str, CoordinateLayout] = {
    "pixel": CoordinateLayout(("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"), "pixel", False),
    "centred": CoordinateLayout(
        ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"),
        "angstrom",
        True,
    ),
}

#: writer version -> (``# version`` number, layout of 3D coordinates); 2D sets always use "pixel"
VERSIONS: dict[int, tuple[int, str]] = {3: (30001, "pixel"), 4: (30001, "pixel"), 5: (50001, "centred")}

ORIGIN_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SUBTOMOGRAM_ANGLE_LABELS = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
#: dimensionality -> labels that may hold the experiment id, in order of preference
EXPERIMENT_LABELS = {3: ("rlnTomoName", "rlnMicrographName"), 2: ("rlnMicrographName", "rlnTomoName")}
#: optics labels that may hold the pixel size of coordinates, in order of preference
PIXEL_SIZE_LABELS = ("rlnTomoTiltSeriesPixelSize", "rlnMicrographPixelSize", "rlnImagePixelSize")
#: ProjectionModel column -> (per-tilt RELION 5 label, multiply the model value by the pixel size)
TILT_ALIGNMENT_LABELS: dict[str, tuple[str, bool]] = {
    PMDL.ROTATION_X: ("rlnTomoXTilt", False),
    PMDL.ROTATION_Y: ("rlnTomoYTilt", False),
    PMDL.ROTATION_Z: ("rlnTomoZRot", False),
    PMDL.SHIFT_X: ("rlnTomoXShiftAngst", True),
    PMDL.SHIFT_Y: ("rlnTomoYShiftAngst", True),
}
#: RELION 4 / Warp per-tilt projection-matrix rows
PROJECTION_ROW_LABELS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
TOMOGRAM_SIZE_LABELS = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")

TomogramsInput = str | os.PathLike[str] | pd.DataFrame | Mapping[str, Sequence[float]]


# ----------------------------------------------------------------------------- helpers


def _exists(path: Path) -> bool:
    """``path.exists()``, False for names the OS refuses (too long: ENAMETOOLONG; a NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _resolve(reference: Path, name: str, root: Path | None = None) -> Path:
    """A path named inside ``reference``: its folder, then the folder's ancestors, then cwd.

    With ``root``, only places inside ``root`` are searched and the result (symlinks
    resolved) must lie inside it: a STAR file cannot lead the reader elsewhere.
    """
    candidate = Path(name)
    folder = reference.resolve().parent
    if root is None:
        if candidate.is_absolute():
            return candidate
        for base in (folder, *folder.parents):
            if _exists(base / candidate):
                return base / candidate
        if _exists(candidate):
            return candidate.resolve()
        return folder / candidate
    fence = root.resolve()
    bases = [b for b in (folder, *folder.parents) if b.is_relative_to(fence)]
    options = [candidate] if candidate.is_absolute() else [b / candidate for b in bases]
    for option in options:
        if _exists(option) and option.resolve().is_relative_to(fence):
            return option.resolve()
    escaped = [str(o) for o in options if _exists(o)]
    where = f"it resolves to {escaped[0]!r}, outside" if escaped else "it is not found inside"
    raise FormatError(f"{reference}: path {name!r}: {where} the allowed root {str(fence)!r}")


def _in_pixels(
    path: Path, block: str, labels: Sequence[str], angstrom: np.ndarray, px: float, px_label: str
) -> np.ndarray:
    """``angstrom / px`` for (n, k) columns ``labels``; a non-finite quotient names row and column."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        pixels = np.asarray(angstrom, dtype=np.float64) / px
    bad = ~np.isfinite(pixels)
    if bad.any():
        row, col = np.argwhere(bad.reshape(len(pixels), -1))[0]
        raise FormatError(
            f"{path}, data_{block}, row {int(row) + 1}, column {labels[col]}: expected a finite number of "
            f"pixels, found {float(angstrom.reshape(len(pixels), -1)[row, col])!r} Å / {px_label} {px!r} Å"
        )
    return pixels


def _finite(path: Path, block: str, table: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """The columns as an (n, k) float64 array; NaN/inf is a FormatError naming row and column."""
    values = np.empty((len(table), len(labels)))
    for j, label in enumerate(labels):
        column = table[label]
        if not pd.api.types.is_numeric_dtype(column.dtype):
            raise FormatError(f"{path}, data_{block}, column {label}: expected numbers, found text")
        values[:, j] = column.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise FormatError(
            f"{path}, data_{block}, row {int(row) + 1}, column {labels[col]}: expected a finite number, "
            f"found {values[row, col]}"
        )
    return values


def _block_to_json(block: StarBlock) -> dict[str, Any]:
    return {
        "name": block.name,
        "loop": block.loop,
        "version": block.version,
        "columns": {str(k): block.table[k].tolist() for k in block.table.columns},
    }


def _block_from_json(data: Mapping[str, Any], version: int | None) -> StarBlock:
    return StarBlock(str(data["name"]), pd.DataFrame(dict(data["columns"])), bool(data["loop"]), version)


def _relion_quaternions(angles: np.ndarray) -> np.ndarray:
    """(n, 4) xyzw quaternions of ``Rotation.from_euler("ZYZ", angles, degrees=True).inv()``.

    Closed form of ``q_z(rot) q_y(tilt) q_z(psi)``, conjugated (vectorised; scipy's
    ``from_euler`` is ~20x slower for 10^6 particles). Tested against scipy and eulerangles.
    """
    half = np.deg2rad(np.asarray(angles, dtype=np.float64).reshape(-1, 3)) / 2
    a, b, c = half[:, 0], half[:, 1], half[:, 2]
    sb, cb = np.sin(b), np.cos(b)
    return np.column_stack(
        [-sb * np.sin(c - a), -sb * np.cos(a - c), -cb * np.sin(a + c), cb * np.cos(a + c)]
    )


def _rotation_from_relion(angles: np.ndarray) -> Rotation:
    return Rotation.from_quat(_relion_quaternions(angles))


def _wrap(degrees: np.ndarray) -> np.ndarray:
    return 180.0 - np.mod(180.0 - degrees, 360.0)  # into (-180, 180]


def _relion_euler(quaternions: np.ndarray) -> np.ndarray:
    """(n, 3) rot, tilt, psi (degrees) of orientations given as (n, 4) xyzw quaternions.

    The inverse of :func:`_relion_quaternions`: tilt in [0, 180], rot and psi in
    (-180, 180]. At tilt 0 the whole in-plane angle goes to psi (rot = 0); at tilt 180
    to rot (psi = 0).
    """
    q = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
    x, y, z, w = -q[:, 0], -q[:, 1], -q[:, 2], q[:, 3]  # the passive (RELION) rotation
    sin_half, cos_half = np.hypot(x, y), np.hypot(z, w)
    total = np.arctan2(z, w)  # (rot + psi) / 2
    diff = np.arctan2(-x, y)  # (rot - psi) / 2
    diff = np.where(sin_half < 1e-12, -total, diff)
    total = np.where(cos_half < 1e-12, diff, total)
    rot, psi = np.rad2deg(total + diff), np.rad2deg(total - diff)
    tilt = np.rad2deg(2 * np.arctan2(sin_half, cos_half))
    return np.column_stack([_wrap(rot), tilt, _wrap(psi)])


def _clean(values: np.ndarray) -> np.ndarray:
    return np.round(values, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def relion_tomograms_table(tomograms: TomogramsInput) -> pd.DataFrame:
    """The RELION tomogram table (``data_global`` of ``tomograms.star``) as a DataFrame.

    Parameters
    ----------
    tomograms
        A ``tomograms.star`` path, a table with ``rlnTomoName`` and ``rlnTomoSizeX/Y/Z``,
        a ProjectionModel read by :func:`read_relion_tilt_series`, or a mapping
        ``{tomo_name: (X, Y, Z)}`` of bin-1 sizes.

    Returns
    -------
    pandas.DataFrame
        One row per tomogram, RELION labels as columns.

    Examples
    --------
    >>> relion_tomograms_table({"TS_01": (4096, 4096, 1000)}).to_dict("list")
    {'rlnTomoName': ['TS_01'], 'rlnTomoSizeX': [4096], 'rlnTomoSizeY': [4096], 'rlnTomoSizeZ': [1000]}
    """
    if isinstance(tomograms, pd.DataFrame):
        relion = tomograms.attrs.get("relion")
        if "rlnTomoName" not in tomograms.columns and relion is not None:
            return pd.DataFrame(dict(relion["tomograms"]))
        return tomograms
    if isinstance(tomograms, Mapping):
        names = [str(k) for k in tomograms]
        sizes = np.asarray([list(v) for v in tomograms.values()], dtype=np.int64).reshape(-1, 3)
        return pd.DataFrame(
            {"rlnTomoName": names, **{label: sizes[:, i] for i, label in enumerate(TOMOGRAM_SIZE_LABELS)}}
        )
    path = Path(tomograms)
    blocks = read_star(path)
    block = blocks.get("global") or next((b for b in blocks.values() if b.loop), None)
    if block is None:
        raise FormatError(
            f"{path}: expected a data_global loop block of tomograms, found blocks {list(blocks)}"
        )
    return block.table


def _tomogram_sizes(tomograms: TomogramsInput, where: str) -> dict[str, np.ndarray]:
    table = relion_tomograms_table(tomograms)
    missing = [label for label in ("rlnTomoName", *TOMOGRAM_SIZE_LABELS) if label not in table.columns]
    if missing:
        raise InvalidValueError(f"{where}: the tomogram table lacks {missing}; found {list(table.columns)}")
    sizes = table[list(TOMOGRAM_SIZE_LABELS)].to_numpy(dtype=np.float64)
    return {str(name): sizes[i] for i, name in enumerate(table["rlnTomoName"].astype(str))}


def _sizes_per_particle(sizes: Mapping[str, np.ndarray], ids: np.ndarray, where: str) -> np.ndarray:
    codes, names = pd.factorize(np.asarray(ids).reshape(-1))
    return _sizes_by_code(sizes, codes, np.asarray(names), where)


def _sizes_by_code(
    sizes: Mapping[str, np.ndarray], codes: np.ndarray, names: np.ndarray, where: str
) -> np.ndarray:
    """(n, 3) tomogram sizes of particles given as codes into the tomogram ``names``."""
    absent = [str(n) for n in names if str(n) not in sizes]
    if absent:
        raise InvalidValueError(
            f"{where}: no tomogram size for {absent[:5]} (tomograms known: {sorted(sizes)[:10]})"
        )
    if len(names) == 0:  # an empty set
        return np.zeros((0, 3))
    return np.stack([np.asarray(sizes[str(n)], dtype=np.float64) for n in names])[codes]


# ----------------------------------------------------------------------------- particles


def _particles_block(path: Path, blocks: Mapping[str, StarBlock]) -> StarBlock:
    if "particles" in blocks:
        return blocks["particles"]
    loops = [b for b in blocks.values() if b.loop and b.name not in ("optics", "general")]
    if len(loops) != 1:
        raise FormatError(
            f"{path}: expected one data_particles loop block, found blocks {[b.name for b in blocks.values()]}"
        )
    return loops[0]


def _pixel_size(path: Path, blocks: Mapping[str, StarBlock], table: pd.DataFrame) -> tuple[float, str]:
    optics = blocks.get("optics")
    if optics is None:
        raise FormatError(
            f"{path}: expected a data_optics block with one of {list(PIXEL_SIZE_LABELS)} (RELION >= 3.1), found "
            f"blocks {list(blocks)}"
        )
    label = next((lab for lab in PIXEL_SIZE_LABELS if lab in optics.table.columns), None)
    if label is None:
        raise FormatError(
            f"{path}, data_optics: expected a column {' or '.join(PIXEL_SIZE_LABELS)}, "
            f"found {list(optics.table.columns)}"
        )
    values = _finite(path, "optics", optics.table, [label])[:, 0]
    if len(table) and "rlnOpticsGroup" in table.columns and "rlnOpticsGroup" in optics.table.columns:
        # only the optics groups particles use (an empty set keeps them all)
        used = set(pd.unique(table["rlnOpticsGroup"]).tolist())
        values = values[optics.table["rlnOpticsGroup"].isin(used).to_numpy()]
    distinct = np.unique(values)
    if distinct.size != 1 or distinct[0] <= 0:
        raise InvalidValueError(
            f"{path}, data_optics, column {label}: expected one positive pixel size for all particles, "
            f"found {distinct.tolist()} (split the set by optics group)"
        )
    return float(distinct[0]), label


def read_relion_particles(
    path: str | os.PathLike[str],
    *,
    tomograms: TomogramsInput | None = None,
    chunks: int | None = None,
) -> xr.Dataset:
    """Read a RELION 3.1, 4 or 5 particle STAR file into a PoseSet.

    Parameters
    ----------
    path
        The particle STAR file (``data_optics`` and ``data_particles``, optionally
        ``data_general``).
    tomograms
        The tomogram sizes, needed for RELION 5 centred coordinates
        (``rlnCenteredCoordinateX/Y/ZAngst``): a ``tomograms.star`` path, its table, a
        model from :func:`read_relion_tilt_series` or ``{tomo_name: (X, Y, Z)}``.
    chunks
        Particles per chunk: return a dask-backed PoseSet chunked along ``particle``.

    Returns
    -------
    xarray.Dataset
        The PoseSet (see the module docstring for the conversion). Unmodelled columns are
        data variables named by their RELION label; ``attrs["relion"]`` keeps the rest.

    Raises
    ------
    FormatError
        A malformed file, missing coordinate/optics columns, NaN angles or coordinates
        (the message names file, row and column).
    InvalidValueError
        RELION 5 coordinates without ``tomograms``, unknown tomograms, several pixel sizes.

    Examples
    --------
    The RELION 5 worked example of CONVENTIONS.md 3.3:

    >>> import tempfile, pathlib
    >>> import cryoxr
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> poses = cryoxr.make_poseset([[1000.0, 1500.0, 400.0]], experiment_id=["TS_01"], pixel_spacing=1.35)
    >>> sizes = {"TS_01": (4096, 4096, 1000)}
    >>> write_relion_particles(poses, folder / "p.star", tomograms=sizes)
    >>> print((folder / "p.star").read_text().splitlines()[-1])
    TS_01 -1414.8 -739.8 -135.0 0.0 0.0 0.0 0.0 0.0 0.0 1
    >>> read_relion_particles(folder / "p.star", tomograms=sizes).position.values.tolist()
    [[1000.0, 1500.0, 400.0]]
    """
    path = Path(path)
    blocks = read_star(path)
    block = _particles_block(path, blocks)
    table = block.table
    px, px_label = _pixel_size(path, blocks, table)
    columns = set(table.columns)
    layout_name = next(
        (name for name, lay in PARTICLE_LAYOUTS.items() if lay.centred and set(lay.labels) <= columns), None
    )
    if layout_name is None:
        layout_name = "pixel"
    layout = PARTICLE_LAYOUTS[layout_name]
    ndim = 3 if layout.labels[2] in columns else 2
    coordinate_labels = layout.labels[:ndim]
    missing = [label for label in coordinate_labels if label not in columns]
    if missing:
        raise FormatError(
            f"{path}, data_{block.name}: expected columns {list(PARTICLE_LAYOUTS['pixel'].labels[:2])}(Z) or "
            f"{list(PARTICLE_LAYOUTS['centred'].labels)}, missing {missing}"
        )
    experiment_label = next((label for label in EXPERIMENT_LABELS[ndim] if label in columns), None)
    origin_labels = [label for label in ORIGIN_LABELS[:ndim] if label in columns]
    angle_labels = [label for label in ANGLE_LABELS if label in columns]
    if angle_labels and len(angle_labels) != 3:
        raise FormatError(
            f"{path}, data_{block.name}: expected all of {list(ANGLE_LABELS)}, found {angle_labels}"
        )
    n = len(table)
    coordinates = _finite(path, block.name, table, coordinate_labels)
    # factorized once: the tomogram sizes below go by code, not by string
    if experiment_label is not None:
        codes, uniques = pd.factorize(table[experiment_label])
        names = np.asarray([str(u) for u in uniques], dtype=str)
        ids: np.ndarray | str = names[codes] if n else np.zeros(0, dtype=str)
    else:
        codes, names = np.zeros(n, dtype=np.intp), np.asarray([path.stem])
        ids = path.stem
    attrs_sizes: dict[str, list[float]] | None = None
    if layout.centred:
        if tomograms is None:
            raise InvalidValueError(
                f"{path}: RELION 5 centred coordinates ({layout.labels[0]}, ...) need the tomogram sizes: "
                "pass tomograms= (tomograms.star, its table or {name: (X, Y, Z)})"
            )
        sizes = _tomogram_sizes(tomograms, str(path))
        used_names = names if n else names[:0]
        per_particle = _sizes_by_code(sizes, codes, used_names, str(path))
        position = (
            _in_pixels(path, block.name, coordinate_labels, coordinates, px, px_label) + per_particle / 2.0
        )
        used = set(used_names.tolist())
        attrs_sizes = {k: [float(x) for x in v] for k, v in sizes.items() if k in used}
    else:
        position = coordinates
    origin = np.zeros((n, ndim))
    if origin_labels:
        origin[:, [ORIGIN_LABELS.index(lab) for lab in origin_labels]] = _finite(
            path, block.name, table, origin_labels
        )
    if ndim == 2:
        position = np.column_stack([position, np.zeros(n)])
        origin = np.column_stack([origin, np.zeros(n)])
    quaternions = np.zeros((n, 4))
    quaternions[:, 3] = 1.0
    if angle_labels:
        quaternions = _relion_quaternions(_finite(path, block.name, table, ANGLE_LABELS))
    if all(label in columns for label in SUBTOMOGRAM_ANGLE_LABELS) and n:
        pre = _rotation_from_relion(_finite(path, block.name, table, SUBTOMOGRAM_ANGLE_LABELS))
        quaternions = np.asarray((pre * Rotation.from_quat(quaternions)).as_quat()).reshape(n, 4)
        origin = pre.apply(origin).reshape(n, 3)
    shift = -_in_pixels(path, block.name, ORIGIN_LABELS, origin, px, px_label) + 0.0  # no -0.0
    modelled = {*coordinate_labels, *origin_labels, *angle_labels}
    if experiment_label is not None:
        modelled.add(experiment_label)
    extra = {label: _extra_values(table[label]) for label in table.columns if label not in modelled}
    relion_attrs: dict[str, Any] = {
        "version": block.version,
        "block": block.name,
        "columns": [str(c) for c in table.columns],
        "ndim": ndim,
        "pixel_size_label": px_label,
        "experiment_label": experiment_label,
        "blocks": [_block_to_json(b) if b is not block else None for b in blocks.values()],
    }
    if attrs_sizes is not None:
        relion_attrs["tomogram_dimensions"] = attrs_sizes
    poses = make_poseset(
        position,
        shift=shift,
        orientation=quaternions,
        experiment_id=ids,
        pixel_spacing=px,
        source=str(path),
        extra=extra,
        chunks=chunks,
    )
    poses.attrs["relion"] = relion_attrs
    return poses


def _extra_values(column: pd.Series) -> np.ndarray:
    """A column as a numpy array; text as fixed-width str (xarray converts object arrays
    element by element through pandas, ~1 s per 10^6 strings)."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy()
    return np.asarray(column.to_numpy(dtype=object), dtype=str)


def _particle_columns(
    poses: xr.Dataset,
    relion: Mapping[str, Any],
    coordinate_labels: Sequence[str],
    ndim: int,
    experiment_label: str,
) -> list[str]:
    """Output column order: the file's own order when read by cryoxr, else a default."""
    modelled = [experiment_label, *coordinate_labels, *ORIGIN_LABELS[:ndim], *ANGLE_LABELS]
    extras = [str(v) for v in poses.data_vars if v not in ("position", "shift", "orientation")]
    replace = {
        old: new
        for lay in PARTICLE_LAYOUTS.values()
        for old, new in zip(lay.labels, coordinate_labels, strict=False)
    }
    columns: list[str] = []
    for label in relion.get("columns", []):
        label = str(label)
        if label in extras:
            columns.append(label)
        elif label in replace and replace[label] not in columns:
            columns.append(replace[label])
        elif label in modelled and label not in columns:
            columns.append(label)
        elif label in EXPERIMENT_LABELS[ndim] and experiment_label not in columns:
            columns.append(experiment_label)
    columns += [label for label in modelled if label not in columns]
    columns += [label for label in extras if label not in columns]
    return columns


def write_relion_particles(
    poses: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    version: int = 5,
    tomograms: TomogramsInput | None = None,
    overwrite: bool = False,
) -> None:
    """Write a PoseSet as a RELION particle STAR file (the inverse of the reader).

    Parameters
    ----------
    poses
        The PoseSet; numpy- or dask-backed (written chunk by chunk, memory bounded).
    path
        Destination file.
    version
        5 (``rlnCenteredCoordinateX/Y/ZAngst``, ``# version 50001``), or 4 / 3
        (``rlnCoordinateX/Y/Z``, ``# version 30001``). 2D sets always use
        ``rlnCoordinateX/Y``.
    tomograms
        Tomogram sizes for version 5 (as for the reader); default: the sizes the set was
        read with.
    overwrite
        Replace an existing file.

    Notes
    -----
    Angles are written as the canonical ZYZ triple (tilt in [0, 180], rot and psi in
    (-180, 180]; at tilt 0 the in-plane angle is all psi); a file with an equivalent
    non-canonical triple (tilt < 0, rot = 270, ...) is written with the canonical one, the
    same rotation. Columns and blocks read from a file come back in their order (the
    optics pixel size is set to the PoseSet's ``pixel_spacing``); a new set gets a
    minimal ``data_optics`` block and ``rlnOpticsGroup`` 1.

    Raises
    ------
    InvalidValueError
        Unknown version, missing tomogram sizes for version 5.
    FileExistsNoOverwriteError
        ``path`` exists and ``overwrite`` is false.

    Examples
    --------
    See the module docstring and :func:`read_relion_particles`.
    """
    if version not in VERSIONS:
        raise InvalidValueError(
            f"write_relion_particles: version must be one of {sorted(VERSIONS)}, found {version!r}"
        )
    validate_poseset(poses, check_values=False)
    relion: Mapping[str, Any] = poses.attrs.get("relion") or {}
    ndim = int(relion.get("ndim", 3))
    version_line, layout_name = VERSIONS[version]
    layout = PARTICLE_LAYOUTS[layout_name if ndim == 3 else "pixel"]
    coordinate_labels = layout.labels[:ndim]
    experiment_label = str(relion.get("experiment_label") or EXPERIMENT_LABELS[ndim][0])
    px = float(poses.attrs["pixel_spacing"])
    sizes: Mapping[str, Any] | None = None
    if layout.centred:
        if tomograms is not None:
            sizes = _tomogram_sizes(tomograms, str(path))
        elif "tomogram_dimensions" in relion:
            sizes = {k: np.asarray(v, dtype=np.float64) for k, v in relion["tomogram_dimensions"].items()}
        else:
            raise InvalidValueError(
                f"write_relion_particles: version 5 writes centred coordinates and needs the tomogram sizes: "
                f"pass tomograms= or version=4 ({path})"
            )
    columns = _particle_columns(poses, relion, coordinate_labels, ndim, experiment_label)
    blocks_json = relion.get("blocks")
    if blocks_json:
        others = [None if b is None else _block_from_json(b, version_line) for b in blocks_json]
        px_label = relion.get("pixel_size_label")
        for block in others:
            if block is not None and block.name == "optics" and px_label in block.table.columns:
                block.table[px_label] = px  # positions are written in pixels of this size
    else:
        optics = pd.DataFrame(
            {
                "rlnOpticsGroup": [1],
                "rlnOpticsGroupName": ["opticsGroup1"],
                ("rlnTomoTiltSeriesPixelSize" if ndim == 3 else "rlnMicrographPixelSize"): [px],
            }
        )
        others = [StarBlock("optics", optics, True, version_line), None]
        if "rlnOpticsGroup" not in columns:
            columns.append("rlnOpticsGroup")
    name = str(relion.get("block", "particles"))
    header = StarBlock(name, pd.DataFrame(columns=columns), True, version_line)
    has_subtomo = all(label in poses.data_vars for label in SUBTOMOGRAM_ANGLE_LABELS)
    n = poses.sizes["particle"]
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as handle:
        for block in others:
            if block is not None:
                write_star_blocks(handle, [block])
                continue
            handle.write(format_block_header(header).encode("utf-8"))
            for start in range(0, n, WRITE_CHUNK_ROWS):
                part = poses.isel(particle=slice(start, start + WRITE_CHUNK_ROWS)).compute()
                values = _particle_values(
                    part, ndim, px, has_subtomo, layout, sizes, experiment_label, str(path)
                )
                handle.write(_format_rows_buffer({label: values[label] for label in columns}))


def _particle_values(
    part: xr.Dataset,
    ndim: int,
    px: float,
    has_subtomo: bool,
    layout: CoordinateLayout,
    sizes: Mapping[str, Any] | None,
    experiment_label: str,
    where: str,
) -> dict[str, Any]:
    m = part.sizes["particle"]
    position = np.asarray(part["position"].values, dtype=np.float64).reshape(m, 3)
    shift = np.asarray(part["shift"].values, dtype=np.float64).reshape(m, 3)
    quaternions = np.asarray(part["orientation"].values, dtype=np.float64).reshape(m, 4)
    if "experiment_id" in part.coords:
        ids = np.asarray(part.coords["experiment_id"].values).astype(str)
    else:
        ids = np.full(m, str(part.attrs["experiment_id"]))
    if has_subtomo and m:
        pre = _rotation_from_relion(
            np.column_stack([part[label].values for label in SUBTOMOGRAM_ANGLE_LABELS])
        )
        quaternions = np.asarray((pre.inv() * Rotation.from_quat(quaternions)).as_quat()).reshape(m, 4)
        shift = pre.inv().apply(shift).reshape(m, 3)
    origin = _clean(-shift * px)
    angles = _clean(_relion_euler(quaternions))
    if layout.centred and sizes is not None:
        coordinates = _clean((position - _sizes_per_particle(sizes, ids, where) / 2.0) * px)
    else:
        coordinates = _clean(position)
    values: dict[str, Any] = {str(label): part[label].values for label in part.data_vars}
    for i, label in enumerate(layout.labels[:ndim]):
        values[label] = coordinates[:, i]
    for i, label in enumerate(ORIGIN_LABELS[:ndim]):
        values[label] = origin[:, i]
    for i, label in enumerate(ANGLE_LABELS):
        values[label] = angles[:, i]
    values[experiment_label] = ids
    values.setdefault("rlnOpticsGroup", np.ones(m, dtype=np.int64))
    return values


# ----------------------------------------------------------------------------- tilt series


def _projection_rows(path: Path, block: str, table: pd.DataFrame) -> np.ndarray:
    """(n, 4, 4) matrices from RELION 4 ``rlnTomoProjX/Y/Z/W`` text rows ``[a,b,c,d]``."""
    out = np.empty((len(table), 4, 4))
    for r, label in enumerate(PROJECTION_ROW_LABELS):
        for i, text in enumerate(table[label].astype(str)):
            try:
                row = [float(v) for v in text.strip().strip("[]").split(",")]
            except ValueError:
                row = []
            if len(row) != 4:
                raise FormatError(
                    f"{path}, data_{block}, row {i + 1}, column {label}: expected '[a,b,c,d]', found {text!r}"
                )
            out[i, r] = row
    return out


def _angles_from_matrices(path: Path, block: str, matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (rx, ry, rz) degrees and translation of RELION 4 projection matrices."""
    top = matrices[:, :2, :3]
    third = np.cross(top[:, 0], top[:, 1])
    rotation = np.concatenate([top, third[:, None, :]], axis=1)
    error = np.abs(rotation @ np.swapaxes(rotation, 1, 2) - np.eye(3)).max(axis=(1, 2))
    if (error > 1e-5).any():
        i = int(np.argmax(error > 1e-5))
        raise FormatError(
            f"{path}, data_{block}, row {i + 1}: rlnTomoProjX/Y rows are not those of a rotation "
            f"(|R R^T - I| = {error[i]:.2g})"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gimbal lock detected", category=UserWarning)
        xyz = Rotation.from_matrix(rotation).as_euler("xyz", degrees=True)
    return np.asarray(xyz).reshape(-1, 3), rotation


def _tilt_series_block(path: Path, blocks: Mapping[str, StarBlock], name: str) -> StarBlock:
    if name in blocks:
        return blocks[name]
    loops = [b for b in blocks.values() if b.loop and b.name != "global"]
    if len(loops) == 1:
        return loops[0]
    raise FormatError(f"{path}: expected a block data_{name}, found blocks {list(blocks)}")


def read_relion_tilt_series(
    tomograms_star: str | os.PathLike[str],
    *,
    tilt_image_size: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Read a RELION ``tomograms.star`` and its tilt series into one ProjectionModel.

    Parameters
    ----------
    tomograms_star
        RELION 5 (``data_global`` with ``rlnTomoTiltSeriesStarFile``; per-tilt-series
        files with ``rlnTomoXTilt/YTilt/ZRot``, ``rlnTomoX/YShiftAngst``) or RELION 4 /
        Warp (per-tomogram blocks in the same file with ``rlnTomoProjX/Y/Z/W``).
    tilt_image_size
        (nx, ny) of the tilt images (or ``{tomo_name: (nx, ny)}``); RELION projects
        about ``(nx // 2, ny // 2)``. Default: the tomogram's ``(rlnTomoSizeX, rlnTomoSizeY)``.
    root
        Folder that per-tilt-series files must lie in (symlinks resolved); a path in the
        STAR file that leads outside it is a :class:`~cryoxr.errors.FormatError`. Default:
        no restriction (RELION's own lookup: the file's folder, its parents, the cwd).

    Returns
    -------
    pandas.DataFrame
        The ProjectionModel (``experiment_id`` = ``rlnTomoName``, ``pixel_spacing`` =
        ``rlnTomoTiltSeriesPixelSize``, ``source`` = per-tilt-series file), other per-tilt
        columns kept; ``attrs`` as described in the module docstring.

    Raises
    ------
    FormatError
        Missing columns or blocks, NaN alignment values, non-rotation matrices.
    CryoxrFileNotFoundError
        A per-tilt-series STAR file that does not exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import cryoxr
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> model = cryoxr.make_projection_model(rotation_y=[0.0, 30.0], rotation_z=85.0, dx=5.0,
    ...                                      experiment_id="TS_01", pixel_spacing=1.35)
    >>> write_relion_tilt_series(model, folder / "tomograms.star", tomograms={"TS_01": (4096, 4096, 1000)})
    >>> back = read_relion_tilt_series(folder / "tomograms.star")
    >>> back[["rotation_y", "rotation_z", "dx"]].values.tolist()
    [[0.0, 85.0, 5.0], [30.0, 85.0, 5.0]]
    >>> back.attrs["tilt_image_center"], back.attrs["specimen_center"]
    ({'TS_01': [2048.0, 2048.0]}, {'TS_01': [2048.0, 2048.0, 500.0]})
    """
    path = Path(tomograms_star)
    blocks = read_star(path)
    global_block = blocks.get("global") or next((b for b in blocks.values() if b.loop), None)
    if global_block is None:
        raise FormatError(
            f"{path}: expected a data_global loop block of tomograms, found blocks {list(blocks)}"
        )
    table = global_block.table
    for label in ("rlnTomoName", "rlnTomoTiltSeriesPixelSize"):
        if label not in table.columns:
            raise FormatError(f"{path}, data_global: expected a column {label}, found {list(table.columns)}")
    pixel_sizes = _finite(path, global_block.name, table, ["rlnTomoTiltSeriesPixelSize"])[:, 0]
    if (pixel_sizes <= 0).any():
        row = int(np.argmax(pixel_sizes <= 0))
        raise FormatError(
            f"{path}, data_{global_block.name}, row {row + 1}, column rlnTomoTiltSeriesPixelSize: expected a "
            f"positive pixel size, found {float(pixel_sizes[row])!r}"
        )
    has_sizes = all(label in table.columns for label in TOMOGRAM_SIZE_LABELS)
    sizes = _finite(path, global_block.name, table, TOMOGRAM_SIZE_LABELS) if has_sizes else None
    models: list[pd.DataFrame] = []
    layout: dict[str, Any] = {}
    dims: dict[str, list[float]] = {}
    specimen: dict[str, list[float]] = {}
    image_centre: dict[str, list[float]] = {}
    for row, name in enumerate(table["rlnTomoName"].astype(str)):
        px = float(pixel_sizes[row])
        if "rlnTomoTiltSeriesStarFile" in table.columns:
            star_name = str(table["rlnTomoTiltSeriesStarFile"].iloc[row])
            ts_path = _resolve(path, star_name, None if root is None else Path(root))
            if not (_exists(ts_path) and ts_path.is_file()):
                raise CryoxrFileNotFoundError(
                    f"{path}, data_global, row {row + 1}, rlnTomoTiltSeriesStarFile: {star_name!r} not found "
                    f"(looked in {path.resolve().parent}, its parent folders and the current directory)"
                )
            ts_blocks = read_star(ts_path)
        else:
            star_name, ts_path, ts_blocks = None, path, blocks
        ts_block = _tilt_series_block(ts_path, ts_blocks, name)
        ts = ts_block.table
        if len(ts) == 0:
            raise FormatError(f"{ts_path}, data_{ts_block.name}: expected at least one tilt row, found none")
        if sizes is not None:
            dims[name] = [float(v) for v in sizes[row]]
            specimen[name] = [float(v // 2) for v in sizes[row]]
        if tilt_image_size is None:
            nxy = sizes[row][:2] if sizes is not None else None
        elif isinstance(tilt_image_size, Mapping):
            nxy = np.asarray(tilt_image_size[name], dtype=np.float64)
        else:
            nxy = np.asarray(tilt_image_size, dtype=np.float64)
        centre = None if nxy is None else np.floor(np.asarray(nxy, dtype=np.float64) / 2)
        if centre is not None:
            image_centre[name] = [float(v) for v in centre]
        if all(label in ts.columns for label, _ in TILT_ALIGNMENT_LABELS.values()):
            values = {
                column: _in_pixels(
                    ts_path, ts_block.name, [label], _finite(ts_path, ts_block.name, ts, [label]),
                    px if scaled else 1.0, "rlnTomoTiltSeriesPixelSize" if scaled else "1",
                )[:, 0]
                for column, (label, scaled) in TILT_ALIGNMENT_LABELS.items()
            }  # fmt: skip
            modelled = {label for label, _ in TILT_ALIGNMENT_LABELS.values()}
        elif all(label in ts.columns for label in PROJECTION_ROW_LABELS):
            if sizes is None or centre is None:
                raise FormatError(
                    f"{path}, data_global: RELION 4 projection matrices need {list(TOMOGRAM_SIZE_LABELS)}"
                )
            matrices = _projection_rows(ts_path, ts_block.name, ts)
            xyz, rotation = _angles_from_matrices(ts_path, ts_block.name, matrices)
            # P = S(c_img) S(d) R S(-c_spec)  =>  d = t - c_img + (R c_spec)[:2]
            d = matrices[:, :2, 3] - centre + (rotation @ np.asarray(specimen[name]))[:, :2]
            values = {
                PMDL.ROTATION_X: xyz[:, 0],
                PMDL.ROTATION_Y: xyz[:, 1],
                PMDL.ROTATION_Z: xyz[:, 2],
                PMDL.SHIFT_X: d[:, 0],
                PMDL.SHIFT_Y: d[:, 1],
            }
            modelled = set(PROJECTION_ROW_LABELS)
        else:
            raise FormatError(
                f"{ts_path}, data_{ts_block.name}: expected columns "
                f"{[label for label, _ in TILT_ALIGNMENT_LABELS.values()]} or {list(PROJECTION_ROW_LABELS)}, "
                f"found {list(ts.columns)}"
            )
        extra = {label: ts[label].to_numpy() for label in ts.columns if label not in modelled}
        models.append(
            make_projection_model(
                **values, experiment_id=name, pixel_spacing=px, source=str(ts_path), extra=extra
            )
        )
        layout[name] = {
            "file": star_name,
            "block": ts_block.name,
            "columns": [str(c) for c in ts.columns],
        }
    if not models:
        raise FormatError(f"{path}, data_global: expected at least one tomogram, found none")
    model = pd.concat(models, ignore_index=True)
    model.attrs = {
        "tomogram_dimensions": dims,
        "specimen_center": specimen,
        "tilt_image_center": image_centre,
        "relion": {
            "version": global_block.version,
            "block": global_block.name,
            "tomograms": _block_to_json(global_block)["columns"],
            "tilt_series": layout,
        },
    }
    return model


def write_relion_tilt_series(
    model: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    tomograms: TomogramsInput | None = None,
    overwrite: bool = False,
) -> None:
    """Write a ProjectionModel as a RELION 5 ``tomograms.star`` plus per-tilt-series files.

    Parameters
    ----------
    model
        A ProjectionModel; one tilt series per ``experiment_id``.
    path
        The ``tomograms.star`` to write. Per-tilt-series files go where the model's
        ``rlnTomoTiltSeriesStarFile`` says (relative to ``path``'s folder), else to
        ``tilt_series/<name>.star`` next to it.
    tomograms
        The tomogram table or sizes (as for :func:`read_relion_particles`); default: the
        table the model was read with (``model.attrs["relion"]``), else
        ``model.attrs["tomogram_dimensions"]``.
    overwrite
        Replace existing files.

    Notes
    -----
    Always writes the RELION 5 layout (angles and shifts, ``# version 50001``); a model
    read from RELION 4 projection matrices loses its ``rlnTomoProjX/Y/Z/W`` columns. Extra
    model columns are written when their name is a RELION label (``rln...``).

    Raises
    ------
    InvalidValueError
        No tomogram sizes for a tilt series.
    FileExistsNoOverwriteError
        A file exists and ``overwrite`` is false.
    """
    validate_projection_model(model)
    path = Path(path)
    relion: Mapping[str, Any] = model.attrs.get("relion") or {}
    if tomograms is not None:
        table = relion_tomograms_table(tomograms).copy()
    elif relion.get("tomograms"):
        table = pd.DataFrame(dict(relion["tomograms"]))
    elif model.attrs.get("tomogram_dimensions"):
        table = relion_tomograms_table(model.attrs["tomogram_dimensions"]).copy()
    else:
        table = pd.DataFrame({"rlnTomoName": pd.unique(model[PMDL.EXPERIMENT_ID]).astype(str)})
    names = [str(n) for n in pd.unique(model[PMDL.EXPERIMENT_ID])]
    known = table["rlnTomoName"].astype(str).tolist()
    absent = [n for n in names if n not in known]
    if absent:
        raise InvalidValueError(f"write_relion_tilt_series: no tomogram row for {absent} (table has {known})")
    table = table[table["rlnTomoName"].astype(str).isin(names)].reset_index(drop=True)
    missing = [label for label in TOMOGRAM_SIZE_LABELS if label not in table.columns]
    if missing:
        raise InvalidValueError(
            f"write_relion_tilt_series: the tomogram table lacks {missing}; pass tomograms="
        )
    layout: Mapping[str, Any] = relion.get("tilt_series", {})
    files: list[str] = []
    pixel_sizes: list[float] = []
    for name in table["rlnTomoName"].astype(str):
        entry = layout.get(name, {})
        files.append(str(entry.get("file") or f"tilt_series/{name}.star"))
        pixel_sizes.append(float(model.loc[model[PMDL.EXPERIMENT_ID] == name, PMDL.PIXEL_SPACING].iloc[0]))
    table["rlnTomoTiltSeriesStarFile"] = files
    table["rlnTomoTiltSeriesPixelSize"] = pixel_sizes
    for label in TOMOGRAM_SIZE_LABELS:
        table[label] = table[label].astype(np.int64)
    version = VERSIONS[5][0]
    outputs: list[tuple[Path, StarBlock]] = []
    for name, file_name in zip(table["rlnTomoName"].astype(str), files, strict=True):
        rows = model[model[PMDL.EXPERIMENT_ID].astype(str) == name]
        px = float(rows[PMDL.PIXEL_SPACING].iloc[0])
        data: dict[str, Any] = {}
        for column, (label, scaled) in TILT_ALIGNMENT_LABELS.items():
            data[label] = _clean(rows[column].to_numpy(dtype=np.float64) * (px if scaled else 1.0))
        entry = layout.get(name, {})
        order = [str(c) for c in entry.get("columns", [])]
        alignment_labels = [label for label, _ in TILT_ALIGNMENT_LABELS.values()]
        extras = [str(c) for c in rows.columns if str(c).startswith("rln") and c not in alignment_labels]
        columns = [c for c in order if c in extras or c in alignment_labels]
        columns += [c for c in alignment_labels if c not in columns]
        columns += [c for c in extras if c not in columns and c not in PROJECTION_ROW_LABELS]
        frame = pd.DataFrame({c: data[c] if c in data else rows[c].to_numpy() for c in columns})
        outputs.append((Path(file_name), StarBlock(str(entry.get("block", name)), frame, True, version)))
    targets = [(path.parent / f if not f.is_absolute() else f) for f, _ in outputs]
    for target in [path, *targets]:
        if target.exists() and not overwrite:
            raise FileExistsNoOverwriteError(
                f"{target}: exists; pass overwrite=True to replace it (nothing was written)"
            )
    for target, (_, block) in zip(targets, outputs, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_star([block], target, overwrite=overwrite)
    write_star(
        [StarBlock(str(relion.get("block", "global")), table, True, version)], path, overwrite=overwrite
    )
