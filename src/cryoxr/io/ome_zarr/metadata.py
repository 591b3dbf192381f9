"""OME-NGFF metadata: the ``multiscales`` of versions 0.4 and 0.5, read, checked and built.

Reading finds the first multiscale (0.5 keeps it under ``attributes["ome"]``, 0.4 at the
top of ``.zattrs``) and checks its ``axes`` and ``datasets``; a level's pixel spacing is
its spatial ``scale`` (dataset transforms, then the multiscale's own), converted to Å with
:data:`UNIT_TO_ANGSTROM`. Writing builds the same structure, following docs/CONVENTIONS.md
section 2 (pixel centres: ``scale_l = 2**l * s0``, ``translation_l = t0 + s0 * (2**l - 1) / 2``),
axes ``z, y, x`` of type ``space`` and unit ``angstrom`` (a stack's ``image`` axis has no
type), no ``omero``.

Examples
--------
>>> _level_transforms(("y", "x"), 10.0, [0.0, 0.0], 1)
[{'type': 'scale', 'scale': [20.0, 20.0]}, {'type': 'translation', 'translation': [5.0, 5.0]}]
>>> ms = _ome_attributes("0.4", "m", ("y", "x"), [])["multiscales"][0]
>>> ms["version"], ms["axes"][1]
('0.4', {'name': 'x', 'type': 'space', 'unit': 'angstrom'})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import zarr

from cryoxr.errors import FormatError, UnknownFormatError
from cryoxr.image import SPATIAL_DIMS
from cryoxr.io._image_read import isotropic_spacing

__all__ = ["OME_VERSIONS", "UNIT_TO_ANGSTROM"]

#: OME-NGFF version -> zarr format
OME_VERSIONS: dict[str, int] = {"0.4": 2, "0.5": 3}

#: UDUNITS-2 space units of OME-NGFF -> Å per unit
UNIT_TO_ANGSTROM: dict[str, float] = {
    "angstrom": 1.0,
    "picometer": 1e-2,
    "femtometer": 1e-5,
    "nanometer": 10.0,
    "micrometer": 1e4,
    "millimeter": 1e7,
    "centimeter": 1e8,
    "meter": 1e10,
}


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def _multiscale(group: zarr.Group, where: str) -> tuple[dict[str, Any], str]:
    """The first multiscale of a group and its NGFF version."""
    attrs = group.attrs.asdict()
    if "ome" in attrs:
        ome = attrs["ome"]
        version = str(ome.get("version", "")) if isinstance(ome, Mapping) else ""
        multiscales = ome.get("multiscales") if isinstance(ome, Mapping) else None
        field = "attributes.ome.multiscales"
    else:
        multiscales = attrs.get("multiscales")
        version = ""
        field = "attributes.multiscales"
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], Mapping):
        raise FormatError(
            f"{where}: {field} is missing or empty: not an OME-NGFF image "
            "(0.5 keeps it under attributes['ome'], 0.4 at the top of .zattrs)"
        )
    ms = dict(multiscales[0])
    version = version or str(ms.get("version", ""))
    if version not in OME_VERSIONS:
        raise UnknownFormatError(
            f"{where}: OME-NGFF version {version!r}; cryoxr reads {sorted(OME_VERSIONS)}"
        )
    for key in ("axes", "datasets"):
        if not isinstance(ms.get(key), list) or not ms[key]:
            raise FormatError(f"{where}: {field}[0].{key} is missing or empty")
    for i, dataset in enumerate(ms["datasets"]):
        if not isinstance(dataset, Mapping):
            raise FormatError(
                f"{where}: {field}[0].datasets[{i}]: expected an object with path and "
                f"coordinateTransformations, found {dataset!r:.80}"
            )
    return ms, version


def _transform(transforms: Any, kind: str, ndim: int, where: str) -> list[float] | None:
    """The ``scale`` or ``translation`` vector of a coordinateTransformations list."""
    if transforms is not None and not isinstance(transforms, list):
        raise FormatError(f"{where}: expected a list of transformations, found {transforms!r:.80}")
    for t in transforms or []:
        if isinstance(t, Mapping) and t.get("type") == kind:
            values = t.get(kind)
            if not isinstance(values, list) or len(values) != ndim:
                raise FormatError(f"{where}: {kind} must list {ndim} numbers, found {values!r}")
            try:
                return [float(v) for v in values]
            except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
                raise FormatError(f"{where}: {kind} must list {ndim} numbers, found {values!r}") from None
    return None


def _level_geometry(ms: Mapping[str, Any], level: int, where: str) -> tuple[list[float], list[float]]:
    """Scale and translation of one level, in axis units, with the multiscale's own applied."""
    ndim = len(ms["axes"])
    dataset = ms["datasets"][level]
    field = f"{where}: multiscales[0].datasets[{level}].coordinateTransformations"
    scale = _transform(dataset.get("coordinateTransformations"), "scale", ndim, field)
    if scale is None:
        raise FormatError(f"{field}: no scale transform")
    translation = _transform(dataset.get("coordinateTransformations"), "translation", ndim, field)
    translation = translation or [0.0] * ndim
    field = f"{where}: multiscales[0].coordinateTransformations"
    g_scale = _transform(ms.get("coordinateTransformations"), "scale", ndim, field) or [1.0] * ndim
    g_trans = _transform(ms.get("coordinateTransformations"), "translation", ndim, field) or [0.0] * ndim
    return (
        [s * g for s, g in zip(scale, g_scale, strict=True)],
        [t * g + gt for t, g, gt in zip(translation, g_scale, g_trans, strict=True)],
    )


def _axes(ms: Mapping[str, Any], where: str) -> tuple[list[str], list[str | None]]:
    names: list[str] = []
    units: list[str | None] = []
    for axis in ms["axes"]:
        if isinstance(axis, str):  # NGFF 0.3 style, tolerated
            names.append(axis)
            units.append(None)
        elif isinstance(axis, Mapping) and isinstance(axis.get("name"), str):
            unit = axis.get("unit")
            if unit is not None and not isinstance(unit, str):
                raise FormatError(
                    f"{where}: multiscales[0].axes, axis {axis['name']!r}: expected a unit name, found {unit!r:.80}"
                )
            names.append(axis["name"])
            units.append(unit)
        else:
            raise FormatError(f"{where}: multiscales[0].axes: expected objects with a name, found {axis!r}")
    return names, units


def _spacing(
    names: Sequence[str],
    units: Sequence[str | None],
    scale: Sequence[float],
    where: str,
    *,
    allow_anisotropic: bool,
) -> float | None:
    """Isotropic spacing in Å of the spatial axes, or None when a unit is missing."""
    sizes: dict[str, float] = {}
    for name, unit, value in zip(names, units, scale, strict=True):
        if name not in SPATIAL_DIMS:
            continue
        if unit is None:
            return None
        if unit not in UNIT_TO_ANGSTROM:
            raise FormatError(
                f"{where}: axis {name!r} has unit {unit!r}; cryoxr converts {sorted(UNIT_TO_ANGSTROM)} to Å"
            )
        angstrom = value * UNIT_TO_ANGSTROM[unit]
        if not math.isfinite(angstrom) or angstrom <= 0:
            raise FormatError(
                f"{where}: scale of axis {name!r} must be a positive finite number, found {value!r}"
            )
        sizes[name] = angstrom
    # warnings point at the caller of read_ome_zarr / open_ome_zarr_pyramid (via _read_level, _read_levels)
    return isotropic_spacing(
        sizes, where, "coordinateTransformations scale", "scale",
        rtol=1e-6, allow_anisotropic=allow_anisotropic, stacklevel=5,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def _level_transforms(
    dims: Sequence[str], spacing: float, origin: Sequence[float], level: int
) -> list[dict[str, Any]]:
    """coordinateTransformations of pyramid level ``level``: pixel centres of 2**level-wide bins.

    ``origin`` is the place of pixel 0 of level 0, in Å; a stack's ``image`` dim keeps
    scale 1 and its offset.
    """
    f = 2**level
    return [
        {"type": "scale", "scale": [1.0 if d == "image" else spacing * f for d in dims]},
        {
            "type": "translation",
            "translation": [
                o if d == "image" else o + spacing * (f - 1) / 2 for d, o in zip(dims, origin, strict=True)
            ],
        },
    ]


def _ome_attributes(
    version: str, name: str, dims: Sequence[str], datasets: list[dict[str, Any]]
) -> dict[str, Any]:
    """The group attributes of one multiscale image, laid out for NGFF ``version``."""
    axes = [{"name": d} if d == "image" else {"name": d, "type": "space", "unit": "angstrom"} for d in dims]
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "mean",
        "metadata": {"description": "2x mean per level, trailing odd pixels dropped", "method": "cryoxr"},
    }
    if OME_VERSIONS[version] == 2:
        return {"multiscales": [{"version": version, **multiscale}]}
    return {"ome": {"version": version, "multiscales": [multiscale]}}
