"""Convert between formats of the same kind: images, poses, alignments.

:func:`cryoxr.io.describe.file_kind` tells what a source holds; :data:`WRITERS` maps each
output format to its writer, so a new format is a new row.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> import cryoxr
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> poses = cryoxr.make_poseset(np.ones((3, 3)), experiment_id="12", pixel_spacing=5.0)
>>> cryoxr.io.write_relion_particles(poses, folder / "particles.star", version=4)
>>> [p.name for p in convert(folder / "particles.star", folder / "particles.tbl")]
['particles.tbl']
>>> cryoxr.io.read_poses(folder / "particles.tbl").sizes["particle"]
3
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from cryoxr.errors import FileExistsNoOverwriteError, InvalidValueError, UnknownFormatError
from cryoxr.image import Image
from cryoxr.io import aretomo, dynamo, imod, mrc, ome_zarr, relion
from cryoxr.io._paths import PathLike
from cryoxr.io.describe import CONVERTIBLE_KINDS, file_kind, suffix_of, tomograms_option
from cryoxr.io.images import open_image
from cryoxr.io.tables import read_alignment, read_poses
from cryoxr.poseset import experiment_ids
from cryoxr.projection_model import PMDL

__all__ = ["WRITERS", "WriteOptions", "Writer", "convert"]


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
        **tomograms_option(options.tomograms),
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
        model, dst, overwrite=options.overwrite, **tomograms_option(options.tomograms)
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
    suffix = suffix_of(dst)
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
    pixel_spacing: float | None = None,
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
    pixel_spacing
        Å per pixel of a source that stores none (IMOD, AreTomo, Dynamo without apix).

    Returns
    -------
    list of pathlib.Path
        Every file written, ``dst`` first (IMOD writes a ``.tlt`` beside the ``.xf``,
        Dynamo a ``.doc`` map for named tomograms, RELION 5 one STAR per tilt series).
    """
    src_path, dst_path = Path(src), Path(dst)
    kind = file_kind(src_path)
    if kind not in CONVERTIBLE_KINDS:
        raise UnknownFormatError(
            f"{src_path}: holds {kind}; convert reads {', '.join(CONVERTIBLE_KINDS)} files"
        )
    writer = _pick_writer(dst_path, kind, to)
    if dst_path.exists() and not overwrite:
        raise FileExistsNoOverwriteError(
            f"{dst_path}: exists; pass overwrite=True (--overwrite) to replace it"
        )
    obj: Any
    if kind == "image":
        if pixel_spacing is not None:
            raise InvalidValueError(
                f"{src_path}: an image stores its pixel size; pixel_spacing= is only for files that store none"
            )
        obj = open_image(src_path)
    elif kind == "poses":
        obj = read_poses(src_path, pixel_spacing=pixel_spacing, **tomograms_option(tomograms))
    else:
        obj = read_alignment(src_path, pixel_spacing=pixel_spacing)
    options = WriteOptions(
        overwrite=overwrite, image_size=image_size, tomograms=None if tomograms is None else Path(tomograms)
    )
    return writer.write(obj, dst_path, options)
