"""RELION particle STAR files (3.0, 3.1, 4 and 5) <-> PoseSet.

Particles -> PoseSet (docs/CONVENTIONS.md §6.1 and §3)
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
  RELION 3.0 files have no optics block: ``pixel_spacing=`` gives it, and their
  ``rlnOriginX/Y/Z`` (pixels of the particle images) are converted as RELION's own
  3.0 -> 3.1 conversion does (``read_relion_particles`` says how).
- RELION 5 sizes come from ``tomograms=``, else from the ``tomograms.star`` beside the
  particle file (a RELION 5 project's layout).
- ``experiment_id`` per particle from ``rlnTomoName`` (``rlnMicrographName`` for 2D sets).

Every other column (scores, classes, CTF, ``rlnImageName``, the subtomogram angles, ...)
becomes a data variable on ``particle`` with its RELION label as name, and the other blocks
(optics, general), the column order and the ``# version`` line go to ``attrs["relion"]``
(plain lists and dicts, so the attrs survive zarr), so :func:`write_relion_particles` gives
back the same table. Writers print floats in the shortest form that reads back exactly;
the values cryoxr computes (coordinates, origins, angles) are rounded to
:data:`~cryoxr.io.relion.DECIMALS` decimals, so a file read and written again keeps its printed values.

Examples
--------
See :mod:`cryoxr.io.relion` and :func:`read_relion_particles`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._atomic import atomic_path
from cryoxr.io.relion._common import (
    VERSIONS,
    TomogramsInput,
    _block_from_json,
    _block_to_json,
    _clean,
    _finite,
    _in_pixels,
    _relion_euler,
    _relion_quaternions,
    _rotation_from_relion,
)
from cryoxr.io.relion._particle_layout import (
    ANGLE_LABELS,
    EXPERIMENT_LABELS,
    ORIGIN_LABELS,
    PARTICLE_LAYOUTS,
    PIXEL_ORIGIN_LABELS,
    SUBTOMOGRAM_ANGLE_LABELS,
    CoordinateLayout,
    _image_pixel_size,
    _particles_block,
    _pixel_size,
    _sizes_by_code,
    _sizes_per_particle,
    _tomogram_sizes,
)
from cryoxr.io.star import WRITE_CHUNK_ROWS, StarBlock, format_block_header, read_star, write_star_blocks
from cryoxr.io.star._write import _format_rows_buffer
from cryoxr.poseset import TEXT_DTYPE, make_poseset, validate_poseset

__all__ = ["PARTICLE_LAYOUTS", "read_relion_particles", "write_relion_particles"]


def read_relion_particles(
    path: str | os.PathLike[str],
    *,
    tomograms: TomogramsInput | None = None,
    chunks: int | None = None,
    pixel_spacing: float | None = None,
) -> xr.Dataset:
    """Read a RELION 3.0, 3.1, 4 or 5 particle STAR file into a PoseSet.

    Parameters
    ----------
    path
        The particle STAR file (``data_optics`` and ``data_particles``, optionally
        ``data_general``).
    tomograms
        The tomogram sizes, needed for RELION 5 centred coordinates
        (``rlnCenteredCoordinateX/Y/ZAngst``): a ``tomograms.star`` path, its table, a
        model from :func:`read_relion_tilt_series` or ``{tomo_name: (X, Y, Z)}``.
        Default: the ``tomograms.star`` beside ``path``, as RELION 5 lays out a project.
    chunks
        Particles per chunk: return a dask-backed PoseSet chunked along ``particle``.
    pixel_spacing
        Å per pixel of the coordinates, overriding the optics block; required for RELION
        3.0 files, which have none. Their ``rlnOriginX/Y/Z`` are in pixels of the
        particle images: ``1e4 * rlnDetectorPixelSize / rlnMagnification`` Å when both
        columns are present (RELION's own 3.0 -> 3.1 conversion, ``star_converter.cpp``),
        else ``pixel_spacing``.

    Returns
    -------
    xarray.Dataset
        The PoseSet (see the module docstring for the conversion). Unmodelled columns are
        data variables named by their RELION label (text as numpy's variable-width
        :data:`~cryoxr.poseset.TEXT_DTYPE`); ``attrs["relion"]`` keeps the rest.

    Raises
    ------
    FormatError
        A malformed file, missing coordinate/optics columns, NaN angles or coordinates
        (the message names file, row and column).
    InvalidValueError
        RELION 5 coordinates without ``tomograms`` (and no ``tomograms.star`` beside the
        file), unknown tomograms, several pixel sizes, an empty tomogram name.

    Examples
    --------
    The RELION 5 worked example of docs/CONVENTIONS.md §6.1:

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
    all_columns = [str(c) for c in table.columns]

    def popped(labels: Sequence[str]) -> np.ndarray:
        """Modelled columns as a checked (n, k) float64 copy; gone from the table (at 10^7
        rows the table is ~2 GB: it shrinks as the PoseSet's arrays grow)."""
        values = _finite(path, block.name, table, labels)
        for label in labels:
            del table[label]
        return values

    px, px_label = _pixel_size(path, blocks, table, pixel_spacing)
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
    coordinates = popped(coordinate_labels)
    # factorized once: the tomogram sizes below go by code, not by string
    if experiment_label is not None:
        codes, uniques = pd.factorize(table[experiment_label])
        names = np.asarray([str(u) for u in uniques], dtype=str)
        blank = [i for i, name in enumerate(names) if not name.strip()]
        if blank:
            row = int(np.argmax(codes == blank[0]))
            raise FormatError(
                f"{path}, data_{block.name}, row {row + 1}, column {experiment_label}: expected a tomogram name, "
                f"found {names[blank[0]]!r}"
            )
        ids: np.ndarray | str = names[codes] if n else np.zeros(0, dtype=str)
    else:
        codes, names = np.zeros(n, dtype=np.intp), np.asarray([path.stem])
        ids = path.stem
    attrs_sizes: dict[str, list[float]] | None = None
    if layout.centred:
        sibling = path.with_name("tomograms.star")
        if tomograms is None and sibling.is_file():
            tomograms = sibling  # a RELION 5 project keeps the sizes beside the particles
        if tomograms is None:
            raise InvalidValueError(
                f"{path}: RELION 5 centred coordinates ({layout.labels[0]}, ...) need the tomogram sizes, and there "
                "is no tomograms.star beside the file: pass tomograms= (tomograms.star, its table or "
                "{name: (X, Y, Z)})"
            )
        sizes = _tomogram_sizes(tomograms, str(path))
        used_names = names if n else names[:0]
        per_particle = _sizes_by_code(sizes, codes, used_names, str(path))
        position = _in_pixels(
            path, block.name, coordinate_labels, coordinates, px, px_label or "pixel_spacing"
        )
        del coordinates
        per_particle /= 2.0
        position += per_particle  # in place: no (n, 3) temporaries
        del per_particle
        used = set(used_names.tolist())
        attrs_sizes = {k: [float(x) for x in v] for k, v in sizes.items() if k in used}
    else:
        position = coordinates
    origin = np.zeros((n, ndim))
    if origin_labels:
        origin[:, [ORIGIN_LABELS.index(lab) for lab in origin_labels]] = popped(origin_labels)
    pixel_origin_labels = [label for label in PIXEL_ORIGIN_LABELS[:ndim] if label in columns]
    if pixel_origin_labels and not origin_labels:  # RELION 3.0: origins in pixels of the images
        origin[:, [PIXEL_ORIGIN_LABELS.index(lab) for lab in pixel_origin_labels]] = _finite(
            path, block.name, table, pixel_origin_labels
        ) * _image_pixel_size(path, block.name, table, px)
        origin_labels = pixel_origin_labels
    if ndim == 2:
        position = np.column_stack([position, np.zeros(n)])
        origin = np.column_stack([origin, np.zeros(n)])
    if angle_labels:
        quaternions = _relion_quaternions(popped(ANGLE_LABELS))
    else:
        quaternions = np.zeros((n, 4))
        quaternions[:, 3] = 1.0
    if all(label in columns for label in SUBTOMOGRAM_ANGLE_LABELS) and n:
        pre = _rotation_from_relion(_finite(path, block.name, table, SUBTOMOGRAM_ANGLE_LABELS))
        quaternions = np.asarray((pre * Rotation.from_quat(quaternions)).as_quat()).reshape(n, 4)
        origin = pre.apply(origin).reshape(n, 3)
    shift = _in_pixels(path, block.name, ORIGIN_LABELS, origin, px, px_label or "pixel_spacing")
    del origin
    np.negative(shift, out=shift)
    shift += 0.0  # no -0.0
    modelled = {*coordinate_labels, *origin_labels, *angle_labels}
    if experiment_label is not None:
        modelled.add(experiment_label)
    # the rest of the table goes column by column: each extra is freed once converted
    for label in modelled & set(table.columns):
        del table[label]
    extra: dict[str, np.ndarray] = {}
    for label in all_columns:
        if label not in modelled:
            extra[label] = _extra_values(table[label])
            del table[label]
    relion_attrs: dict[str, Any] = {
        "version": block.version,
        "block": block.name,
        "columns": all_columns,
        "ndim": ndim,
        "pixel_size_label": px_label,
        "layout": layout_name,
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


#: rows converted to text at a time (bounds the fixed-width scratch of a text column)
_TEXT_ROWS = 1 << 20


def _extra_values(column: pd.Series) -> np.ndarray:
    """A column as a numpy array; text as :data:`~cryoxr.poseset.TEXT_DTYPE` (numpy's
    variable-width strings: ~3x smaller than fixed-width ``<U`` for ``rlnImageName``)."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy()
    try:
        array = pa.array(column.array)
    except (TypeError, pa.ArrowInvalid):
        array = None
    if (
        array is None
        or array.null_count
        or not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type))
    ):
        return np.asarray(column.to_numpy(dtype=object)).astype(TEXT_DTYPE)
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    out = np.empty(len(array), dtype=TEXT_DTYPE)
    at = 0
    for chunk in chunks:
        for start in range(0, len(chunk), _TEXT_ROWS):
            part = chunk.slice(start, _TEXT_ROWS)
            ascii_bytes = _ascii_bytes(part)
            out[at : at + len(part)] = (
                part.to_numpy(zero_copy_only=False) if ascii_bytes is None else ascii_bytes
            )
            at += len(part)
    return out


def _ascii_bytes(array: pa.Array) -> np.ndarray | None:
    """ASCII text of an arrow string array as fixed-width bytes, straight from arrow's buffers.

    arrow pads every value with NUL bytes to the longest one (``utf8_rpad``), so the data
    buffer becomes ``n`` equal records: an ``S<width>`` array without a Python str per value
    (NUL padding is what numpy's fixed-width strings strip; STAR text holds no NUL).
    Casting it to :data:`~cryoxr.poseset.TEXT_DTYPE` is ~3x faster than from Python strs.
    None when the array holds any non-ASCII character.
    """
    if len(array) == 0 or not pc.all(pc.string_is_ascii(array)).as_py():
        return None
    width = max(int(pc.max(pc.binary_length(array)).as_py()), 1)
    padded = pc.utf8_rpad(array, width=width, padding="\0")
    offset_type = np.int64 if pa.types.is_large_string(padded.type) else np.int32
    first = int(np.frombuffer(padded.buffers()[1], offset_type)[padded.offset])
    records = np.frombuffer(padded.buffers()[2], np.uint8)[first : first + width * len(padded)]
    return records.view(f"S{width}")


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
    replace.update(zip(PIXEL_ORIGIN_LABELS[:ndim], ORIGIN_LABELS[:ndim], strict=True))  # RELION 3.0
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
    version: int | None = None,
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
        ``rlnCoordinateX/Y``. Default: the coordinates and ``# version`` line of the file
        the set was read from (so a RELION 4 or 5 set read and written back gives the same
        table; a RELION 3.0 set is written as 3.1, with an optics block), else 5.
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
    relion: Mapping[str, Any] = poses.attrs.get("relion") or {}
    if version is None and relion.get("layout") in PARTICLE_LAYOUTS:
        layout_name = str(relion["layout"])
        version_line = int(relion.get("version") or VERSIONS[4][0])  # 3.0 files have none: written as 3.1
    elif version in VERSIONS or version is None:
        version_line, layout_name = VERSIONS[5 if version is None else version]
    else:
        raise InvalidValueError(
            f"write_relion_particles: version must be one of {sorted(VERSIONS)}, found {version!r}"
        )
    validate_poseset(poses, check_values=False)
    ndim = int(relion.get("ndim", 3))
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
    others: list[StarBlock | None] = [None]
    if blocks_json:
        others = [None if b is None else _block_from_json(b, version_line) for b in blocks_json]
        px_label = relion.get("pixel_size_label")
        for block in others:
            if block is not None and block.name == "optics" and px_label in block.table.columns:
                block.table[px_label] = px  # positions are written in pixels of this size
    if not any(block is not None and block.name == "optics" for block in others):  # new, or RELION 3.0
        optics = pd.DataFrame(
            {
                "rlnOpticsGroup": [1],
                "rlnOpticsGroupName": ["opticsGroup1"],
                ("rlnTomoTiltSeriesPixelSize" if ndim == 3 else "rlnMicrographPixelSize"): [px],
            }
        )
        others.insert(others.index(None), StarBlock("optics", optics, True, version_line))
        if "rlnOpticsGroup" not in columns:
            columns.append("rlnOpticsGroup")
    name = str(relion.get("block") or "particles")  # RELION 3.0 files name it data_
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
