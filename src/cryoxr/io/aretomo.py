"""AreTomo alignment files (``.aln``) <-> ProjectionModel.

Layout (AreTomo2 ``CSaveAlnFile.cpp``; AreTomo3 adds ``Thickness``)::

    # AreTomo Alignment / Priims bprmMn
    # RawSize = 4096 4096 51
    # NumPatches = 16
    # DarkFrame =     0    0   -68.00       (frame in tilt-sorted order, section in input stack, tilt)
    # AlphaOffset =    12.30
    # BetaOffset =     0.00
    # Thickness = 1910
    # SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
        0    84.4445    1.00000     13.382     21.802     1.00     1.00     1.00     0.00    -27.71
    # Local Alignment
       0   0 -1537.16  -1363.14     -6.93    -36.22   1.0

Conversion (as RELION 5, and consistent with AreTomo2's own ``.xf`` export, docs/CONVENTIONS.md §8
section 5): ``rotation_z = ROT``, ``rotation_y = TILT``, ``rotation_x = 0``,
``(dx, dy) = (TX, TY)`` in pixels of AreTomo's *input* stack. One row per aligned tilt
(dark frames have no row; ``excluded`` rows written become ``DarkFrame`` lines);
:data:`GLOBAL_COLUMNS` says where every column goes, and :data:`HEADER_FIELDS` where every
header field goes (``df.attrs["aretomo"]``), so writing back loses nothing. ``RawSize``
also fills the per-tilt columns ``image_size_x/y`` and ``tilt_image_center_x/y``;
AreTomo3's ``_CTF.txt`` and ``_TLT.txt`` (:mod:`cryoxr.io.aretomo_ctf`) add defocus,
astigmatism, phase shift, acquisition order and pre-exposure. The file stores no pixel
size: ``pixel_spacing=`` is required. Sizes out of 1..2**31-1, angles beyond ±360 and a
``NumPatches`` without its local section are refused. The local-alignment rows
(:data:`LOCAL_COLUMNS`: tilt index, patch, patch centre relative to the image centre,
residual shift, good flag) are kept in ``df.attrs["aretomo"]["local_alignment"]`` as
lists, not used for geometry.

Centres: AreTomo2 rotates images about ``((nx - 1) / 2, (ny - 1) / 2)``
(``Util/GShiftRotate2D.cu``); that is ``df.attrs["tilt_image_center"]`` (from
``RawSize``). Its tomogram centre is not settled: ``df.attrs["specimen_center"]`` is None.

Examples
--------
>>> import tempfile, pathlib
>>> from cryoxr import make_projection_model
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> model = make_projection_model(rotation_y=[-30.0, 30.0], rotation_z=85.0, dx=5.0, dy=-10.0,
...                               experiment_id="TS_01", pixel_spacing=1.35)
>>> write_aretomo_alignment(model, folder / "TS_01.aln", image_size=(4096, 4096))
>>> back = read_aretomo_alignment(folder / "TS_01.aln", pixel_spacing=1.35)
>>> back[["rotation_y", "rotation_z", "dx", "dy"]].values.tolist()
[[-30.0, 85.0, 5.0, -10.0], [30.0, 85.0, 5.0, -10.0]]
>>> back.attrs["tilt_image_center"], back.attrs["aretomo"]["raw_size"]
((2047.5, 2047.5), [4096, 4096, 2])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._atomic import atomic_path
from cryoxr.io._paths import PathLike
from cryoxr.io.aretomo_ctf import side_file_columns
from cryoxr.io.plaintext import (
    file_model,
    parse_numeric_rows,
    read_text_lines,
    require_pixel_spacing,
    warn_unstored_columns,
)
from cryoxr.projection_model import PMDL, PTC, validate_projection_model

__all__ = [
    "GLOBAL_COLUMNS",
    "HEADER_FIELDS",
    "LOCAL_COLUMNS",
    "AlnColumn",
    "AlnHeaderField",
    "read_aretomo_alignment",
    "write_aretomo_alignment",
]

MAGIC = "# AreTomo Alignment"
#: largest image size and stack index accepted (MRC's int32 sizes)
MAX_SIZE = 2**31 - 1
#: largest angle (deg) accepted in a tilt, tilt axis or offset
MAX_ANGLE = 360.0


class AlnColumn(NamedTuple):
    """One column of the global-alignment rows."""

    name: str  #: AreTomo's column name
    dtype: type  #: int or float
    field: str  #: ProjectionModel column it becomes
    default: float  #: written when the model has no such column


#: global rows, in file order
GLOBAL_COLUMNS: tuple[AlnColumn, ...] = (
    AlnColumn("SEC", int, "sec", -1.0),  # -1: input-stack section, from row order and dark frames
    AlnColumn("ROT", float, PMDL.ROTATION_Z, 0.0),
    AlnColumn("GMAG", float, "gmag", 1.0),
    AlnColumn("TX", float, PMDL.SHIFT_X, 0.0),
    AlnColumn("TY", float, PMDL.SHIFT_Y, 0.0),
    AlnColumn("SMEAN", float, "smean", 1.0),
    AlnColumn("SFIT", float, "sfit", 1.0),
    AlnColumn("SCALE", float, "scale", 1.0),
    AlnColumn("BASE", float, "base", 0.0),
    AlnColumn("TILT", float, PMDL.ROTATION_Y, 0.0),
)
#: local-alignment rows, in file order (key in ``attrs["aretomo"]["local_alignment"]``)
LOCAL_COLUMNS: tuple[AlnColumn, ...] = (
    AlnColumn("tilt", int, "tilt index (row of the global table)", 0.0),
    AlnColumn("patch", int, "patch index", 0.0),
    AlnColumn("x", float, "patch centre x in that tilt, pixels from the image centre", 0.0),
    AlnColumn("y", float, "patch centre y", 0.0),
    AlnColumn("shift_x", float, "residual shift x (measured - global - projected)", 0.0),
    AlnColumn("shift_y", float, "residual shift y", 0.0),
    AlnColumn("good", float, "1 good, 0 not", 0.0),
)


class AlnHeaderField(NamedTuple):
    """One ``# Key = values`` header line."""

    key: str  #: as in the file
    attr: str  #: key in ``df.attrs["aretomo"]``
    types: tuple[type, ...]  #: type of each value
    repeated: bool  #: may occur many times (a list of tuples)
    limits: tuple[tuple[float, float], ...]  #: inclusive range of each value


_SIZE = (1.0, float(MAX_SIZE))
_ANGLE = (-MAX_ANGLE, MAX_ANGLE)
_INDEX = (0.0, float(MAX_SIZE))
#: header lines, in the order AreTomo writes them
HEADER_FIELDS: tuple[AlnHeaderField, ...] = (
    AlnHeaderField("RawSize", "raw_size", (int, int, int), False, (_SIZE, _SIZE, _SIZE)),
    AlnHeaderField("NumPatches", "num_patches", (int,), False, (_INDEX,)),
    AlnHeaderField("DarkFrame", "dark_frames", (int, int, float), True, (_INDEX, _INDEX, _ANGLE)),
    AlnHeaderField("AlphaOffset", "alpha_offset", (float,), False, (_ANGLE,)),
    AlnHeaderField("BetaOffset", "beta_offset", (float,), False, (_ANGLE,)),
    AlnHeaderField("Thickness", "thickness", (int,), False, (_INDEX,)),
)
_HEADER = {f.key: f for f in HEADER_FIELDS}


def _header_values(path: Path, line_no: int, field: AlnHeaderField, text: str) -> list[Any]:
    tokens = text.split()
    if len(tokens) != len(field.types):
        raise FormatError(
            f"{path}, line {line_no}, header {field.key}: expected {len(field.types)} value(s), "
            f"found {len(tokens)} ({text.strip()!r})"
        )
    values: list[Any] = []
    for k, (token, kind, (low, high)) in enumerate(zip(tokens, field.types, field.limits, strict=True)):
        try:
            number = float(token)
        except ValueError:
            raise FormatError(
                f"{path}, line {line_no}, header {field.key} value {k + 1}: expected a number, found {token!r}"
            ) from None
        if not (low <= number <= high) or (kind is int and number != round(number)):
            expected = f"{'an integer' if kind is int else 'a number'} in [{low:g}, {high:g}]"
            raise FormatError(
                f"{path}, line {line_no}, header {field.key} value {k + 1}: expected {expected}, found {token!r}"
            )
        values.append(int(number) if kind is int else number)
    return values


def _numbers(path: Path, lines: list[tuple[int, str]], columns: Sequence[AlnColumn], what: str) -> np.ndarray:
    """Rows of ``columns``, each field finite, integer columns integers int64 can hold."""
    rows = parse_numeric_rows(path, lines, names=[c.name for c in columns], n_columns=len(columns), what=what)
    line_of = [k for k, text in lines if text.split()]
    for k, c in enumerate(columns):
        numbers = rows[:, k]
        bad = ~((numbers == np.round(numbers)) & (np.abs(numbers) < 2**53)) if c.dtype is int else None
        if c.field in (PMDL.ROTATION_Y, PMDL.ROTATION_Z):
            bad = np.abs(numbers) > MAX_ANGLE
        if bad is not None and bad.any():
            row = int(np.argmax(bad))
            expected = "an integer" if c.dtype is int else f"an angle within ±{MAX_ANGLE:g} deg"
            raise FormatError(
                f"{path}, line {line_of[row]}, column {k + 1} ({c.name}): expected {expected}, "
                f"found {float(rows[row, k])!r}"
            )
    return rows


def _parse(path: Path, lines: list[str]) -> tuple[dict[str, Any], dict[str, str], list[Any], list[Any]]:
    """Header values, unknown header lines, and the numbered global and local data lines."""
    if not lines[0].startswith(MAGIC):
        raise FormatError(f"{path}, line 1: expected {MAGIC!r}, found {lines[0][:60]!r}")
    header: dict[str, Any] = {f.attr: ([] if f.repeated else None) for f in HEADER_FIELDS}
    other: dict[str, str] = {}
    global_lines: list[tuple[int, str]] = []
    local_lines: list[tuple[int, str]] = []
    section: list[tuple[int, str]] | None = None
    for line_no, text in enumerate(lines[1:], 2):
        stripped = text.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith("SEC"):
                names = body.split()
                expected = [c.name for c in GLOBAL_COLUMNS]
                if names != expected:
                    raise FormatError(f"{path}, line {line_no}: expected columns {expected}, found {names}")
                section = global_lines
            elif body.startswith("Local Alignment"):
                section = local_lines
            elif "=" in body:
                key, _, value = body.partition("=")
                key = key.strip()
                if key in _HEADER:
                    field = _HEADER[key]
                    values = _header_values(path, line_no, field, value)
                    if field.repeated:
                        header[field.attr].append(values)
                    else:
                        header[field.attr] = values if len(values) > 1 else values[0]
                else:
                    other[key] = value.strip()
            continue
        if section is None:
            raise FormatError(
                f"{path}, line {line_no}: expected a '# SEC ROT ...' column line first, found data"
            )
        section.append((line_no, text))
    return header, other, global_lines, local_lines


def _check_sections(path: Path, header: dict[str, Any], sections: np.ndarray) -> None:
    """Dark frames and SEC values: sections of the input stack, each used once."""
    nz = header["raw_size"][2]
    dark = [int(d[1]) for d in header["dark_frames"]]
    used = [*dark, *sections.astype(np.int64).tolist()]
    if max(used, default=0) >= nz or len(set(used)) != len(used):
        raise FormatError(
            f"{path}: expected the SEC values and DarkFrame sections to be distinct sections of the "
            f"input stack (0..{nz - 1}), found SEC {sections.astype(np.int64).tolist()[:10]} and dark {dark[:10]}"
        )


def read_aretomo_alignment(
    aln: PathLike,
    *,
    pixel_spacing: float | None = None,
    ctf: PathLike | None = None,
    tilts: PathLike | None = None,
    experiment_id: str | None = None,
) -> pd.DataFrame:
    """Read an AreTomo ``.aln`` file (and AreTomo3's ``_CTF.txt``, ``_TLT.txt``) as a ProjectionModel.

    Parameters
    ----------
    aln
        The ``.aln`` file (AreTomo2 or AreTomo3).
    pixel_spacing
        Å per pixel of AreTomo's input stack (TX/TY are in those pixels whatever
        ``-OutBin``/``-AtBin``). Required: the file does not store it.
    ctf
        AreTomo3's ``_CTF.txt`` (:mod:`cryoxr.io.aretomo_ctf`): ``defocus_u/v``,
        ``defocus_angle``, ``phase_shift`` and the fit's cross correlation and resolution.
        Its rows are matched to the tilts in order, after dropping the dark frames (by
        their index in the tilt-sorted series) when it has a row for each.
    tilts
        AreTomo3's ``_TLT.txt``: ``acquisition_order`` and, with its dose column,
        ``pre_exposure`` (dose of the images acquired before, e/Å²) and ``aretomo_dose``
        (of the image itself), matched through ``sec``.
    experiment_id
        Default: the file's stem.

    Returns
    -------
    pandas.DataFrame
        One row per aligned tilt, in file order, with extra columns ``sec``, ``gmag``,
        ``smean``, ``sfit``, ``scale``, ``base``, ``excluded`` (False: AreTomo's dark
        frames have no row), ``image_size_x/y`` and ``tilt_image_center_x/y`` (from
        ``RawSize``). ``df.attrs``: ``format`` ``"aretomo"``, ``tilt_image_center``
        ``((nx - 1) / 2, (ny - 1) / 2)``, ``specimen_center`` None, ``center_rule``, and
        ``aretomo``: a dict of every header field (:data:`HEADER_FIELDS`; ``dark_frames``
        as ``[frame, section, tilt]`` lists), unknown header lines (``other_header``), and
        ``local_alignment`` (dict of lists, :data:`LOCAL_COLUMNS`) or None.

    Raises
    ------
    InvalidValueError
        No ``pixel_spacing``.
    FormatError
        No ``# AreTomo Alignment`` first line, no ``RawSize`` or one out of range (sizes
        1..2**31-1), rows of the wrong width, text or NaN where numbers belong, angles
        beyond ±360, SEC values that are not distinct sections of the stack, a row count
        other than ``RawSize[2]`` minus the dark frames, ``NumPatches`` > 0 without a local
        section of tilts x patches rows (or a local section with ``NumPatches = 0``), an
        empty or non-UTF-8 file; side files of the wrong length.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> aln = pathlib.Path(tempfile.mkdtemp()) / "TS_01.aln"
    >>> _ = aln.write_text(
    ...     "# AreTomo Alignment / Priims bprmMn\\n# RawSize = 4096 4096 2\\n# NumPatches = 0\\n"
    ...     "# DarkFrame =     0    1   -68.00\\n"
    ...     "# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT\\n"
    ...     "    0    85.0000    1.00000      5.000    -10.000     1.00     1.00     1.00     0.00    30.00\\n")
    >>> df = read_aretomo_alignment(aln, pixel_spacing=1.35)
    >>> df[["rotation_y", "rotation_z", "dx", "dy", "sec"]].values.tolist()
    [[30.0, 85.0, 5.0, -10.0, 0.0]]
    >>> df.attrs["aretomo"]["dark_frames"]
    [[0, 1, -68.0]]
    """
    spacing = require_pixel_spacing(pixel_spacing, aln, "AreTomo .aln")
    path, lines = read_text_lines(aln, what="AreTomo .aln")
    header, other, global_lines, local_lines = _parse(path, lines)
    if header["raw_size"] is None:
        raise FormatError(f"{path}: expected a '# RawSize = nx ny nz' header line, found none")
    n_expected = header["raw_size"][2] - len(header["dark_frames"])
    if not global_lines:
        raise FormatError(f"{path}: expected {n_expected} global alignment rows, found none")
    table = _numbers(path, global_lines, GLOBAL_COLUMNS, "AreTomo global alignment")
    if table.shape[0] != n_expected:
        raise FormatError(
            f"{path}: expected RawSize[2] - dark frames = {n_expected} global alignment rows, found {table.shape[0]}"
        )
    _check_sections(path, header, table[:, 0])
    n_patches = int(header["num_patches"] or 0)
    local: dict[str, list[float]] | None = None
    if local_lines or n_patches:
        n_local = n_expected * n_patches
        rows = _numbers(path, local_lines, LOCAL_COLUMNS, "local") if local_lines else np.zeros((0, 0))
        if rows.shape[0] != n_local:
            raise FormatError(
                f"{path}: expected tilts x NumPatches = {n_expected} x {n_patches} = {n_local} local alignment "
                f"rows (a '# Local Alignment' section), found {rows.shape[0]}"
            )
        local = {
            c.name: (rows[:, k].astype(np.int64) if c.dtype is int else rows[:, k]).tolist()
            for k, c in enumerate(LOCAL_COLUMNS)
        }
    by_field = {c.field: table[:, k] for k, c in enumerate(GLOBAL_COLUMNS)}
    nx, ny = header["raw_size"][:2]
    center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    extra: dict[str, Any] = {c.field: by_field[c.field] for c in GLOBAL_COLUMNS if c.field not in PMDL.ALL}
    extra.update(
        {
            PTC.EXCLUDED: False,
            **dict(zip(PTC.IMAGE_SIZE, (nx, ny), strict=True)),
            **dict(zip(PTC.TILT_IMAGE_CENTER, center, strict=True)),
        }
    )
    extra.update(side_file_columns(path, header, by_field["sec"].astype(np.int64), ctf, tilts))
    return file_model(
        path,
        {
            PMDL.ROTATION_Y: by_field[PMDL.ROTATION_Y],
            PMDL.ROTATION_Z: by_field[PMDL.ROTATION_Z],
            PMDL.SHIFT_X: by_field[PMDL.SHIFT_X],
            PMDL.SHIFT_Y: by_field[PMDL.SHIFT_Y],
        },
        experiment_id=experiment_id,
        pixel_spacing=spacing,
        extra=extra,
        attrs={
            "format": "aretomo",
            "center_rule": "(n - 1) / 2 for tilt images; specimen centre not settled",
            "tilt_image_center": center,
            "specimen_center": None,
            "aretomo": {**header, "other_header": other, "local_alignment": local},
        },
    )


def _fmt(value: float, dtype: type) -> str:
    if dtype is int:
        return str(round(float(value)))
    text = repr(float(value))
    return "0.0" if text == "-0.0" else text


def _raw_size(
    model: pd.DataFrame, header: dict[str, Any], image_size: Sequence[int] | None
) -> list[int] | None:
    """``(nx, ny)`` of the input stack: ``image_size``, else the model's RawSize, else its size columns."""
    if image_size is not None:
        size = [int(v) for v in image_size]
        if len(size) != 2 or not all(1 <= v <= MAX_SIZE for v in size):
            raise InvalidValueError(
                f"write_aretomo_alignment: image_size must be (nx, ny) in 1..{MAX_SIZE}, found {image_size!r}"
            )
        return size
    if header["raw_size"] is not None:
        return [int(v) for v in header["raw_size"][:2]]
    if all(c in model.columns for c in PTC.IMAGE_SIZE):
        sizes = model[PTC.IMAGE_SIZE].drop_duplicates()
        if len(sizes) == 1 and sizes.notna().all(axis=None):
            return [int(v) for v in sizes.iloc[0]]
    return None


def write_aretomo_alignment(
    model: pd.DataFrame,
    aln: PathLike,
    *,
    image_size: Sequence[int] | None = None,
    overwrite: bool = False,
) -> None:
    """Write a one-experiment ProjectionModel as an AreTomo ``.aln`` file.

    Header fields come from ``model.attrs["aretomo"]`` when the model was read from an
    ``.aln`` (dark frames, offsets, thickness, local alignment and unknown lines are
    written back); otherwise ``RawSize`` is ``image_size`` (else the ``image_size_x/y``
    columns) and the number of tilts, offsets 0 and ``NumPatches = 0``. Rows whose
    ``excluded`` column is True become ``DarkFrame`` lines (section from ``sec`` or the
    row order, frame = rank of the tilt angle). Columns :data:`GLOBAL_COLUMNS` come from
    the model (extra columns when present, else AreTomo's constants; ``SEC`` from ``sec``,
    else IMOD's ``view``, else the row order skipping dark sections). Numbers are written at full precision. Columns an
    ``.aln`` cannot hold (defocus, dose, ...) are named in a warning.

    Parameters
    ----------
    model
        A ProjectionModel with one ``experiment_id`` and ``rotation_x == 0`` (an
        ``.aln`` has no per-tilt x tilt).
    aln
        Output path.
    image_size
        ``(nx, ny)`` of AreTomo's input stack; needed when the model carries no
        ``RawSize`` or uniform size columns, and overrides them when given.
    overwrite
        Replace an existing file; otherwise raise
        :class:`~cryoxr.errors.FileExistsNoOverwriteError`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from cryoxr import make_projection_model
    >>> aln = pathlib.Path(tempfile.mkdtemp()) / "a.aln"
    >>> write_aretomo_alignment(make_projection_model(rotation_y=30.0, rotation_z=85.0,
    ...     experiment_id="a", pixel_spacing=1.0), aln, image_size=(100, 80))
    >>> print(aln.read_text().splitlines()[1])
    # RawSize = 100 80 1
    """
    validate_projection_model(model, name="write_aretomo_alignment")
    ids = pd.unique(model[PMDL.EXPERIMENT_ID])
    if len(ids) != 1:
        raise InvalidValueError(
            f"write_aretomo_alignment: an .aln holds one tilt series, found {len(ids)} experiments "
            f"{[str(i) for i in ids[:5]]}; select one first"
        )
    rx = model[PMDL.ROTATION_X].to_numpy(dtype=np.float64)
    if np.any(np.abs(rx) > 1e-12):
        raise InvalidValueError(
            f"write_aretomo_alignment: an .aln has no per-tilt x tilt; rotation_x must be 0, found up to "
            f"{float(np.max(np.abs(rx))):g} deg"
        )
    stored = model.attrs.get("aretomo") if isinstance(model.attrs.get("aretomo"), dict) else None
    header: dict[str, Any] = {f.attr: ([] if f.repeated else None) for f in HEADER_FIELDS}
    other: dict[str, str] = {}
    local: dict[str, list[float]] | None = None
    if stored is not None:
        header.update({f.attr: stored.get(f.attr, header[f.attr]) for f in HEADER_FIELDS})
        other = dict(stored.get("other_header") or {})
        local = stored.get("local_alignment")
    dark = [list(d) for d in header["dark_frames"] or []]
    excluded = (
        model[PTC.EXCLUDED].to_numpy(dtype=bool)
        if PTC.EXCLUDED in model.columns
        else np.zeros(len(model), bool)
    )
    dark_sections = {int(d[1]) for d in dark}
    free = [s for s in range(len(model) + len(dark)) if s not in dark_sections]
    # the input-stack section: AreTomo's SEC, else IMOD's view (the same 0-based index)
    index = next((c for c in ("sec", "view") if c in model.columns), None)
    sections = model[index].to_numpy(dtype=np.float64) if index else np.asarray(free[: len(model)], float)
    if excluded.any():
        tilts = np.concatenate([model[PMDL.ROTATION_Y].to_numpy(dtype=np.float64), [d[2] for d in dark]])
        rank = np.argsort(np.argsort(tilts, kind="stable"), kind="stable")
        dark.extend([int(rank[i]), int(sections[i]), float(tilts[i])] for i in np.flatnonzero(excluded))
        model, sections = model[~excluded], sections[~excluded]
    n = len(model)
    if n == 0:
        raise InvalidValueError("write_aretomo_alignment: every tilt is excluded; an .aln needs at least one")
    size = _raw_size(model, header, image_size)
    if size is None:
        raise InvalidValueError(
            "write_aretomo_alignment: the model carries no AreTomo RawSize or image_size_x/y; pass image_size=(nx, ny)"
        )
    header["raw_size"] = [size[0], size[1], n + len(dark)]
    header["dark_frames"] = dark
    if local is not None and len(local.get("tilt", [])) != n * int(header["num_patches"] or 0):
        warnings.warn(
            f"{aln}: the model's {len(local.get('tilt', []))} local alignment rows do not fit its {n} tilts "
            f"x {header['num_patches']} patches (tilts were added or dropped); they are not written",
            stacklevel=2,
        )
        local = None
    header["num_patches"] = int(header["num_patches"] or 0) if local is not None else 0
    lines = [f"{MAGIC} / Priims bprmMn"]
    for field in HEADER_FIELDS:
        value = header[field.attr]
        if value is None:
            if field.attr in ("alpha_offset", "beta_offset"):
                value = 0.0
            else:
                continue
        entries = value if field.repeated else [value if isinstance(value, list | tuple) else [value]]
        for entry in entries:
            text = " ".join(_fmt(v, t) for v, t in zip(entry, field.types, strict=True))
            lines.append(f"# {field.key} = {text}")
    lines.extend(f"# {key} = {value}" for key, value in other.items())
    lines.append("# " + " ".join(f"{c.name:>9}" for c in GLOBAL_COLUMNS).strip())
    columns = []
    for c in GLOBAL_COLUMNS:
        if c.name == "SEC":
            columns.append(sections)
        elif c.field in model.columns:
            columns.append(model[c.field].to_numpy(dtype=np.float64))
        else:
            columns.append(np.full(n, c.default))
    for row in zip(*columns, strict=True):
        lines.append(" ".join(f"{_fmt(v, c.dtype):>9}" for v, c in zip(row, GLOBAL_COLUMNS, strict=True)))
    if local is not None and header["num_patches"]:
        lines.append("# Local Alignment")
        for row in zip(*(local[c.name] for c in LOCAL_COLUMNS), strict=True):
            lines.append(" ".join(f"{_fmt(v, c.dtype):>9}" for v, c in zip(row, LOCAL_COLUMNS, strict=True)))
    kept = [c.field for c in GLOBAL_COLUMNS] + ["view", PTC.EXCLUDED, *PTC.IMAGE_SIZE]
    if all(c in model.columns for c in PTC.TILT_IMAGE_CENTER) and np.allclose(
        model[PTC.TILT_IMAGE_CENTER].to_numpy(dtype=np.float64), [(size[0] - 1) / 2, (size[1] - 1) / 2]
    ):
        kept.extend(PTC.TILT_IMAGE_CENTER)  # AreTomo's own centre: RawSize holds it
    warn_unstored_columns(model, kept, f"{aln} (AreTomo .aln)")
    with atomic_path(aln, overwrite=overwrite) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
