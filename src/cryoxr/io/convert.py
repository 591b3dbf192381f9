"""Describe any file cryoxr reads, and convert between formats of the same kind.

Three kinds of file: ``image`` (MRC, OME-Zarr), ``poses`` (RELION particle STAR, Dynamo
table) and ``alignment`` (RELION 5 ``tomograms.star``, IMOD ``.xf`` + ``.tlt``, AreTomo
``.aln``). :func:`file_kind` tells them apart by suffix, then by content;
:data:`WRITERS` maps each output format to its writer, so a new format is a new row.

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
>>> [p.name for p in convert(path, folder / "TS_01.ome.zarr")]
['TS_01.ome.zarr']
>>> describe(folder / "TS_01.ome.zarr")["format"]
'OME-Zarr'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from cryoxr.errors import CryoxrFileNotFoundError, UnknownFormatError
from cryoxr.image import Image
from cryoxr.io import aretomo, dynamo, imod, mrc, ome_zarr, relion
from cryoxr.io.images import IMAGE_READERS, open_image
from cryoxr.io.tables import _sniff, read_alignment, read_poses
from cryoxr.poseset import experiment_ids
from cryoxr.projection_model import PMDL

__all__ = ["WRITERS", "WriteOptions", "Writer", "convert", "describe", "file_kind"]

PathLike = str | os.PathLike[str]


def _suffix(path: Path) -> str:
    name = path.name.lower().rstrip("/")
    return ".ome.zarr" if name.endswith(".ome.zarr") else Path(name).suffix


def _is_tomograms_star(path: Path) -> bool:
    """A RELION 5 ``tomograms.star`` (alignment) rather than a particle file."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return False
    return b"_rlnTomoTiltSeriesStarFile" in head or b"rlnTomoProjX" in head


def file_kind(path: PathLike) -> str:
    """``"image"``, ``"poses"`` or ``"alignment"``: what a file holds, by suffix then content.

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
    suffix = _suffix(p)
    if suffix in IMAGE_READERS:
        return "image"
    if suffix == ".star":
        return "alignment" if _is_tomograms_star(p) else "poses"
    content = _sniff(p) if p.is_file() else None
    guess = suffix if suffix in (".tbl", ".xf", ".aln") else content
    if guess == ".star":
        return "alignment" if _is_tomograms_star(p) else "poses"
    if guess == ".tbl":
        return "poses"
    if guess in (".xf", ".aln"):
        return "alignment"
    known = sorted({*IMAGE_READERS, ".star", ".tbl", ".xf", ".aln"})
    raise UnknownFormatError(
        f"{p}: cannot tell what this file holds from its suffix or content; known: {known}"
    )


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _format_name(path: Path, kind: str) -> str:
    suffix = _suffix(path)
    names = {
        "image": {".zarr": "OME-Zarr", ".ome.zarr": "OME-Zarr"},
        "poses": {".star": "RELION STAR", ".tbl": "Dynamo table"},
        "alignment": {".star": "RELION 5 tilt series", ".xf": "IMOD xf/tlt", ".aln": "AreTomo aln"},
    }[kind]
    return names.get(suffix, "MRC" if kind == "image" else suffix or "?")


def _describe_image(image: Image) -> dict[str, Any]:
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


def _describe_poses(poses: xr.Dataset) -> dict[str, Any]:
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


def _describe_alignment(model: pd.DataFrame) -> dict[str, Any]:
    per = model.groupby(PMDL.EXPERIMENT_ID, sort=False).size()
    return {
        "kind": "alignment",
        "tilts": len(model),
        "experiments": len(per),
        "tilts_per_experiment": {str(k): int(v) for k, v in list(per.items())[:10]},
        "pixel_spacing": sorted({float(v) for v in model[PMDL.PIXEL_SPACING]}),
        "tilt_range": [float(model[PMDL.ROTATION_Y].min()), float(model[PMDL.ROTATION_Y].max())],
        "extra_columns": [str(c) for c in model.columns if c not in PMDL.ALL],
    }


def describe(path: PathLike, *, tomograms: PathLike | None = None) -> dict[str, Any]:
    """What a file holds: kind, shape or counts, pixel spacing, experiments, size on disk.

    Reads headers and tables, never image voxels. Used by ``cryoxr info``.

    Parameters
    ----------
    path
        Any file or folder :func:`file_kind` recognises.
    tomograms
        A RELION 5 ``tomograms.star`` for a particle file with centred coordinates
        (by default the one beside it is used).

    Returns
    -------
    dict
        JSON-serialisable; always ``path``, ``format``, ``kind`` and ``size_on_disk``.
    """
    p = Path(path)
    kind = file_kind(p)
    report: dict[str, Any] = {"path": str(p), "format": _format_name(p, kind)}
    if kind == "image":
        report.update(_describe_image(open_image(p)))
    elif kind == "poses":
        report.update(_describe_poses(read_poses(p, **_tomograms_option(tomograms))))
    else:
        report.update(_describe_alignment(read_alignment(p)))
    report["size_on_disk"] = _disk_size(p)
    return report


@dataclass(frozen=True)
class Writer:
    """One output format: what it holds, its suffixes, and how to write it."""

    kind: str
    suffixes: tuple[str, ...]
    #: ``write(obj, dst, options)`` -> the files written, ``dst`` first
    write: Callable[[Any, Path, WriteOptions], list[Path]]


@dataclass(frozen=True)
class WriteOptions:
    """What :func:`convert` passes to every writer; each uses the fields its format needs."""

    overwrite: bool = False
    image_size: tuple[int, int] | None = None
    tomograms: Path | None = None


def _tomograms_option(tomograms: PathLike | None) -> dict[str, Any]:
    return {} if tomograms is None else {"tomograms": Path(tomograms)}


def _write_mrc(image: Image, dst: Path, options: WriteOptions) -> list[Path]:
    mrc.write_mrc(image, dst, overwrite=options.overwrite)
    return [dst]


def _write_ome_zarr(image: Image, dst: Path, options: WriteOptions) -> list[Path]:
    ome_zarr.write_ome_zarr(image, dst, overwrite=options.overwrite)
    return [dst]


def _write_relion_particles(poses: xr.Dataset, dst: Path, options: WriteOptions) -> list[Path]:
    # RELION 5 needs the tomogram sizes: from --tomograms, or a set read from RELION 5 carries them
    has_sizes = options.tomograms is not None or "tomogram_dimensions" in (poses.attrs.get("relion") or {})
    relion.write_relion_particles(
        poses,
        dst,
        version=5 if has_sizes else 4,
        overwrite=options.overwrite,
        **_tomograms_option(options.tomograms),
    )
    return [dst]


def _write_dynamo(poses: xr.Dataset, dst: Path, options: WriteOptions) -> list[Path]:
    # Dynamo numbers tomograms: names that are not numbers go to a sibling .doc map
    named = any(not (eid.isascii() and eid.isdigit()) for eid in experiment_ids(poses))
    doc = dst.with_suffix(".doc") if named else None
    dynamo.write_dynamo_table(poses, dst, tomogram_map=doc, overwrite=options.overwrite)
    return [dst] if doc is None else [dst, doc]


def _write_relion_tilt_series(model: pd.DataFrame, dst: Path, options: WriteOptions) -> list[Path]:
    return relion.write_relion_tilt_series(
        model, dst, overwrite=options.overwrite, **_tomograms_option(options.tomograms)
    )


def _write_imod(model: pd.DataFrame, dst: Path, options: WriteOptions) -> list[Path]:
    xtilt = dst.with_suffix(".xtilt") if (model[PMDL.ROTATION_X] != 0).any() else None
    tlt = dst.with_suffix(".tlt")
    imod.write_imod_alignment(model, dst, tlt, xtilt=xtilt, overwrite=options.overwrite)
    return [dst, tlt] if xtilt is None else [dst, tlt, xtilt]


def _write_aretomo(model: pd.DataFrame, dst: Path, options: WriteOptions) -> list[Path]:
    aretomo.write_aretomo_alignment(model, dst, overwrite=options.overwrite, image_size=options.image_size)
    return [dst]


#: format name -> writer; ``convert`` picks by name (``to=``) or by the destination suffix
WRITERS: dict[str, Writer] = {
    "mrc": Writer("image", (".mrc", ".mrcs", ".st", ".ali", ".rec", ".map"), _write_mrc),
    "ome-zarr": Writer("image", (".ome.zarr", ".zarr"), _write_ome_zarr),
    "relion": Writer("poses", (".star",), _write_relion_particles),
    "dynamo": Writer("poses", (".tbl",), _write_dynamo),
    "relion-tilt-series": Writer("alignment", (".star",), _write_relion_tilt_series),
    "imod": Writer("alignment", (".xf",), _write_imod),
    "aretomo": Writer("alignment", (".aln",), _write_aretomo),
}


def _pick_writer(dst: Path, kind: str, to: str | None) -> Writer:
    candidates = {name: w for name, w in WRITERS.items() if w.kind == kind}
    if to is not None:
        if to not in candidates:
            raise UnknownFormatError(
                f"{dst}: cannot write {kind} as {to!r}; formats for {kind}: {sorted(candidates)}"
            )
        return candidates[to]
    suffix = _suffix(dst)
    for writer in candidates.values():
        if suffix in writer.suffixes:
            return writer
    known = {name: list(w.suffixes) for name, w in candidates.items()}
    raise UnknownFormatError(f"{dst}: no {kind} format has suffix {suffix!r}; known: {known}")


def convert(
    src: PathLike,
    dst: PathLike,
    *,
    to: str | None = None,
    overwrite: bool = False,
    image_size: tuple[int, int] | None = None,
    tomograms: PathLike | None = None,
) -> list[Path]:
    """Read ``src`` and write it to ``dst`` in another format of the same kind.

    Parameters
    ----------
    src
        Any file cryoxr reads (see :func:`file_kind`).
    dst
        Destination; its suffix picks the format unless ``to`` names one of
        :data:`WRITERS`.
    to
        Output format name (``"mrc"``, ``"ome-zarr"``, ``"relion"``, ``"dynamo"``,
        ``"relion-tilt-series"``, ``"imod"``, ``"aretomo"``).
    overwrite
        Replace an existing ``dst``; otherwise refuse before reading anything.
    image_size
        (nx, ny) of the tilt images, for alignment formats that record it (AreTomo's
        ``RawSize``) when the source does not.
    tomograms
        A RELION 5 ``tomograms.star``: the tomogram sizes that RELION 5 particle files
        (centred coordinates) and tilt-series files need, for reading and for writing.

    Returns
    -------
    list of pathlib.Path
        Every file written, ``dst`` first (IMOD writes a ``.tlt`` beside the ``.xf``,
        Dynamo a ``.doc`` map for named tomograms, RELION 5 one STAR per tilt series).
    """
    src_path, dst_path = Path(src), Path(dst)
    kind = file_kind(src_path)
    writer = _pick_writer(dst_path, kind, to)
    if dst_path.exists() and not overwrite:
        from cryoxr.errors import FileExistsNoOverwriteError

        raise FileExistsNoOverwriteError(
            f"{dst_path}: exists; pass overwrite=True (--overwrite) to replace it"
        )
    obj: Any
    if kind == "image":
        obj = open_image(src_path)
    elif kind == "poses":
        obj = read_poses(src_path, **_tomograms_option(tomograms))
    else:
        obj = read_alignment(src_path)
    options = WriteOptions(
        overwrite=overwrite, image_size=image_size, tomograms=None if tomograms is None else Path(tomograms)
    )
    return writer.write(obj, dst_path, options)
