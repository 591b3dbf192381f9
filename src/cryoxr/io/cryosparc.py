"""cryoSPARC ``.cs`` particle sets -> PoseSet, every field kept.

A ``.cs`` file is a numpy structured array saved with ``np.save`` (``\\x93NUMPY`` magic),
one row per particle, field names ``group/name`` (``location/center_x_frac``,
``alignments3D/pose``, ``ctf/df1_A``, ...); strings are fixed-width bytes. cryoxr reads it
through its npy header (checked against the file's size; a file that needs pickling is
refused) and converts,
as pyem's ``csparc2star`` does (:data:`CS_FIELDS`):

- ``position`` = ``(center_x_frac · nx, center_y_frac · ny, 0)`` in pixels of the
  micrograph, with ``(ny, nx) = location/micrograph_shape``; ``pixel_spacing`` =
  ``location/micrograph_psize_A`` (one value for the set), else ``pixel_spacing=``;
- ``orientation`` from ``alignments3D/pose`` (axis-angle vector, radians): pyem's
  ``expmap(pose)`` is RELION's rotation matrix, i.e. ``Rotation.from_rotvec(pose).inv()``
  (docs/CONVENTIONS.md §3); from ``alignments2D/pose`` (in-plane angle ψ, radians) when there is
  no 3D pose: RELION ``(0, 0, ψ)``, i.e. ``Rz(ψ).inv()``; identity when neither (picks);
- ``shift`` = ``-alignments3D/shift`` (pyem writes it as ``rlnOrigin``, and position =
  coordinate - origin), rescaled from ``alignments3D/psize_A`` to the micrograph's pixels
  (likewise ``alignments2D``);
- ``experiment_id`` = the micrograph file name without its suffix.

Every field becomes a data variable named with ``.`` for ``/`` (a ``/`` would make zarr
groups), vector fields one variable per component (``alignments3D.shift.0``);
``attrs["cryosparc_fields"]`` maps the names back. Particle sets are 2D: ``z`` is 0.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> dtype = [("uid", "<u8"), ("location/micrograph_path", "S12"), ("location/micrograph_shape", "<u4", (2,)),
...          ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"),
...          ("location/micrograph_psize_A", "<f4")]
>>> particles = np.array([(7, b"J1/mic_a.mrc", (400, 600), 0.25, 0.5, 1.5)], dtype=dtype)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "P1_J2_picked.cs"
>>> with open(path, "wb") as f:
...     np.save(f, particles)
>>> poses = read_cryosparc(path)
>>> poses.position.values.tolist(), poses.pixel_spacing, poses.experiment_id.values.tolist()
([[150.0, 200.0, 0.0]], 1.5, ['mic_a'])
"""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath
from tokenize import TokenError
from typing import Any

import numpy as np
import xarray as xr
from numpy.lib import format as npy
from scipy.spatial.transform import Rotation

from cryoxr.errors import CryoxrError, FormatError, InvalidValueError
from cryoxr.io._paths import PathLike, open_file
from cryoxr.io.plaintext import require_pixel_spacing
from cryoxr.poseset import make_poseset

__all__ = ["CS_FIELDS", "read_cryosparc"]

#: the fields the conversion uses (role -> field); all others are kept as they are
CS_FIELDS: dict[str, str] = {
    "x_frac": "location/center_x_frac",
    "y_frac": "location/center_y_frac",
    "shape": "location/micrograph_shape",
    "psize": "location/micrograph_psize_A",
    "micrograph": "location/micrograph_path",
    "pose3d": "alignments3D/pose",
    "shift3d": "alignments3D/shift",
    "psize3d": "alignments3D/psize_A",
    "pose2d": "alignments2D/pose",
    "shift2d": "alignments2D/shift",
    "psize2d": "alignments2D/psize_A",
}


def _load(path: Path) -> np.ndarray:
    """The structured array, after checking the npy header against the file's size (no pickles)."""
    handle, st = open_file(path, what="cryoSPARC .cs")
    with handle:
        try:
            version = npy.read_magic(handle)
            reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"npy format version {version} (cryoxr reads 1.0 and 2.0)")
            with warnings.catch_warnings():  # a Python-2 header (cryoSPARC v2) is parsed with a warning
                warnings.simplefilter("ignore", UserWarning)
                shape, _fortran, dtype = reader(handle)
        except (ValueError, SyntaxError, TokenError, TypeError, OverflowError, MemoryError) as err:
            raise FormatError(
                f"{path}: expected a cryoSPARC .cs file (numpy .npy header), found: {err}"
            ) from None
        if dtype.hasobject:
            raise FormatError(f"{path}: expected plain fields, found pickled objects in the dtype (refused)")
        if dtype.names is None or len(shape) != 1:
            raise FormatError(
                f"{path}: expected a 1-D structured array of particles, found shape {shape}, dtype {dtype}"
            )
        nbytes = int(shape[0]) * dtype.itemsize
        if nbytes > st.st_size - handle.tell():
            raise FormatError(
                f"{path}: header says {shape[0]} particles of {dtype.itemsize} bytes, found "
                f"{st.st_size - handle.tell()} bytes of data (truncated)"
            )
        data = handle.read(nbytes)
    return np.frombuffer(data, dtype=dtype, count=int(shape[0]))


def _finite(path: Path, array: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(array[name], dtype=np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        raise FormatError(
            f"{path}, particle {bad[0][0]}, field {name}: expected a finite number, found {values[tuple(bad[0])]}"
        )
    return values


def _one_value(path: Path, values: np.ndarray, name: str) -> float:
    if not (values > 0).all() or np.ptp(values) > 1e-6 * values.max():
        raise FormatError(
            f"{path}, field {name}: expected one pixel size > 0 for the set, found {sorted(set(values.tolist()))[:5]}"
        )
    return float(values[0])


def _orientation(path: Path, array: np.ndarray, names: tuple[str, ...]) -> tuple[Rotation, str]:
    if CS_FIELDS["pose3d"] in names:
        return Rotation.from_rotvec(_finite(path, array, CS_FIELDS["pose3d"])).inv(), "alignments3D"
    if CS_FIELDS["pose2d"] in names:
        psi = _finite(path, array, CS_FIELDS["pose2d"]).reshape(len(array), -1)[:, 0]
        return Rotation.from_euler("z", psi).inv(), "alignments2D"
    return Rotation.identity(len(array)), ""


def _extra(array: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    extra: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    for field in array.dtype.names or ():
        values = array[field]
        base = field.replace("/", ".")
        if values.dtype.kind == "S":
            values = np.char.decode(values, "utf-8", errors="replace")
        columns = (
            [values]
            if values.ndim == 1
            else [values.reshape(len(array), -1)[:, i] for i in range(int(np.prod(values.shape[1:])))]
        )
        for i, column in enumerate(columns):
            name = base if len(columns) == 1 else f"{base}.{i}"
            extra[name], names[name] = column, field if len(columns) == 1 else f"{field}[{i}]"
    return extra, names


def read_cryosparc(
    path: PathLike,
    *,
    pixel_spacing: float | None = None,
    experiment_id: str | None = None,
    chunks: int | None = None,
) -> xr.Dataset:
    """Read a cryoSPARC ``.cs`` particle set (picks, 2D or 3D classification) into a PoseSet.

    Parameters
    ----------
    path
        The ``.cs`` file.
    pixel_spacing
        Å per micrograph pixel, only for a file without ``location/micrograph_psize_A``;
        refused when it contradicts it.
    experiment_id
        One id for every particle; default the micrograph file name without suffix.
    chunks
        Particles per chunk (a dask-backed PoseSet).

    Raises
    ------
    FormatError
        Not a structured numpy file, a file needing pickle, no ``location`` fields, NaN
        positions or poses, several pixel sizes.
    InvalidValueError
        No pixel size anywhere, or one that contradicts the file.
    """
    p = Path(path)
    array = _load(p)
    names = array.dtype.names or ()
    missing = [CS_FIELDS[k] for k in ("x_frac", "y_frac", "shape") if CS_FIELDS[k] not in names]
    if missing:
        raise FormatError(
            f"{p}: expected the location fields {missing} to place particles, found fields {list(names)[:12]}"
        )
    shape = _finite(p, array, CS_FIELDS["shape"]).reshape(len(array), -1)
    if shape.shape[1] < 2:
        raise FormatError(
            f"{p}, field {CS_FIELDS['shape']}: expected (ny, nx) per particle, found {shape.shape[1]} values"
        )
    x = _finite(p, array, CS_FIELDS["x_frac"]) * shape[:, -1]
    y = _finite(p, array, CS_FIELDS["y_frac"]) * shape[:, -2]
    stored = (
        _one_value(p, _finite(p, array, CS_FIELDS["psize"]), CS_FIELDS["psize"])
        if CS_FIELDS["psize"] in names and len(array)
        else None
    )
    if (
        stored is not None
        and pixel_spacing is not None
        and not np.isclose(stored, float(pixel_spacing), rtol=1e-6)
    ):
        raise InvalidValueError(
            f"{p}: pixel_spacing={pixel_spacing} contradicts {CS_FIELDS['psize']} = {stored} Å"
        )
    spacing = (
        stored
        if stored is not None
        else require_pixel_spacing(pixel_spacing, p, "cryoSPARC .cs without location/micrograph_psize_A")
    )
    orientation, group = _orientation(p, array, names)
    shift = np.zeros((len(array), 3))
    shift_field = f"{group}/shift"
    if group and shift_field in names:
        align_psize = f"{group}/psize_A"
        scale = _finite(p, array, align_psize) / spacing if align_psize in names else np.ones(len(array))
        shift[:, :2] = -_finite(p, array, shift_field).reshape(len(array), -1)[:, :2] * scale[:, None]
    if experiment_id is not None:
        ids: Any = experiment_id
    elif CS_FIELDS["micrograph"] in names:
        paths = np.char.decode(array[CS_FIELDS["micrograph"]], "utf-8", errors="replace")
        # an empty micrograph path (picks imported without one) falls back to the file's name
        ids = np.array(
            [PurePosixPath(str(m)).name.split(".")[0] or p.name.split(".")[0] or p.name for m in paths]
        )
    else:
        ids = p.name.split(".")[0]
    extra, mapping = _extra(array)
    try:
        ds = make_poseset(
            np.c_[x, y, np.zeros(len(array))],
            shift=shift,
            orientation=orientation,
            experiment_id=ids,
            pixel_spacing=spacing,
            source=str(p),
            extra=extra,
            chunks=chunks,
        )
    except CryoxrError as err:  # say which file broke the PoseSet's rules
        raise type(err)(f"{p}: {err}") from None
    ds.attrs.update(
        {"format": "cryosparc-cs", "cryosparc_fields": mapping, "cryosparc_pose": group or "none"}
    )
    return ds
