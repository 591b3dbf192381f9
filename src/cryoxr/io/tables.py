"""One door to every pose and alignment format: dispatch by suffix, then by content.

================  ==========================  ==========================================
suffix            reader                      module
================  ==========================  ==========================================
``.star``         particles / tilt series     :mod:`cryoxr.io.relion` (RELION)
``.tbl``          particles                   :mod:`cryoxr.io.dynamo` (Dynamo table)
``.xf`` + ``.tlt``  alignment                 :mod:`cryoxr.io.imod` (IMOD; sibling ``.tlt``)
``.aln``          alignment                   :mod:`cryoxr.io.aretomo` (AreTomo)
``.mdoc``         nominal alignment           :mod:`cryoxr.io.mdoc` (SerialEM)
``.xml``          alignment                   :mod:`cryoxr.io.warp` (Warp/M tilt series)
``.em``           particles                   :mod:`cryoxr.io.em` (TOM/AV3 motive list)
``.cs``           particles                   :mod:`cryoxr.io.cryosparc` (cryoSPARC)
``.star`` (Warp)  particles                   :mod:`cryoxr.io.warp` (no optics block, ``.tomostar``)
================  ==========================  ==========================================

A file with another suffix is recognised by its first lines (``data_`` / ``loop_`` ->
STAR, ``# AreTomo Alignment`` -> AreTomo, 6 numbers a line -> IMOD ``.xf``, 26 or more
numbers a line -> Dynamo table). Readers are imported when first needed, so this module
works whichever format modules are installed.

The text parsing the plain-text readers share lives in :mod:`cryoxr.io.plaintext` (its
names are importable from here too).

**Pixel size.** IMOD and AreTomo files (and Dynamo tables without an ``apix`` column)
store no pixel size: their readers need ``pixel_spacing=`` (Å per pixel), and
:func:`read_alignment` / :func:`read_poses` pass it on. A format that stores its own
pixel size (RELION) refuses the argument rather than ignore it.

Examples
--------
>>> import tempfile, pathlib
>>> from cryoxr.io.tables import read_alignment
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "TS_01.xf").write_text("0.0871557 0.9961947 -0.9961947 0.0871557 9.526 5.853\\n")
>>> _ = (folder / "TS_01.tlt").write_text("30.0\\n")
>>> model = read_alignment(folder / "TS_01.xf", pixel_spacing=1.35)
>>> model[["rotation_y", "rotation_z", "pixel_spacing"]].round(4).values.tolist()
[[30.0, 85.0, 1.35]]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from cryoxr.errors import CryoxrFileNotFoundError, InvalidValueError, UnknownFormatError
from cryoxr.io._paths import PathLike, read_head

# the shared text parsing, importable from here as before the split
from cryoxr.io.plaintext import (  # noqa: F401
    MAX_IMAGINARY_PART,
    PIXEL_SPACING_ADVICE,
    data_row_line,
    file_model,
    parse_numeric_rows,
    read_numeric_table,
    read_text_lines,
    require_pixel_spacing,
    warn_unstored_columns,
)

__all__ = [
    "ALIGNMENT_SIBLINGS",
    "KNOWN_ALIGNMENT_FORMATS",
    "KNOWN_POSE_FORMATS",
    "read_alignment",
    "read_poses",
    "takes_pixel_spacing",
]


# --------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------
#: suffix -> (module, reader) for particle poses
KNOWN_POSE_FORMATS: dict[str, tuple[str, str]] = {
    ".star": ("cryoxr.io.relion", "read_relion_particles"),
    ".tbl": ("cryoxr.io.dynamo", "read_dynamo_table"),
    ".em": ("cryoxr.io.em", "read_em_motive_list"),
    ".cs": ("cryoxr.io.cryosparc", "read_cryosparc"),
}
#: suffix -> (module, reader) for tilt-series alignments
KNOWN_ALIGNMENT_FORMATS: dict[str, tuple[str, str]] = {
    ".star": ("cryoxr.io.relion", "read_relion_tilt_series"),
    ".xf": ("cryoxr.io.imod", "read_imod_alignment"),
    ".aln": ("cryoxr.io.aretomo", "read_aretomo_alignment"),
    ".mdoc": ("cryoxr.io.mdoc", "read_mdoc_alignment"),
    ".xml": ("cryoxr.io.warp", "read_warp_tilt_series"),
}


def _sniff(path: Path) -> str | None:
    """Guess a suffix from the first non-blank, non-comment lines of ``path``."""
    head = read_head(path, what="text table").decode("utf-8", errors="replace")
    lines = [ln.strip() for ln in head.splitlines() if ln.strip()]
    if not lines:
        return None
    if lines[0].startswith("# AreTomo Alignment"):
        return ".aln"
    if "NUMPY" in lines[0][:8]:  # np.save's magic: a cryoSPARC .cs particle set
        return ".cs"
    if any(ln.startswith(("[ZValue", "[T = SerialEM")) for ln in lines[:60]):
        return ".mdoc"
    if any(ln.startswith("<TiltSeries") for ln in lines[:3]):
        return ".xml"
    for ln in lines[:50]:
        if ln.startswith(("data_", "loop_", "_rln")):
            return ".star"
    numeric = [ln for ln in lines[:5] if not ln.startswith("#")]
    if not numeric:
        return None
    try:
        widths = {len([float(t) for t in ln.split()]) for ln in numeric[:-1] or numeric}
    except ValueError:
        return None
    if widths == {6}:
        return ".xf"
    if len(widths) == 1 and min(widths) >= 26:
        return ".tbl"
    return None


#: alignment reader -> {keyword: sibling suffixes tried in order}; a sibling that exists is
#: passed unless the caller gave the keyword (None switches it off)
ALIGNMENT_SIBLINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "read_imod_alignment": {"tlt": (".tlt", ".rawtlt"), "xtilt": (".xtilt",)},
    "read_aretomo_alignment": {"ctf": ("_CTF.txt",), "tilts": ("_TLT.txt",)},
}


def _reader(path: PathLike, table: dict[str, tuple[str, str]], kind: str) -> tuple[Path, Callable[..., Any]]:
    import importlib

    p = Path(path)
    if not p.exists():
        raise CryoxrFileNotFoundError(f"{p}: no such file")
    known = ", ".join(f"{suffix} ({module.rsplit('.', 1)[1]})" for suffix, (module, _) in table.items())
    suffix = p.suffix.lower()
    if suffix not in table:
        sniffed = _sniff(p) if p.is_file() else None
        if sniffed is None or sniffed not in table:
            found = f"content that looks like {sniffed}" if sniffed else "content cryoxr does not recognise"
            raise UnknownFormatError(
                f"{p}: cannot tell the {kind} format from suffix {p.suffix!r} or {found}; known: {known}"
            )
        suffix = sniffed
    module_name, function_name = table[suffix]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownFormatError(
            f"{p}: the {suffix} reader ({module_name}) is not available here ({err}); known: {known}"
        ) from None
    return p, getattr(module, function_name)


def _with_pixel_spacing(
    path: Path, reader: Callable[..., Any], kwargs: dict[str, Any], pixel_spacing: float | None
) -> dict[str, Any]:
    """``kwargs`` plus ``pixel_spacing`` when given; refused by readers of formats that store it."""
    if pixel_spacing is None:
        return kwargs
    if "pixel_spacing" not in inspect.signature(reader).parameters:
        raise InvalidValueError(
            f"{path}: this file stores its own pixel size ({reader.__name__}); pixel_spacing= is only "
            "for files that store none (IMOD .xf, AreTomo .aln, Dynamo .tbl without apix)"
        )
    return {**kwargs, "pixel_spacing": pixel_spacing}


def takes_pixel_spacing(path: PathLike, kind: str) -> bool:
    """Whether the reader of ``path`` (``kind`` ``"poses"`` or ``"alignment"``) takes ``pixel_spacing=``.

    For commands over many files (``cryoxr info``) that apply a pixel size only to the
    files that store none.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.xf"
    >>> _ = p.write_text("1 0 0 1 0 0\\n")
    >>> takes_pixel_spacing(p, "alignment")
    True
    """
    table = KNOWN_POSE_FORMATS if kind == "poses" else KNOWN_ALIGNMENT_FORMATS
    _, reader = _reader(path, table, kind)
    return "pixel_spacing" in inspect.signature(reader).parameters


def read_poses(path: PathLike, *, pixel_spacing: float | None = None, **kwargs: Any) -> xr.Dataset:
    """Read particle poses from any known format into a PoseSet.

    Parameters
    ----------
    path
        A RELION ``.star`` particle file or a Dynamo ``.tbl``; other suffixes are
        recognised by content. A RELION 5 file (centred coordinates) takes the tomogram
        sizes from ``tomograms=`` or, when not given, from a ``tomograms.star`` beside it.
    pixel_spacing
        Å per pixel, for files that store none (a Dynamo table without ``apix``);
        refused for formats that store their own.
    **kwargs
        Passed on to the format's reader (e.g. ``tomogram_map=`` for Dynamo).

    Returns
    -------
    xarray.Dataset
        The PoseSet.

    Raises
    ------
    UnknownFormatError
        The format is not recognised; the message lists the known ones.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "p.tbl").write_text(" ".join(["1"] * 35) + "\\n")
    >>> read_poses(folder / "p.tbl", pixel_spacing=1.35).sizes["particle"]
    1
    """
    p, reader = _reader(path, KNOWN_POSE_FORMATS, "pose")
    if reader.__name__ == "read_relion_particles" and _is_warp_star(p):
        from cryoxr.io.warp import read_warp_particles as reader  # a Warp STAR: its pixel-size columns
    kwargs = _with_pixel_spacing(p, reader, kwargs, pixel_spacing)
    if reader.__name__ == "read_relion_particles" and kwargs.get("tomograms") is None:
        sibling = p.with_name("tomograms.star")
        if _needs_tomogram_sizes(p) and sibling.is_file():
            # RELION 5 keeps sizes in tomograms.star: use the one beside the particles
            kwargs["tomograms"] = sibling
    result: xr.Dataset = reader(p, **kwargs)
    return result


def _is_warp_star(path: Path) -> bool:
    """A Warp particle STAR: RELION 3.0 style (no optics block) naming ``.tomostar`` series."""
    head = read_head(path, what="particle STAR")
    return b"data_optics" not in head and b".tomostar" in head


def _needs_tomogram_sizes(path: Path) -> bool:
    """A RELION 5 particle file: centred coordinates, which need the tomogram sizes."""
    return b"_rlnCenteredCoordinateXAngst" in read_head(path, what="RELION particle STAR")


def _sibling(path: Path, suffixes: Sequence[str]) -> Path | None:
    """The first ``<stem><suffix>`` beside ``path`` that is a file."""
    for suffix in suffixes:
        candidate = path.with_name(path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_alignment(path: PathLike, *, pixel_spacing: float | None = None, **kwargs: Any) -> pd.DataFrame:
    """Read a tilt-series alignment from any known format into a ProjectionModel.

    Parameters
    ----------
    path
        An IMOD ``.xf``, an AreTomo ``.aln``, or a RELION ``tomograms.star``. Files that
        belong to the same tilt series and lie beside it are read too unless the keyword
        is given (:data:`ALIGNMENT_SIBLINGS`): IMOD's ``.tlt`` (else ``.rawtlt``, the
        nominal angles) and ``.xtilt``; AreTomo3's ``_CTF.txt`` and ``_TLT.txt``. Pass
        ``xtilt=None`` (etc.) to leave one out; ctfplotter's ``.defocus`` is read when
        given (``defocus=``).
    pixel_spacing
        Å per pixel of the tilt images, required for IMOD and AreTomo files (they
        store none); refused for RELION files, which store it.
    **kwargs
        Passed on to the format's reader.

    Returns
    -------
    pandas.DataFrame
        The ProjectionModel; ``df.attrs`` holds the centres the tool uses.

    Raises
    ------
    UnknownFormatError
        The format is not recognised; the message lists the known ones.
    CryoxrFileNotFoundError
        An IMOD ``.xf`` with neither ``.tlt`` nor ``.rawtlt`` beside it.
    InvalidValueError
        An IMOD or AreTomo file without ``pixel_spacing=``, or a RELION file with it.
    """
    p, reader = _reader(path, KNOWN_ALIGNMENT_FORMATS, "alignment")
    kwargs = _with_pixel_spacing(p, reader, kwargs, pixel_spacing)
    for keyword, suffixes in ALIGNMENT_SIBLINGS.get(reader.__name__, {}).items():
        if keyword not in kwargs:
            found = _sibling(p, suffixes)
            if found is not None:
                kwargs[keyword] = found
    if reader.__name__ == "read_imod_alignment":
        tlt = kwargs.pop("tlt", None)
        if tlt is None:
            names = " or ".join(p.stem + s for s in ALIGNMENT_SIBLINGS[reader.__name__]["tlt"])
            raise CryoxrFileNotFoundError(
                f"{p}: an IMOD .xf needs its tilt angles; expected the sibling {names}, found neither"
            )
        result: pd.DataFrame = reader(p, tlt, **kwargs)
        return result
    result = reader(p, **kwargs)
    return result
