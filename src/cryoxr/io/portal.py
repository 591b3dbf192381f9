"""A CryoET Data Portal folder as a catalogue: a download on the local disk, or a URL.

Layouts (the portal's standardized file layout; both the current and the first one)::

    <dataset>/<run>/Reconstructions/VoxelSpacing13.480/Tomograms/<id>/<run>.zarr
    <dataset>/<run>/Reconstructions/VoxelSpacing13.480/Annotations/<id>/<object>_orientedpoint.ndjson
    <dataset>/<run>/Tomograms/VoxelSpacing13.480/CanonicalTomogram/<run>.zarr          (first layout)
    <dataset>/<run>/Tomograms/VoxelSpacing13.480/Annotations/<name>_orientedpoint.ndjson

A run is a folder holding ``Reconstructions`` or ``Tomograms``; the folder given may be a
dataset, a parent of datasets or a run. Tomograms are OME-Zarr stores (scales in Å) under
a ``VoxelSpacing<vs>`` folder, named by the folder that holds them (the tomogram id, or
``CanonicalTomogram``). Annotations (:data:`NDJSON_KEYS`) are ndjson files, one JSON object
a line: ``{"type": "point" | "orientedPoint", "location": {"x", "y", "z"},
"xyz_rotation_matrix": [[...] x3]}`` with locations in **voxels** of the annotation's voxel
spacing (the portal's own checks compare them with the tomogram's size in voxels) and the
rotation taking the reference into the tomogram (cryoxr's orientation, as copick reads it);
``"point"`` rows get the identity. The object name is the file name before ``_point`` /
``_orientedpoint``.

How ``.picks(run, object=, user=, session=)`` names a Portal annotation (copick's names,
as copick's own Portal backend maps them):

=========  =================================================================================
keyword    the Portal's notion
=========  =================================================================================
object     the annotated object: the file name before ``_point`` / ``_orientedpoint``
           (``cytosolic_ribosome``), with or without a trailing ``-<version>``
           (``membrane-1.0`` or ``membrane``)
user       ``"data-portal"`` (copick's user id for every Portal annotation), or the name of
           one of the annotation's authors, read from the annotation's metadata JSON next
           to the ndjson (``<name>.json`` or ``annotation_metadata.json``, its ``authors``
           list); None: any
session    the annotation id: the ``Annotations/<id>/`` folder (first layout: the file name
           before the shape), as copick's ``session_id``; ``annotation=`` is the same
           selector under its older name
=========  =================================================================================

The folder may also be a URL (``https://``, ``s3://``: ``pip install 'cryoxr[remote]'``),
read through fsspec by the same functions (:mod:`cryoxr.io._fs`): runs and annotations are
found by listing folders, which S3 does natively and an HTTP server does when it sends
index pages for folders (a file host that sends none, as object stores behind HTTPS
usually do not, shows no runs: list the Portal's files through their ``s3://`` URL, with
s3fs); folders are listed only down to the OME-Zarr stores, never into them.

:func:`open_portal` returns a :class:`PortalFolder`: ``.runs``, ``.voxel_spacings(run)``,
``.tomogram_kinds(run, voxel_spacing)``, ``.annotations(run)``, ``.tomogram(run,
voxel_spacing=, kind=)`` (lazy) and ``.picks(run, object=, user=, session=, voxel_spacing=)``.

Examples
--------
>>> import json, tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> folder = root / "10001" / "TS_01" / "Reconstructions" / "VoxelSpacing10.000" / "Annotations" / "7"
>>> folder.mkdir(parents=True)
>>> _ = (folder / "ribosome_orientedpoint.ndjson").write_text(json.dumps(
...     {"type": "orientedPoint", "location": {"x": 4, "y": 5, "z": 6},
...      "xyz_rotation_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}) + "\\n")
>>> portal = open_portal(root)
>>> portal.runs, [a["object"] for a in portal.annotations("TS_01")]
(['TS_01'], ['ribosome'])
>>> portal.picks("TS_01", object="ribosome", voxel_spacing=5.0).position.values.tolist()
[[8.0, 10.0, 12.0]]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import CryoxrError, CryoxrFileNotFoundError, FormatError, InvalidValueError
from cryoxr.image import Chunks, Image
from cryoxr.io._fs import Location
from cryoxr.io._paths import METADATA_MAX_BYTES, PathLike, parse_json
from cryoxr.poseset import make_poseset

__all__ = ["NDJSON_KEYS", "PORTAL_USER", "PortalFolder", "open_portal", "read_portal_points"]

#: ndjson keys -> meaning
NDJSON_KEYS: dict[str, str] = {
    "type": "point or orientedPoint",
    "location": "{x, y, z} in voxels of the annotation's voxel spacing",
    "xyz_rotation_matrix": "3x3 rotation, reference -> tomogram (orientedPoint)",
}
_SPACING = re.compile(r"^VoxelSpacing(\d+(?:\.\d+)?)$")
_SHAPE = re.compile(r"_(orientedpoint|point)$", re.IGNORECASE)
_RUN_MARKERS = ("Reconstructions", "Tomograms")
_VERSION = re.compile(r"-v?\d+(?:\.\d+)*$")
#: copick's user id for annotations that come from the Portal
PORTAL_USER = "data-portal"


def _spacing_of(parts: tuple[str, ...]) -> float | None:
    for part in reversed(parts):
        if m := _SPACING.match(part):
            return float(m.group(1))
    return None


def _is_store(loc: Location) -> bool:
    return loc.name.endswith(".zarr")


@dataclass(frozen=True)
class PortalFolder:
    """A folder of the CryoET Data Portal, local or remote (see the module docstring).

    ``root`` and ``run_dirs`` are local paths or, for a remote folder, URLs.
    """

    root: Path | str
    run_dirs: dict[str, Path | str]
    _runs: dict[str, Location] = field(default_factory=dict, repr=False, compare=False)
    _members: dict[str, list[tuple[Location, tuple[str, ...]]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self._runs:  # built from paths / URLs alone
            self._runs.update({name: Location.of(path) for name, path in self.run_dirs.items()})

    @property
    def runs(self) -> list[str]:
        """Run names, sorted."""
        return sorted(self.run_dirs)

    def _walk(self, run: str) -> list[tuple[Location, tuple[str, ...]]]:
        """Every member of a run folder (not inside OME-Zarr stores) and its parts below the run."""
        if run not in self._runs:
            raise CryoxrFileNotFoundError(f"{self.root}: no run {run!r}; runs: {self.runs}")
        if run not in self._members:
            top = self._runs[run]
            self._members[run] = [(p, p.relative_parts(top)) for p in top.walk(_is_store)]
        return self._members[run]

    def _stores(self, run: str) -> list[tuple[Location, tuple[str, ...]]]:
        return sorted(
            (
                (p, parts)
                for p, parts in self._walk(run)
                if _is_store(p) and "Annotations" not in parts and p.is_dir()
            ),
            key=lambda found: found[1],
        )

    def voxel_spacings(self, run: str) -> list[float]:
        """Voxel spacings (Å) with a tomogram or an annotation."""
        found = {_spacing_of(parts) for _, parts in [*self._stores(run), *self._ndjson(run)]}
        return sorted(s for s in found if s is not None)

    def tomogram_kinds(self, run: str, voxel_spacing: float) -> list[str]:
        """The tomograms at a voxel spacing, named by their folder (tomogram id or ``CanonicalTomogram``)."""
        return sorted(
            {
                parts[-2]
                for _, parts in self._stores(run)
                if len(parts) > 1 and abs((_spacing_of(parts) or -1) - voxel_spacing) < 1e-3
            }
        )

    def tomogram(
        self, run: str, *, voxel_spacing: float, kind: str, level: int = 0, chunks: Chunks = "auto"
    ) -> Image:
        """A lazy Tomogram from the OME-Zarr store of ``kind`` at ``voxel_spacing``."""
        from cryoxr.io.ome_zarr import read_ome_zarr

        for store, parts in self._stores(run):
            if parts[-2:-1] == (kind,) and abs((_spacing_of(parts) or -1) - voxel_spacing) < 1e-3:
                return read_ome_zarr(store.target, level=level, chunks=chunks, experiment_id=run)
        raise CryoxrFileNotFoundError(
            f"{self.root}: run {run!r} has no tomogram {kind!r} at {voxel_spacing} Å; it has {self.tomogram_kinds(run, voxel_spacing)}"
        )

    def _ndjson(self, run: str) -> list[tuple[Location, tuple[str, ...]]]:
        return [(p, parts) for p, parts in self._walk(run) if p.name.endswith(".ndjson") and p.is_file()]

    def _annotations(self, run: str) -> list[tuple[dict[str, Any], Location]]:
        found = []
        for path, parts in self._ndjson(run):
            stem = path.name[: -len(".ndjson")]
            m = _SHAPE.search(stem)
            obj = stem[: m.start()] if m else stem
            version = _VERSION.search(obj)
            annotation = parts[-2] if len(parts) > 1 and parts[-2] != "Annotations" else stem
            entry = {"object": obj, "shape": m.group(1).lower() if m else "", "annotation": annotation,
                     "version": version.group(0).lstrip("-") if version else None,
                     "voxel_spacing": _spacing_of(parts), "path": str(path)}  # fmt: skip
            found.append((entry, path))
        return found

    def annotations(self, run: str) -> list[dict[str, Any]]:
        """One entry per ndjson file: object, shape, annotation (the id folder, or the file stem in
        the first layout; copick's session), version (a trailing ``-<version>`` of the object
        name, else None), voxel spacing, path."""
        return [entry for entry, _ in self._annotations(run)]

    def authors(self, run: str, annotation: str) -> list[str]:
        """The author names of an annotation, from its metadata JSON next to the ndjson
        (``<object>.json``, ``<file stem>.json`` or ``annotation_metadata.json``, key
        ``authors``: ``[{"name": ...}]``, every one found); empty when none was downloaded."""
        names: list[str] = []
        members = self._walk(run)
        for entry, path in self._annotations(run):
            if entry["annotation"] != annotation:
                continue
            folder = path.parent
            siblings = {p.name: p for p, _ in members if p.parent == folder}
            stem = path.name[: -len(".ndjson")]
            for name in (f"{entry['object']}.json", f"{stem}.json", "annotation_metadata.json"):
                if name in siblings:
                    names += _author_names(siblings[name])
        return sorted(set(names))

    def picks(
        self,
        run: str,
        *,
        object: str,
        user: str | None = None,
        session: str | None = None,
        voxel_spacing: float | None = None,
        annotation: str | None = None,
    ) -> xr.Dataset:
        """The points of one annotation of ``object`` as a PoseSet in pixels of ``voxel_spacing``
        (default: the annotation's own).

        ``user`` and ``session`` select as in copick (the module docstring: ``user`` is
        ``"data-portal"`` or an author's name, ``session`` the annotation id);
        ``annotation`` is ``session`` under its older name.

        Raises
        ------
        InvalidValueError
            No annotation, or several, match (the message lists them); ``session`` and
            ``annotation`` disagree.
        """
        if session is not None and annotation is not None and str(session) != str(annotation):
            raise InvalidValueError(
                f"{self.root}: session={session!r} and annotation={annotation!r} name the same thing "
                "(the annotation id) and disagree; pass one of them"
            )
        chosen = None if session is None and annotation is None else str(session or annotation)
        matches = [
            (a, loc)
            for a, loc in self._annotations(run)
            if object in (a["object"], _VERSION.sub("", a["object"]))
            and (chosen is None or a["annotation"] == chosen)
            and (user in (None, PORTAL_USER) or user in self.authors(run, a["annotation"]))
        ]
        if len(matches) != 1:
            listed = [(a["object"], a["annotation"]) for a, _ in self._annotations(run)]
            what = "no" if not matches else f"{len(matches)}"
            raise InvalidValueError(
                f"{self.root}: run {run!r} has {what} annotations of {object!r}"
                f"{'' if chosen is None else f' with id {chosen!r}'}{'' if user is None else f' by {user!r}'}; "
                f"pass session= (the annotation id) to choose; it has {listed}"
            )
        found, location = matches[0]
        if found["voxel_spacing"] is None:
            raise FormatError(f"{found['path']}: expected the file under a VoxelSpacing<vs> folder")
        return read_portal_points(
            location, voxel_spacing=found["voxel_spacing"], experiment_id=run, target_spacing=voxel_spacing
        )


def _author_names(path: Location) -> list[str]:
    text = path.read_bytes(what="portal annotation metadata", max_bytes=METADATA_MAX_BYTES)
    data = parse_json(text, str(path), what="portal annotation metadata")
    authors = data.get("authors", []) if isinstance(data, dict) else []
    if not isinstance(authors, list):
        raise FormatError(f"{path}, authors: expected a list of {{'name': ...}}, found {authors!r:.200}")
    return [str(a["name"]) for a in authors if isinstance(a, dict) and isinstance(a.get("name"), str)]


def open_portal(folder: PathLike) -> PortalFolder:
    """Open a CryoET Data Portal folder (a run, a dataset or a folder of datasets), a path or a URL.

    Raises
    ------
    CryoxrFileNotFoundError
        No such folder, or no run in it; a URL whose server cannot be reached.
    MissingDependencyError
        A URL without fsspec (``pip install 'cryoxr[remote]'``).
    """
    root = Location.of(folder)
    if not root.is_dir():
        raise CryoxrFileNotFoundError(f"{root}: no such folder")

    def is_run(folder: Location) -> bool:
        return not _SPACING.match(folder.name) and any(
            c.name in _RUN_MARKERS and c.is_dir() for c in folder.children()
        )

    # the shallowest level that holds runs: the folder itself, its children, or grandchildren
    level = [root]
    runs: dict[str, Location] = {}
    for _ in range(3):
        runs = {p.name: p for p in level if is_run(p)}
        if runs:
            break
        level = sorted((q for p in level for q in p.children() if q.is_dir()), key=lambda q: q.path)
    if not runs:
        raise CryoxrFileNotFoundError(
            f"{root}: expected run folders holding {' or '.join(_RUN_MARKERS)}, found none"
        )
    return PortalFolder(root.target, {name: loc.target for name, loc in runs.items()}, runs)


def _row(path: Location, line_number: int, text: str) -> tuple[list[float], np.ndarray]:
    try:
        row = json.loads(text)
        xyz = [float(row["location"][a]) for a in "xyz"]
        matrix = np.asarray(row.get("xyz_rotation_matrix", np.eye(3)), dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise FormatError(
            f"{path}, line {line_number}: expected {{'location': {{x, y, z}}, ...}}, found {err!r}"
        ) from None
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all() or not np.isfinite(xyz).all():
        raise FormatError(
            f"{path}, line {line_number}: expected a finite location and 3x3 xyz_rotation_matrix"
        )
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-4) or np.linalg.det(matrix) < 0:
        raise FormatError(f"{path}, line {line_number}: xyz_rotation_matrix is not a proper rotation")
    return xyz, matrix


def read_portal_points(
    path: PathLike | Location,
    *,
    voxel_spacing: float,
    experiment_id: str,
    target_spacing: float | None = None,
) -> xr.Dataset:
    """Read a portal point / oriented-point ndjson (voxels of ``voxel_spacing``) into a PoseSet.

    ``target_spacing`` rescales the positions to pixels of another voxel spacing.
    """
    p = path if isinstance(path, Location) else Location.of(path)
    target = voxel_spacing if target_spacing is None else target_spacing
    if not (np.isfinite(target) and target > 0 and np.isfinite(voxel_spacing) and voxel_spacing > 0):
        raise InvalidValueError(f"{p}: voxel spacings must be > 0 Å, found {voxel_spacing}, {target_spacing}")
    try:
        text = p.read_bytes(what="portal ndjson").decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"{p}: expected UTF-8 ndjson, found {err}") from None
    rows = [_row(p, i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    n = len(rows)
    position = np.array([r[0] for r in rows], dtype=np.float64).reshape(n, 3) * (voxel_spacing / target)
    try:
        ds = make_poseset(
            position,
            orientation=Rotation.from_matrix(np.array([r[1] for r in rows])) if n else None,
            experiment_id=experiment_id,
            pixel_spacing=float(target),
            source=str(p),
        )
    except (CryoxrError, ValueError) as err:
        raise FormatError(f"{p}: {err}") from None
    ds.attrs["format"] = "cryoet-data-portal-ndjson"
    return ds
