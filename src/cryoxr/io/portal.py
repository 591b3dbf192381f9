"""A CryoET Data Portal download folder as a catalogue (local files only).

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

:func:`open_portal` returns a :class:`PortalFolder`: ``.runs``, ``.voxel_spacings(run)``,
``.tomogram_kinds(run, voxel_spacing)``, ``.annotations(run)``, ``.tomogram(run,
voxel_spacing=, kind=)`` (lazy) and ``.picks(run, object=, voxel_spacing=, annotation=)``.

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
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import CryoxrError, CryoxrFileNotFoundError, FormatError, InvalidValueError
from cryoxr.image import Chunks, Image
from cryoxr.io._paths import read_bytes
from cryoxr.poseset import make_poseset

__all__ = ["NDJSON_KEYS", "PortalFolder", "open_portal", "read_portal_points"]

PathLike = str | os.PathLike[str]

#: ndjson keys -> meaning
NDJSON_KEYS: dict[str, str] = {
    "type": "point or orientedPoint",
    "location": "{x, y, z} in voxels of the annotation's voxel spacing",
    "xyz_rotation_matrix": "3x3 rotation, reference -> tomogram (orientedPoint)",
}
_SPACING = re.compile(r"^VoxelSpacing(\d+(?:\.\d+)?)$")
_SHAPE = re.compile(r"_(orientedpoint|point)$", re.IGNORECASE)
_RUN_MARKERS = ("Reconstructions", "Tomograms")


def _spacing_of(path: Path) -> float | None:
    for part in reversed(path.parts):
        if m := _SPACING.match(part):
            return float(m.group(1))
    return None


@dataclass(frozen=True)
class PortalFolder:
    """A folder downloaded from the CryoET Data Portal (see the module docstring)."""

    root: Path
    run_dirs: dict[str, Path]

    @property
    def runs(self) -> list[str]:
        """Run names, sorted."""
        return sorted(self.run_dirs)

    def _run(self, run: str) -> Path:
        if run not in self.run_dirs:
            raise CryoxrFileNotFoundError(f"{self.root}: no run {run!r}; runs: {self.runs}")
        return self.run_dirs[run]

    def _stores(self, run: str) -> list[Path]:
        return sorted(
            p
            for p in self._run(run).rglob("*.zarr")
            if p.is_dir() and _spacing_of(p) is not None and "Annotations" not in p.parts
        )

    def voxel_spacings(self, run: str) -> list[float]:
        """Voxel spacings (Å) with a tomogram or an annotation."""
        found = {_spacing_of(p) for p in [*self._stores(run), *self._ndjson(run)]}
        return sorted(s for s in found if s is not None)

    def tomogram_kinds(self, run: str, voxel_spacing: float) -> list[str]:
        """The tomograms at a voxel spacing, named by their folder (tomogram id or ``CanonicalTomogram``)."""
        return sorted(
            {p.parent.name for p in self._stores(run) if abs((_spacing_of(p) or -1) - voxel_spacing) < 1e-3}
        )

    def tomogram(
        self, run: str, *, voxel_spacing: float, kind: str, level: int = 0, chunks: Chunks = "auto"
    ) -> Image:
        """A lazy Tomogram from the OME-Zarr store of ``kind`` at ``voxel_spacing``."""
        from cryoxr.io.ome_zarr import read_ome_zarr

        for store in self._stores(run):
            if store.parent.name == kind and abs((_spacing_of(store) or -1) - voxel_spacing) < 1e-3:
                return read_ome_zarr(store, level=level, chunks=chunks, experiment_id=run)
        raise CryoxrFileNotFoundError(
            f"{self.root}: run {run!r} has no tomogram {kind!r} at {voxel_spacing} Å; it has {self.tomogram_kinds(run, voxel_spacing)}"
        )

    def _ndjson(self, run: str) -> list[Path]:
        return sorted(p for p in self._run(run).rglob("*.ndjson") if p.is_file())

    def annotations(self, run: str) -> list[dict[str, Any]]:
        """One entry per ndjson file: object, shape, annotation (folder or file stem), voxel spacing, path."""
        found = []
        for path in self._ndjson(run):
            m = _SHAPE.search(path.stem)
            obj = path.stem[: m.start()] if m else path.stem
            annotation = path.parent.name if path.parent.name != "Annotations" else path.stem
            found.append({"object": obj, "shape": m.group(1).lower() if m else "", "annotation": annotation,
                          "voxel_spacing": _spacing_of(path), "path": str(path)})  # fmt: skip
        return found

    def picks(
        self, run: str, *, object: str, voxel_spacing: float | None = None, annotation: str | None = None
    ) -> xr.Dataset:
        """The points of ``object`` as a PoseSet in pixels of ``voxel_spacing`` (default: the annotation's)."""
        matches = [
            a
            for a in self.annotations(run)
            if a["object"] == object and (annotation is None or a["annotation"] == annotation)
        ]
        if len(matches) != 1:
            listed = [(a["object"], a["annotation"]) for a in self.annotations(run)]
            what = "no" if not matches else f"{len(matches)}"
            raise InvalidValueError(
                f"{self.root}: run {run!r} has {what} annotations of {object!r}"
                f"{'' if annotation is None else f' in {annotation!r}'}; pass annotation= to choose; it has {listed}"
            )
        found = matches[0]
        if found["voxel_spacing"] is None:
            raise FormatError(f"{found['path']}: expected the file under a VoxelSpacing<vs> folder")
        return read_portal_points(
            found["path"],
            voxel_spacing=found["voxel_spacing"],
            experiment_id=run,
            target_spacing=voxel_spacing,
        )


def open_portal(folder: PathLike) -> PortalFolder:
    """Open a CryoET Data Portal download folder (a run, a dataset or a folder of datasets).

    Raises
    ------
    CryoxrFileNotFoundError
        No such folder, or no run in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CryoxrFileNotFoundError(f"{root}: no such folder")

    def is_run(folder: Path) -> bool:
        return not _SPACING.match(folder.name) and any((folder / m).is_dir() for m in _RUN_MARKERS)

    # the shallowest level that holds runs: the folder itself, its children, or grandchildren
    level = [root]
    runs: dict[str, Path] = {}
    for _ in range(3):
        runs = {p.name: p for p in level if is_run(p)}
        if runs:
            break
        level = sorted(q for p in level for q in p.iterdir() if q.is_dir())
    if not runs:
        raise CryoxrFileNotFoundError(
            f"{root}: expected run folders holding {' or '.join(_RUN_MARKERS)}, found none"
        )
    return PortalFolder(root, runs)


def _row(path: Path, line_number: int, text: str) -> tuple[list[float], np.ndarray]:
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
    path: PathLike, *, voxel_spacing: float, experiment_id: str, target_spacing: float | None = None
) -> xr.Dataset:
    """Read a portal point / oriented-point ndjson (voxels of ``voxel_spacing``) into a PoseSet.

    ``target_spacing`` rescales the positions to pixels of another voxel spacing.
    """
    p = Path(path)
    target = voxel_spacing if target_spacing is None else target_spacing
    if not (np.isfinite(target) and target > 0 and np.isfinite(voxel_spacing) and voxel_spacing > 0):
        raise InvalidValueError(f"{p}: voxel spacings must be > 0 Å, found {voxel_spacing}, {target_spacing}")
    try:
        text = read_bytes(p, what="portal ndjson").decode("utf-8")
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
