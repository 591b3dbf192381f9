"""What a file holds, for ``cryoxr info``: every file and folder cryoxr reads or writes.

:func:`file_kind` tells files apart by suffix, then by content (no voxels are read):

=================  =========================================================  ===========
kind               files                                                      convert
=================  =========================================================  ===========
``image``          MRC (``.mrc .mrcs .st .ali .rec .map``), OME-Zarr          yes
``poses``          RELION particle STAR, Dynamo ``.tbl``                      yes
``alignment``      RELION 5 ``tomograms.star``, IMOD ``.xf``, AreTomo ``.aln``  yes
``tilt series``    RELION 5 per-tilt-series STAR (``tilt_series/TS_01.star``)
``tilt angles``    IMOD ``.tlt``, ``.rawtlt``, ``.xtilt``
``tomogram map``   Dynamo ``.doc`` (tomogram number -> name)
``projected``      zarr written by ``cryoxr project`` or the demo (positions)
=================  =========================================================  ===========

:data:`DESCRIBERS` maps each kind to the function that reports on it, so a new kind is a
new row. :func:`describe` returns a JSON-serialisable dict.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> import cryoxr
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> tomo = cryoxr.Tomogram.from_array(np.ones((4, 6, 8), np.float32), pixel_spacing=5.0,
...                                   experiment_id="TS_01")
>>> path = tomo.to_mrc(folder / "TS_01.mrc")
>>> report = describe(path)
>>> report["kind"], report["shape"], report["pixel_spacing"]
('tomogram', [4, 6, 8], 5.0)
>>> _ = (folder / "TS_01.tlt").write_text("-3.0\\n0.0\\n3.0\\n")
>>> describe(folder / "TS_01.tlt")["tilt_range"]
[-3.0, 3.0]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import CryoxrFileNotFoundError, UnknownFormatError
from cryoxr.image import Image
from cryoxr.io._paths import PathLike, read_head
from cryoxr.io.em import EM_SUFFIXES, describe_em_header, is_motive_list
from cryoxr.io.images import IMAGE_READERS, open_image
from cryoxr.io.star import read_star
from cryoxr.io.tables import (
    _sniff,
    read_alignment,
    read_numeric_table,
    read_poses,
    takes_pixel_spacing,
)
from cryoxr.poseset import experiment_ids
from cryoxr.projection_model import PER_TILT_COLUMNS, PMDL, PTC

__all__ = ["CONVERTIBLE_KINDS", "DESCRIBERS", "describe", "file_kind"]

#: kinds that :func:`cryoxr.io.convert` reads and writes
CONVERTIBLE_KINDS = ("image", "poses", "alignment")

#: suffix -> kind, for files whose suffix alone says what they hold
SUFFIX_KINDS = {
    ".tbl": "poses",
    ".cs": "poses",
    ".xf": "alignment",
    ".aln": "alignment",
    ".mdoc": "alignment",
    ".xml": "alignment",
    ".tlt": "tilt angles",
    ".rawtlt": "tilt angles",
    ".xtilt": "tilt angles",
    ".doc": "tomogram map",
}

#: STAR labels that only a RELION 5 per-tilt-series file has (and no particle file)
_TILT_SERIES_LABELS = (b"_rlnTomoXTilt", b"_rlnTomoYTilt", b"_rlnTomoNominalStageTiltAngle")
_PARTICLE_LABELS = (b"_rlnCoordinateX", b"_rlnCenteredCoordinateXAngst")


def suffix_of(path: Path) -> str:
    """The lower-case suffix, with ``.ome.zarr`` as one suffix."""
    name = path.name.lower().rstrip("/")
    return ".ome.zarr" if name.endswith(".ome.zarr") else Path(name).suffix


def tomograms_option(tomograms: PathLike | None) -> dict[str, Any]:
    """``{"tomograms": path}`` when given: the keyword RELION 5 readers and writers take."""
    return {} if tomograms is None else {"tomograms": Path(tomograms)}


def _star_kind(path: Path) -> str:
    head = read_head(path, what="STAR")
    if b"_rlnTomoTiltSeriesStarFile" in head or b"rlnTomoProjX" in head:
        return "alignment"  # a RELION 5 tomograms.star (or RELION 4 projection matrices)
    if any(label in head for label in _TILT_SERIES_LABELS) and not any(
        label in head for label in _PARTICLE_LABELS
    ):
        return "tilt series"
    return "poses"


def _is_ome_zarr(path: Path) -> bool:
    """Whether a zarr folder's root attributes carry OME-NGFF metadata (v0.5 or v0.4)."""
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        meta = path / name
        if meta.is_file():
            if meta.stat().st_size > (1 << 20):  # metadata, not data: refuse to parse a huge file
                return False
            try:
                found = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            attrs = found.get(key, {}) if key and isinstance(found, dict) else found
            return isinstance(attrs, dict) and ("multiscales" in attrs or "ome" in attrs)
    return False


def file_kind(path: PathLike) -> str:
    """What a file or folder holds (one of the kinds of this module's table).

    Raises
    ------
    CryoxrFileNotFoundError
        No such file.
    UnknownFormatError
        Neither suffix nor content is recognised; the message lists the known suffixes.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.tbl"
    >>> _ = p.write_text(" ".join(["1"] * 35) + "\\n")
    >>> file_kind(p)
    'poses'
    """
    p = Path(path)
    if not p.exists():
        raise CryoxrFileNotFoundError(f"{p}: no such file or folder")
    suffix = suffix_of(p)
    if suffix == ".zarr" and p.is_dir() and not _is_ome_zarr(p):
        return "projected"
    if suffix in EM_SUFFIXES and p.is_file() and is_motive_list(p):
        return "poses"  # a TOM motive list is an .em file too
    if suffix in IMAGE_READERS:
        return "image"
    if suffix == ".star":
        return _star_kind(p)
    if suffix in SUFFIX_KINDS:
        return SUFFIX_KINDS[suffix]
    content = _sniff(p) if p.is_file() else None
    if content == ".star":
        return _star_kind(p)
    if content in SUFFIX_KINDS:
        return SUFFIX_KINDS[content]
    known = sorted({*IMAGE_READERS, ".star", *SUFFIX_KINDS})
    raise UnknownFormatError(
        f"{p}: cannot tell what this file holds from its suffix or content; known: {known}"
    )


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


#: (kind, suffix) -> format name shown by ``cryoxr info``
FORMAT_NAMES = {
    ("image", ".zarr"): "OME-Zarr",
    ("image", ".ome.zarr"): "OME-Zarr",
    ("poses", ".star"): "RELION STAR",
    ("poses", ".tbl"): "Dynamo table",
    ("poses", ".em"): "TOM/AV3 motive list (.em)",
    ("poses", ".cs"): "cryoSPARC particles (.cs)",
    ("image", ".em"): "EM (TOM/Dynamo)",
    ("alignment", ".star"): "RELION 5 tilt series",
    ("alignment", ".xf"): "IMOD xf/tlt",
    ("alignment", ".aln"): "AreTomo aln",
    ("alignment", ".mdoc"): "SerialEM mdoc (nominal)",
    ("alignment", ".xml"): "Warp/M tilt-series XML",
    ("tilt series", ".star"): "RELION 5 per-tilt-series STAR",
    ("tilt angles", ".tlt"): "IMOD tlt",
    ("tilt angles", ".rawtlt"): "IMOD rawtlt",
    ("tilt angles", ".xtilt"): "IMOD xtilt",
    ("tomogram map", ".doc"): "Dynamo tomogram map",
    ("projected", ".zarr"): "zarr (cryoxr projected positions)",
}


def _format_name(path: Path, kind: str) -> str:
    suffix = suffix_of(path)
    return FORMAT_NAMES.get((kind, suffix), "MRC" if kind == "image" else suffix or "?")


def _describe_image(path: Path, *, pixel_spacing: float | None = None, **_: Any) -> dict[str, Any]:
    if suffix_of(path) in EM_SUFFIXES:  # EM stores no pixel size: the header alone, or the given one
        if pixel_spacing is None:
            return describe_em_header(path)
        image: Image = open_image(path, pixel_spacing=pixel_spacing)
    else:
        image = open_image(path)
    data = image.data
    kind = "stack" if image.stack else {2: "micrograph", 3: "tomogram"}[data.ndim]
    chunks = data.data.chunksize if hasattr(data.data, "chunksize") else data.shape
    return {
        "kind": kind,
        "shape": [int(s) for s in data.shape],
        "dims": [str(d) for d in data.dims],
        "dtype": str(data.dtype),
        "pixel_spacing": image.pixel_spacing,
        "experiment_id": image.experiment_id,
        "chunks": [int(c) for c in chunks],
        "size_in_memory": int(data.nbytes),
    }


def _describe_poses(
    path: Path, *, tomograms: PathLike | None = None, pixel_spacing: float | None = None
) -> dict[str, Any]:
    # a pixel size for the files that store none (a RELION file keeps its own)
    spacing = pixel_spacing if pixel_spacing is not None and takes_pixel_spacing(path, "poses") else None
    poses: xr.Dataset = read_poses(path, pixel_spacing=spacing, **tomograms_option(tomograms))
    ids = experiment_ids(poses)
    modelled = {"position", "shift", "orientation"}
    chunks = poses["position"].chunksizes.get("particle") if poses["position"].chunks else None
    return {
        "kind": "poses",
        "particles": int(poses.sizes["particle"]),
        "experiments": len(ids),
        "experiment_ids": ids[:10] + (["..."] if len(ids) > 10 else []),
        "pixel_spacing": float(poses.attrs["pixel_spacing"]),
        "extra_columns": [str(v) for v in poses.data_vars if v not in modelled],
        "chunks": None if chunks is None else int(max(chunks)),
    }


def _ranges(table: pd.DataFrame, columns: dict[str, str]) -> dict[str, list[float]]:
    """``{report name: [min, max]}`` of the numeric columns present (per-tilt optics and angles)."""
    found = {}
    for column, name in columns.items():
        if column in table.columns and pd.api.types.is_numeric_dtype(table[column]):
            values = table[column].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                found[name] = [float(values.min()), float(values.max())]
    return found


def _per_tilt_summary(model: pd.DataFrame) -> dict[str, str]:
    """The per-tilt columns present, each as ``"300 kV"`` (one value) or ``"2.9e+04..3.1e+04 Å"``."""
    summary = {}
    for column, (unit, _) in PER_TILT_COLUMNS.items():
        if column not in model.columns:
            continue
        series = model[column]
        if column == PTC.EXCLUDED:
            summary[column] = f"{int(series.fillna(False).astype(bool).sum())} of {len(series)} tilts"
            continue
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        low, high = float(values.min()), float(values.max())
        text = f"{low:.6g}" if low == high else f"{low:.6g}..{high:.6g}"
        summary[column] = f"{text} {unit}" if unit not in ("1", "index", "bool", "+1/-1") else text
    return summary


def _describe_alignment(path: Path, *, pixel_spacing: float | None = None, **_: Any) -> dict[str, Any]:
    spacing = pixel_spacing if pixel_spacing is not None and takes_pixel_spacing(path, "alignment") else None
    model: pd.DataFrame = read_alignment(path, pixel_spacing=spacing)
    per = model.groupby(PMDL.EXPERIMENT_ID, sort=False).size()
    return {
        "kind": "alignment",
        "tilts": len(model),
        "experiments": len(per),
        "tilts_per_experiment": {str(k): int(v) for k, v in list(per.items())[:10]},
        "pixel_spacing": sorted({float(v) for v in model[PMDL.PIXEL_SPACING]}),
        "tilt_range": [float(model[PMDL.ROTATION_Y].min()), float(model[PMDL.ROTATION_Y].max())],
        **_per_tilt_summary(model),
        "extra_columns": [str(c) for c in model.columns if c not in PMDL.ALL and c not in PER_TILT_COLUMNS],
    }


#: RELION per-tilt labels shown as ranges
STAR_RANGES = {
    "rlnTomoNominalStageTiltAngle": "nominal_tilt_range",
    "rlnDefocusU": "defocus_u_range",
    "rlnDefocusV": "defocus_v_range",
    "rlnMicrographPreExposure": "pre_exposure_range",
}


def _describe_tilt_series(path: Path, **_: Any) -> dict[str, Any]:
    blocks = read_star(path)
    name, block = next(iter(blocks.items()))
    table = block.table
    angles = table.get("rlnTomoYTilt")
    return {
        "kind": "tilt series",
        "experiment_id": name,
        "tilts": len(table),
        **({"tilt_range": [float(angles.min()), float(angles.max())]} if angles is not None else {}),
        **_ranges(table, STAR_RANGES),
        "columns": [str(c) for c in table.columns],
        "note": "one tilt series of a RELION 5 project: read it through its tomograms.star",
    }


def _describe_tilt_angles(path: Path, **_: Any) -> dict[str, Any]:
    _path, values = read_numeric_table(path, names=["tilt angle"], n_columns=1, what="tilt angles")
    angles = values[:, 0]
    return {
        "kind": "tilt angles",
        "tilts": int(angles.size),
        "tilt_range": [float(angles.min()), float(angles.max())] if angles.size else [],
    }


def _describe_tomogram_map(path: Path, **_: Any) -> dict[str, Any]:
    from cryoxr.io.dynamo import read_tomogram_map

    mapping = read_tomogram_map(path)
    names = [f"{k}: {v}" for k, v in list(mapping.items())[:10]]
    return {"kind": "tomogram map", "tomograms": len(mapping), "entries": names}


def _describe_projected(path: Path, **_: Any) -> dict[str, Any]:
    import zarr

    root = zarr.open(str(path), mode="r")
    if isinstance(root, zarr.Array):  # the demo's raw (particle, image, xy) positions
        particles, tilts = (int(n) for n in root.shape[:2])
        return {"kind": "projected", "particles": particles, "tilts": tilts, "dtype": str(root.dtype)}
    if "projected" not in root:
        raise UnknownFormatError(
            f"{path}: a zarr store without OME-Zarr metadata or a 'projected' variable; "
            "cryoxr reads OME-Zarr images and the stores `cryoxr project` writes"
        )
    consolidated = (path / ".zmetadata").is_file() or "consolidated_metadata" in json.loads(
        (path / "zarr.json").read_text(encoding="utf-8") if (path / "zarr.json").is_file() else "{}"
    )
    ds = xr.open_zarr(str(path), consolidated=consolidated)
    report = {
        "kind": "projected",
        "particles": int(ds.sizes["particle"]),
        "tilts": int(ds.sizes["image"]),
        "variables": [str(v) for v in ds.data_vars],
        "experiment_ids": list(ds.attrs.get("experiment_ids", []))[:10],
    }
    report.update({k: str(ds.attrs[k]) for k in ("poses", "alignment") if k in ds.attrs})
    return report


#: kind -> ``describe_kind(path, *, tomograms=None, pixel_spacing=None)``
DESCRIBERS: dict[str, Callable[..., dict[str, Any]]] = {
    "image": _describe_image,
    "poses": _describe_poses,
    "alignment": _describe_alignment,
    "tilt series": _describe_tilt_series,
    "tilt angles": _describe_tilt_angles,
    "tomogram map": _describe_tomogram_map,
    "projected": _describe_projected,
}


def describe(
    path: PathLike, *, tomograms: PathLike | None = None, pixel_spacing: float | None = None
) -> dict[str, Any]:
    """What a file holds: kind, shape or counts, pixel spacing, experiments, size on disk.

    Reads headers and tables, never image voxels. Used by ``cryoxr info``.

    Parameters
    ----------
    path
        Any file or folder :func:`file_kind` recognises.
    tomograms
        A RELION 5 ``tomograms.star`` for a particle file with centred coordinates
        (by default the one beside it is used).
    pixel_spacing
        Å per pixel of a pose or alignment file that stores none (IMOD, AreTomo, Dynamo
        without apix); files that store their own (RELION, images) keep it.

    Returns
    -------
    dict
        JSON-serialisable; always ``path``, ``format``, ``kind`` and ``size_on_disk``.
    """
    p = Path(path)
    kind = file_kind(p)
    report: dict[str, Any] = {"path": str(p), "format": _format_name(p, kind)}
    report.update(DESCRIBERS[kind](p, tomograms=tomograms, pixel_spacing=pixel_spacing))
    report["size_on_disk"] = _disk_size(p)
    return report
