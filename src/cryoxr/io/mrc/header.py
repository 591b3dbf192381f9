"""The MRC2014 header: modes, field layout, what cryoxr reads from it and writes into it.

Reading parses the 1024-byte header (:func:`_read_header`, either byte order), derives the
voxel size from ``cella / (mx, my, mz)`` (:func:`_voxel_size`) and keeps the fields cryoxr
does not model *raw* in the DataArray's attrs, under ``mrc_*`` keys
(:func:`_header_attrs`), so that :func:`cryoxr.io.mrc.write_mrc` restores them
(:func:`_build_header`; docs/CONVENTIONS.md §10: the ``origin`` is not combined with ``nxstart``
nor sign-flipped; both are kept as stored):

========================  ===================================================
attr                      header field(s)
========================  ===================================================
``mrc_origin``            ``origin`` (x, y, z), Å, as stored
``mrc_nstart``            ``nxstart, nystart, nzstart``, in x, y, z order (a file with
                          ``mapc, mapr, maps`` other than 1, 2, 3 stores them per
                          column, row, section: they are permuted with the data)
``mrc_cella``             ``cella`` (x, y, z), Å
``mrc_sampling``          ``mx, my, mz``
``mrc_cellb``             ``cellb`` (alpha, beta, gamma), degrees
``mrc_ispg``              ``ispg``
``mrc_nversion``          ``nversion``
``mrc_exttyp``            ``exttyp`` (str)
``mrc_labels``            the ``nlabl`` first labels (list of str)
``mrc_extended_header``   the ``nsymbt`` bytes after the header, base64
``mrc_extra1/2``          the ``extra1`` / ``extra2`` bytes, base64 (if not all zero)
``mrc_stats``             ``dmin, dmax, dmean, rms``
========================  ===================================================

The writer recomputes ``dmin, dmax, dmean, rms`` in the same pass as the data (as mrcfile
does; in float64 where mrcfile uses float32); where they agree with ``mrc_stats`` to float32 precision the stored
values are written back, so that unchanged data round-trip bit for bit. The machine stamp
and byte order of written files are always little-endian.

8-bit data: MRC2014 (and mrcfile) read mode 0 as signed int8. IMOD marks its files with a
stamp and a flag that says whether mode 0 bytes are signed (:data:`IMOD_STAMP`); cryoxr
reads mode 0 as uint8 when that flag says unsigned, and writes uint8 images as mode 0 with
the stamp and the flag clear (int8 with the flag set), so both round-trip and IMOD reads
them right. mrcfile, which ignores the flag, reads a uint8 file as int8.

Examples
--------
>>> MRC_MODES[2], WRITE_MODE_BY_DTYPE["u1"], HEADER_DTYPE.itemsize == HEADER_BYTES
(dtype('float32'), 0, True)
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import mrcfile.dtypes
import numpy as np
import xarray as xr

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._image_read import isotropic_spacing

__all__ = [
    "AXIS_BY_MAP",
    "BYTE_ORDER_BY_STAMP",
    "HEADER_BYTES",
    "HEADER_DTYPE",
    "IMAGE_STACK_ISPG",
    "IMOD_SIGNED_BYTES",
    "IMOD_STAMP",
    "LITTLE_ENDIAN_STAMP",
    "MRC_MODES",
    "NVERSION",
    "VOLUME_ISPG",
    "VOLUME_STACK_ISPG",
    "WRITE_MODE_BY_DTYPE",
    "ByteOrder",
]

ByteOrder = Literal["<", ">"]
HEADER_BYTES = 1024
HEADER_DTYPE: np.dtype[Any] = mrcfile.dtypes.HEADER_DTYPE

#: MRC mode -> numpy dtype (mrcfile ``utils.dtype_from_mode``; modes 3 and 101 unsupported)
MRC_MODES: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    4: np.dtype(np.complex64),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
}

#: numpy dtype (kind + itemsize) -> MRC mode: the dtypes MRC holds exactly, written as they
#: are. uint8 is mode 0 with IMOD's "unsigned bytes" flag (see :data:`IMOD_STAMP`); any other
#: dtype (float64, int32, ...) is refused unless ``write_mrc(dtype=...)`` asks for a conversion.
WRITE_MODE_BY_DTYPE: dict[str, int] = {
    "i1": 0,
    "u1": 0,
    "i2": 1,
    "f4": 2,
    "c8": 4,
    "u2": 6,
    "f2": 12,
}

#: IMOD's header stamp (bytes 152-155) and flags (156-159): with the stamp, flag bit 1 set
#: means mode 0 holds *signed* bytes, clear means unsigned (IMOD ``mrcfiles.c``,
#: ``MRC_FLAGS_SBYTES``). MRC2014 and mrcfile read mode 0 as int8 whatever the flags; cryoxr
#: reads it as uint8 only when an IMOD stamp says unsigned, and writes uint8 that way, so
#: uint8 images round-trip (mrcfile reads such a file as int8: values above 127 wrap).
IMOD_STAMP = 1146047817
IMOD_SIGNED_BYTES = 1
_STAMP_AT, _FLAGS_AT = 152 - 112, 156 - 112  # offsets inside the ``extra2`` field

#: first byte of the machine stamp -> byte order (mrcfile ``utils.byte_order_from_machine_stamp``)
BYTE_ORDER_BY_STAMP: dict[int, ByteOrder] = {0x44: "<", 0x11: ">"}
LITTLE_ENDIAN_STAMP = (0x44, 0x44, 0x00, 0x00)

#: ``mapc/mapr/maps`` value -> axis name
AXIS_BY_MAP: dict[int, str] = {1: "x", 2: "y", 3: "z"}

#: ispg values: 0 = image stack, 1 = volume, 401..630 = volume stack (mrcfile constants)
IMAGE_STACK_ISPG = 0
VOLUME_ISPG = 1
VOLUME_STACK_ISPG = range(401, 631)

NVERSION = 20141


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _read_header(path: Path, raw: bytes) -> tuple[np.void, ByteOrder]:
    """The header record (in the file's byte order) and that byte order, from the first bytes."""
    if len(raw) < HEADER_BYTES:
        raise FormatError(f"{path}: truncated header: the file has {len(raw)} bytes, an MRC header has 1024")
    raw = raw[:HEADER_BYTES]
    little = np.frombuffer(raw, HEADER_DTYPE.newbyteorder("<"), count=1)[0]
    order = BYTE_ORDER_BY_STAMP.get(int(little["machst"][0]))
    if order is None:
        # unknown stamp (old writers): take the byte order in which the mode is valid
        big = np.frombuffer(raw, HEADER_DTYPE.newbyteorder(">"), count=1)[0]
        order = "<" if int(little["mode"]) in MRC_MODES or int(big["mode"]) not in MRC_MODES else ">"
    return np.frombuffer(raw, HEADER_DTYPE.newbyteorder(order), count=1)[0], order


def _imod_flags(header: np.void, order: ByteOrder) -> int | None:
    """IMOD's flags when the header carries IMOD's stamp, else None."""
    extra2 = bytes(header["extra2"])
    stamp = int(np.frombuffer(extra2, f"{order}i4", count=1, offset=_STAMP_AT)[0])
    if stamp != IMOD_STAMP:
        return None
    return int(np.frombuffer(extra2, f"{order}i4", count=1, offset=_FLAGS_AT)[0])


def file_dtype(header: np.void, order: ByteOrder) -> np.dtype[Any]:
    """The dtype of the data block (in the file's byte order); the mode must be in :data:`MRC_MODES`.

    Mode 0 is int8 (MRC2014), or uint8 when IMOD's stamp says the bytes are unsigned.
    """
    mode = int(header["mode"])
    dtype = MRC_MODES[mode]
    if mode == 0:
        flags = _imod_flags(header, order)
        if flags is not None and not flags & IMOD_SIGNED_BYTES:
            dtype = np.dtype(np.uint8)
    return dtype.newbyteorder(order)


def _voxel_size(
    path: Path, header: np.void, spatial: str, *, pixel_spacing: float | None, allow_anisotropic: bool
) -> float:
    """Isotropic voxel size in Å from ``cella / (mx, my, mz)`` over the ``spatial`` axes."""
    if pixel_spacing is not None:
        return float(pixel_spacing)
    sizes: dict[str, float] = {}
    for axis in spatial:
        cell = float(header["cella"][axis])
        m = int(header[f"m{axis}"])
        if m <= 0:
            raise FormatError(f"{path}: header field m{axis} must be > 0 to give a voxel size, found {m}")
        # cella is float32 (~7.2 significant digits): round the quotient to 7 of them,
        # so that 12509.44 / 928 gives 13.48 and not 13.480000463
        value = float(f"{cell / m:.7g}")
        if not math.isfinite(value) or value <= 0:
            raise FormatError(
                f"{path}: header field cella.{axis} gives voxel size {value} Å (cella.{axis} = {cell}, "
                f"m{axis} = {m}); expected a positive finite number (pass pixel_spacing= to override)"
            )
        sizes[axis] = value
    return isotropic_spacing(
        sizes,
        str(path),
        "header field cella: voxel size",
        "voxel size",
        rtol=1e-5,
        allow_anisotropic=allow_anisotropic,
        stacklevel=3,
    )


def _header_attrs(header: np.void, extended: bytes) -> dict[str, Any]:
    """The header fields cryoxr does not model, raw and JSON-friendly."""
    nlabl = max(0, min(int(header["nlabl"]), 10))
    attrs: dict[str, Any] = {
        "mrc_origin": [float(header["origin"][a]) for a in "xyz"],
        "mrc_nstart": [int(header[f"n{a}start"]) for a in "xyz"],
        "mrc_cella": [float(header["cella"][a]) for a in "xyz"],
        "mrc_sampling": [int(header[f"m{a}"]) for a in "xyz"],
        "mrc_cellb": [float(header["cellb"][a]) for a in ("alpha", "beta", "gamma")],
        "mrc_ispg": int(header["ispg"]),
        "mrc_nversion": int(header["nversion"]),
        "mrc_exttyp": bytes(header["exttyp"]).decode("latin-1"),
        "mrc_labels": [bytes(label).decode("latin-1") for label in header["label"][:nlabl]],
        "mrc_stats": [float(header[f]) for f in ("dmin", "dmax", "dmean", "rms")],
    }
    if extended:
        attrs["mrc_extended_header"] = _b64(extended)
    for field in ("extra1", "extra2"):
        raw = bytes(header[field])
        if any(raw):
            attrs[f"mrc_{field}"] = _b64(raw)
    return attrs


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def _attr_array(attrs: Mapping[str, Any], key: str, default: Any, dtype: Any) -> np.ndarray:
    value = attrs.get(key, default)
    try:
        out = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InvalidValueError(f"write_mrc: attr {key!r} must be 3 numbers, found {value!r}") from None
    if out.shape != (3,):
        raise InvalidValueError(f"write_mrc: attr {key!r} must be 3 numbers, found {value!r}")
    return out


def _attr_bytes(attrs: Mapping[str, Any], key: str) -> bytes:
    value = attrs.get(key, "")
    try:
        return base64.b64decode(value, validate=True) if value else b""
    except (TypeError, ValueError):
        raise InvalidValueError(f"write_mrc: attr {key!r} must be base64 text, found {value!r:.60}") from None


def _build_header(
    data: xr.DataArray,
    mode: int,
    file_shape: tuple[int, int, int],
    extended: bytes,
    *,
    signed_bytes: bool = True,
) -> np.ndarray:
    """A little-endian header from the image, restoring the raw ``mrc_*`` attrs."""
    attrs = data.attrs
    stack = data.dims[0] == "image"
    volume = data.ndim == 3 and not stack
    nz, ny, nx = file_shape
    spacing = float(attrs["pixel_spacing"])
    h = np.zeros((), HEADER_DTYPE.newbyteorder("<"))
    h["nx"], h["ny"], h["nz"], h["mode"] = nx, ny, nz, mode
    standard = np.array([nx, ny, nz if volume else 1])
    sampling = _attr_array(attrs, "mrc_sampling", standard, np.int32)
    cella = _attr_array(attrs, "mrc_cella", standard * spacing, np.float32)
    # raw cell and sampling only while they still give this image's voxel size
    checked = 3 if volume else 2
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_spacing = cella[:checked].astype(np.float64) / sampling[:checked]
    if not (np.all(sampling[:checked] > 0) and np.allclose(raw_spacing, spacing, rtol=1e-6, atol=0)):
        sampling, cella = standard, (standard * spacing).astype(np.float32)
    for i, axis in enumerate("xyz"):
        h[f"m{axis}"] = sampling[i]
        h["cella"][axis] = cella[i]
        h[f"n{axis}start"] = _attr_array(attrs, "mrc_nstart", (0, 0, 0), np.int32)[i]
        h["origin"][axis] = _attr_array(attrs, "mrc_origin", (0, 0, 0), np.float32)[i]
    for i, angle in enumerate(("alpha", "beta", "gamma")):
        h["cellb"][angle] = _attr_array(attrs, "mrc_cellb", (90, 90, 90), np.float32)[i]
    h["mapc"], h["mapr"], h["maps"] = 1, 2, 3
    ispg = int(attrs.get("mrc_ispg", VOLUME_ISPG if volume else IMAGE_STACK_ISPG))
    if stack:
        ispg = IMAGE_STACK_ISPG
    elif volume and ispg == IMAGE_STACK_ISPG:
        ispg = VOLUME_ISPG
    h["ispg"] = ispg
    h["nsymbt"] = len(extended)
    h["exttyp"] = str(attrs.get("mrc_exttyp", "")).encode("latin-1")
    h["nversion"] = int(attrs.get("mrc_nversion", NVERSION)) or NVERSION
    for field in ("extra1", "extra2"):
        raw = _attr_bytes(attrs, f"mrc_{field}")
        h[field] = raw.ljust(h[field].dtype.itemsize, b"\0")[: h[field].dtype.itemsize]
    if mode == 0:
        # IMOD's stamp and its signed-bytes flag say which 8-bit integers these are
        extra2 = bytearray(bytes(h["extra2"]))
        flags = int(np.frombuffer(bytes(extra2), "<i4", count=1, offset=_FLAGS_AT)[0])
        if int(np.frombuffer(bytes(extra2), "<i4", count=1, offset=_STAMP_AT)[0]) != IMOD_STAMP:
            flags = 0
        flags = flags & ~IMOD_SIGNED_BYTES | (IMOD_SIGNED_BYTES if signed_bytes else 0)
        extra2[_STAMP_AT : _STAMP_AT + 8] = np.array([IMOD_STAMP, flags], "<i4").tobytes()
        h["extra2"] = bytes(extra2)
    h["map"] = b"MAP "
    h["machst"] = LITTLE_ENDIAN_STAMP
    labels = [str(label).encode("latin-1")[:80] for label in list(attrs.get("mrc_labels", []))[:10]]
    h["nlabl"] = len(labels)
    for i, label in enumerate(labels):
        h["label"][i] = label
    return h
