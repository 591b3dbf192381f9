"""TOM / AV3 / Dynamo ``.em`` files: volumes (lazy) and motive lists (PoseSet).

**Header** (512 bytes, TOM ``tom_emread``; :data:`EM_HEADER`): byte 0 the machine that
wrote it (6 = PC, little-endian; 0 OS-9, 2 Convex, 3 SGI, 5 Mac = big-endian), byte 3 the
data type (:data:`EM_DTYPES`: 1 int8 as ``emfile`` reads it, 2 int16, 4 int32, 5 float32,
9 float64), then ``nx, ny, nz`` (int32), an 80-byte comment, 40 int32 parameters and 256
bytes of user data; the voxels follow, x fastest, so the array is ``(nz, ny, nx)``. The
file stores **no usable pixel size**: :func:`read_em` needs ``pixel_spacing=`` and never
guesses. Volumes are read lazily, one memory map per task, exactly as MRC files
(:class:`cryoxr.io.mrc.array.MrcArray`); ``nz == 1`` is a 2D micrograph.

**Motive list** (TOM/AV3 MOTL, a 20 x N float32 matrix written as nx = 20, ny = N, nz = 1;
rows as TOM documents them, 1-based, :data:`MOTL_ROWS`): 1 cross-correlation, 4 particle
number, 5 tomogram number, 6 feature index, 8-10 x, y, z in the full tomogram, 11-13 shift
after rotation of the template, 14-16 shift before it, 17 phi, 18 psi, 19 theta, 20 class.
Conversion: ``position = (x, y, z) - origin`` (``origin="one_based"``, default: TOM is
MATLAB, voxel 1 is the first, as copick's reader; ``"none"`` keeps the numbers, as
Dynamo's own ``table2motl`` copies them between the two tools); ``shift`` = rows 11-13;
``orientation = Rotation.from_euler("zxz", [phi, theta, psi])`` (degrees, extrinsic) -- the
inverse of Dynamo's ``(tdrot, tilt, narot) = (-psi, -theta, -phi)`` of Dynamo's
``table2motl`` conversion, whose cryoxr orientation is ``from_euler("zxz", [tdrot, tilt,
narot]).inv()``. ``experiment_id`` is the tomogram number as text unless given. Every row
is kept as a data variable (``motl_<name>``), so nothing is lost. The origin default is
**UNVERIFIED** against TOM's extraction code: it is a keyword.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> motl = np.zeros((1, 1, 20), np.float32)
>>> motl[0, 0, [0, 4, 7, 8, 9, 16, 17, 18]] = [0.5, 3, 11, 21, 31, 10, 30, 20]
>>> path = folder / "motl.em"
>>> _ = path.write_bytes(em_header_bytes(motl.shape, motl.dtype) + motl.tobytes())
>>> poses = read_em_motive_list(path, pixel_spacing=4.0)
>>> poses.position.values.tolist(), poses.experiment_id.values.tolist()
([[10.0, 20.0, 30.0]], ['3'])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.image import Chunks, Image
from cryoxr.io._image_read import IMAGE_CLASS
from cryoxr.io._paths import PathLike, open_file
from cryoxr.io.mrc.array import MrcArray
from cryoxr.io.plaintext import require_pixel_spacing
from cryoxr.poseset import make_poseset

__all__ = [
    "EM_DTYPES",
    "EM_HEADER",
    "EM_SUFFIXES",
    "MOTL_ROWS",
    "describe_em_header",
    "em_header_bytes",
    "is_motive_list",
    "read_em",
    "read_em_motive_list",
]

EM_SUFFIXES = (".em",)
HEADER_BYTES = 512

#: the 512-byte header (TOM ``tom_emread``), little-endian; big-endian files swap it
EM_HEADER = np.dtype(
    [
        ("machine", "u1"),
        ("version", "u1"),
        ("unused", "u1"),
        ("dtype", "u1"),
        ("nx", "<i4"),
        ("ny", "<i4"),
        ("nz", "<i4"),
        ("comment", "S80"),
        ("params", "<i4", (40,)),
        ("userdata", "S256"),
    ]
)

#: header byte 3 -> numpy type (1 is int8, as the ``emfile`` package reads it)
EM_DTYPES: dict[int, str] = {1: "i1", 2: "i2", 4: "i4", 5: "f4", 9: "f8"}
#: header byte 0 -> byte order
EM_MACHINES: dict[int, Literal["<", ">"]] = {6: "<", 1: "<", 0: ">", 2: ">", 3: ">", 5: ">"}

#: motive-list rows (0-based) -> data-variable name; rows 7-9, 10-12 and 16-18 also give
#: position, shift and orientation
MOTL_ROWS: dict[int, str] = {
    0: "score",
    1: "x_free",
    2: "y_free",
    3: "particle_number",
    4: "tomogram_number",
    5: "feature_index",
    6: "row7",
    7: "x",
    8: "y",
    9: "z",
    10: "shift_x",
    11: "shift_y",
    12: "shift_z",
    13: "shift_before_rotation_x",
    14: "shift_before_rotation_y",
    15: "shift_before_rotation_z",
    16: "phi",
    17: "psi",
    18: "theta",
    19: "class",
}
ORIGIN_OFFSETS: dict[str, float] = {"one_based": 1.0, "none": 0.0}


def em_header_bytes(shape: tuple[int, ...], dtype: np.dtype[Any] | type, *, comment: bytes = b"") -> bytes:
    """A little-endian (PC) EM header for an array of ``shape`` (``(nz, ny, nx)``) and ``dtype``.

    Examples
    --------
    >>> len(em_header_bytes((2, 3, 4), np.float32))
    512
    """
    codes = {np.dtype(v).str[1:]: k for k, v in EM_DTYPES.items()}
    kind = np.dtype(dtype).str[1:]
    if kind not in codes:
        raise InvalidValueError(f"EM files hold {sorted(EM_DTYPES.values())}, found dtype {np.dtype(dtype)}")
    nz, ny, nx = (1,) * (3 - len(shape)) + tuple(int(s) for s in shape)
    header = np.zeros((), EM_HEADER)
    header["machine"], header["dtype"] = 6, codes[kind]
    header["nx"], header["ny"], header["nz"] = nx, ny, nz
    header["comment"] = comment[:80]
    return header.tobytes()


def _header(path: Path) -> tuple[np.void, np.dtype[Any], tuple[int, int, int], os.stat_result]:
    handle, st = open_file(path, what="EM")
    with handle:
        head = handle.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        raise FormatError(f"{path}: expected a {HEADER_BYTES}-byte EM header, found {len(head)} bytes")
    machine = head[0]
    if machine not in EM_MACHINES:
        raise FormatError(
            f"{path}: header byte 0 (machine) must be one of {sorted(EM_MACHINES)}, found {machine}"
        )
    order = EM_MACHINES[machine]
    header = np.frombuffer(head, EM_HEADER.newbyteorder(order) if order == ">" else EM_HEADER)[0]
    code = int(header["dtype"])
    if code not in EM_DTYPES:
        raise FormatError(
            f"{path}: header byte 3 (data type) must be one of {sorted(EM_DTYPES)}, found {code}"
        )
    shape = (int(header["nz"]), int(header["ny"]), int(header["nx"]))
    if not all(0 < n < 2**31 for n in shape):
        raise FormatError(f"{path}: header nx, ny, nz must be > 0, found {shape[::-1]}")
    dtype = np.dtype(EM_DTYPES[code]).newbyteorder(order)
    needed = HEADER_BYTES + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if st.st_size < needed:
        raise FormatError(
            f"{path}: header says {shape[::-1]} voxels of {dtype.name} ({needed} bytes with the header), "
            f"found a file of {st.st_size} bytes (truncated)"
        )
    return header, dtype, shape, st


def _header_attrs(header: np.void) -> dict[str, Any]:
    comment = bytes(header["comment"]).split(b"\0")[0].decode("latin-1").strip()
    return {
        "em_machine": int(header["machine"]),
        "em_comment": comment,
        "em_params": [int(v) for v in header["params"]],
    }


def is_motive_list(path: PathLike) -> bool:
    """Whether an ``.em`` file is a motive list (20 values per particle, one plane).

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "v.em"
    >>> _ = p.write_bytes(em_header_bytes((2, 2, 2), np.float32) + bytes(32))
    >>> is_motive_list(p)
    False
    """
    _, _, (nz, _, nx), _ = _header(Path(path))
    return nx == 20 and nz == 1


def read_em(
    path: PathLike,
    *,
    chunks: Chunks = "auto",
    experiment_id: str | None = None,
    pixel_spacing: float | None = None,
    allow_anisotropic: bool = False,
) -> Image:
    """Open an ``.em`` volume (or image) lazily; the pixel size must be given.

    Parameters
    ----------
    path
        The file.
    chunks
        dask chunks (``"auto"``: slabs of whole planes, as for MRC).
    experiment_id
        Default: the file name without its suffix.
    pixel_spacing
        Å per pixel: required, EM headers store none cryoxr trusts.
    allow_anisotropic
        Accepted for :func:`cryoxr.io.open_image`'s signature; EM has one spacing.

    Raises
    ------
    InvalidValueError
        No ``pixel_spacing``.
    FormatError
        Short header, unknown machine or data type, sizes <= 0, a truncated data block.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "vol.em"
    >>> data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> _ = p.write_bytes(em_header_bytes(data.shape, data.dtype) + data.tobytes())
    >>> tomo = read_em(p, pixel_spacing=8.0)
    >>> tomo.dims, tomo.pixel_spacing, float(tomo.data[1, 2, 3])
    (('z', 'y', 'x'), 8.0, 23.0)
    """
    p = Path(path)
    header, dtype, shape, st = _header(p)
    spacing = require_pixel_spacing(pixel_spacing, p, "EM", of="the volume")
    squeeze = shape[0] == 1
    array = MrcArray(str(p), HEADER_BYTES, shape, dtype, squeeze=squeeze, opened=(st.st_size, st.st_mtime_ns))
    if chunks == "auto" and not squeeze:
        planes = max(1, min(shape[0], (64 * 2**20) // (shape[1] * shape[2] * dtype.itemsize)))
        chunks = (planes, shape[1], shape[2])
    cls = IMAGE_CLASS[(2 if squeeze else 3, False)]
    return cls.from_array(
        array,
        pixel_spacing=spacing,
        experiment_id=experiment_id if experiment_id is not None else p.name.split(".")[0] or p.name,
        source=str(p),
        chunks=chunks if chunks is not None else "auto",
        attrs=_header_attrs(header),
    )


def read_em_motive_list(
    path: PathLike,
    *,
    pixel_spacing: float | None = None,
    origin: Literal["one_based", "none"] = "one_based",
    experiment_id: str | None = None,
    chunks: int | None = None,
) -> xr.Dataset:
    """Read a TOM/AV3 motive list (``.em``, 20 x N) into a PoseSet.

    Parameters
    ----------
    path
        The motive list.
    pixel_spacing
        Å per pixel of the coordinates: required (the file stores none).
    origin
        ``"one_based"`` (subtract 1: MATLAB voxel 1 is cryoxr's 0) or ``"none"``.
    experiment_id
        One id for every particle; default the tomogram number (row 5) as text.
    chunks
        Particles per chunk (a dask-backed PoseSet).

    Raises
    ------
    FormatError
        Not 20 values per particle in one plane, or non-finite coordinates or angles.
    InvalidValueError
        No ``pixel_spacing``, an unknown ``origin``.
    """
    p = Path(path)
    if origin not in ORIGIN_OFFSETS:
        raise InvalidValueError(f"{p}: origin must be one of {sorted(ORIGIN_OFFSETS)}, found {origin!r}")
    header, dtype, shape, _ = _header(p)
    if shape[0] != 1 or shape[2] != 20:
        raise FormatError(
            f"{p}: expected a motive list (nx = 20 values per particle, nz = 1), found nx, ny, nz = {shape[::-1]}"
        )
    spacing = require_pixel_spacing(pixel_spacing, p, "EM motive list", of="the tomogram")
    handle, _ = open_file(p, what="EM motive list")
    with handle:
        handle.seek(HEADER_BYTES)
        raw = handle.read(shape[1] * 20 * dtype.itemsize)
    rows = np.frombuffer(raw, dtype).reshape(shape[1], 20).astype(np.float64)
    used = [7, 8, 9, 10, 11, 12, 16, 17, 18]
    bad = np.argwhere(~np.isfinite(rows[:, used]))
    if len(bad):
        particle, column = bad[0]
        raise FormatError(
            f"{p}, particle {particle}, row {used[column] + 1} ({MOTL_ROWS[used[column]]}): "
            f"expected a finite number, found {rows[particle, used[column]]}"
        )
    orientation = Rotation.from_euler("zxz", rows[:, [16, 18, 17]], degrees=True)
    if experiment_id is None:
        numbers = rows[:, 4]
        ids: Any = np.array([f"{n:g}" for n in numbers])
    else:
        ids = experiment_id
    extra = {f"motl_{name}": rows[:, i] for i, name in MOTL_ROWS.items()}
    ds = make_poseset(
        rows[:, 7:10] - ORIGIN_OFFSETS[origin],
        shift=rows[:, 10:13],
        orientation=orientation,
        experiment_id=ids,
        pixel_spacing=spacing,
        source=str(p),
        extra=extra,
        chunks=chunks,
    )
    ds.attrs.update({"format": "em-motive-list", "origin": origin, **_header_attrs(header)})
    return ds


def describe_em_header(path: PathLike) -> dict[str, Any]:
    """What an ``.em`` image's header says (for ``cryoxr info`` without a pixel size).

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "v.em"
    >>> _ = p.write_bytes(em_header_bytes((2, 3, 4), np.int16) + bytes(48))
    >>> describe_em_header(p)["shape"], describe_em_header(p)["pixel_spacing"]
    ([2, 3, 4], None)
    """
    header, dtype, shape, _ = _header(Path(path))
    squeeze = shape[0] == 1
    return {
        "kind": "micrograph" if squeeze else "tomogram",
        "shape": list(shape[1:] if squeeze else shape),
        "dtype": dtype.newbyteorder("=").name,
        "pixel_spacing": None,
        "note": "EM files store no pixel size: pass pixel_spacing= (--pixel-spacing) to open it",
        "size_in_memory": int(np.prod(shape)) * dtype.itemsize,
        "comment": _header_attrs(header)["em_comment"],
    }
