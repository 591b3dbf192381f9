"""copick projects on the local disk or behind a URL, read directly (copick itself pins zarr < 3).

Layout (copick's documented filesystem layout; facts, not code)::

    config.json                       {"name", "pickable_objects": [{"name", "is_particle", ...}],
                                       "overlay_root": "local:///...", "static_root": "local:///..."}
    <root>/ExperimentRuns/<run>/
        VoxelSpacing<vs:.3f>/<tomo_type>.zarr        OME-Zarr multiscale tomogram, scales in Å
        Picks/<user_id>_<session_id>_<object>.json   picks of one user, session, object

A picks file (:data:`PICK_KEYS`) holds ``pickable_object_name``, ``user_id``,
``session_id``, ``run_name``, ``unit`` ("angstrom") and ``points``: each a ``location``
``{x, y, z}`` in Å (voxel index i is ``i · voxel_spacing`` Å, the centre of the first voxel
at 0, as cryoxr's coordinates) and a 4 x 4 ``transformation_`` whose rotation takes the
reference into the tomogram (cryoxr's orientation) and whose translation (Å) is the shift;
``score`` and ``instance_id`` are optional. Runs and picks are searched in the overlay root,
then the static root.

Remote projects: the config may be given as a URL (``https://.../config.json``,
``s3://...``), and each root may be a URL as copick itself allows (``"overlay_root":
"s3://bucket/project"``); a relative root is taken from the config's folder, a
``local://`` root is a local path. Remote files are read through fsspec (``pip install
'cryoxr[remote]'``, :mod:`cryoxr.io._fs`) by the same functions as local ones; runs, voxel
spacings and picks are found by listing folders, which S3 does natively and an HTTP server
does when it sends index pages for folders (a server that sends none shows no runs).
Tomograms are read chunk by chunk (:func:`cryoxr.io.ome_zarr.read_ome_zarr` on the URL).

:func:`open_copick` returns a :class:`CopickProject`: ``.runs``, ``.voxel_spacings(run)``,
``.tomogram_kinds(run, voxel_spacing)``, ``.pick_sets(run)``, ``.tomogram(run,
voxel_spacing=, kind=)`` (a lazy Tomogram) and ``.picks(run, object=, user=, session=,
voxel_spacing=)`` (a PoseSet in pixels of that voxel spacing). :func:`write_copick_picks`
writes a PoseSet back as a picks file.

Examples
--------
>>> import json, tempfile, pathlib, numpy as np
>>> from cryoxr import make_poseset
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "config.json").write_text(json.dumps({"name": "demo", "overlay_root": f"local://{root}",
...     "pickable_objects": [{"name": "ribosome", "is_particle": True, "label": 1}]}))
>>> (root / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000").mkdir(parents=True)
>>> poses = make_poseset([[10.0, 20.0, 5.0]], experiment_id="TS_001", pixel_spacing=10.0)
>>> path = write_copick_picks(poses, root / "ExperimentRuns/TS_001/Picks/alice_1_ribosome.json",
...                           object="ribosome", user="alice", session="1")
>>> project = open_copick(root / "config.json")
>>> project.runs, project.pick_sets("TS_001")
(['TS_001'], [('ribosome', 'alice', '1')])
>>> project.picks("TS_001", object="ribosome", user="alice", session="1").position.values.tolist()
[[10.0, 20.0, 5.0]]
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

from cryoxr.errors import (
    CryoxrError,
    CryoxrFileNotFoundError,
    FormatError,
    InvalidValueError,
    MissingDependencyError,
    UnknownFormatError,
)
from cryoxr.image import Chunks, Image
from cryoxr.io._atomic import atomic_path
from cryoxr.io._fs import Location, is_url
from cryoxr.io._paths import PathLike
from cryoxr.poseset import make_poseset

__all__ = ["PICK_KEYS", "CopickProject", "open_copick", "read_copick_picks", "write_copick_picks"]

#: picks-file key -> meaning
PICK_KEYS: dict[str, str] = {
    "pickable_object_name": "object name (config pickable_objects)",
    "user_id": "who picked",
    "session_id": "picking session",
    "run_name": "experiment run (cryoxr experiment_id)",
    "unit": "unit of locations and translations: angstrom",
    "points": "list of {location {x,y,z}, transformation_ 4x4, score, instance_id}",
}
_SPACING = re.compile(r"^VoxelSpacing(\d+(?:\.\d+)?)$")
_METADATA_MAX = 1 << 30


def _json(path: Location, what: str) -> Any:
    data = path.read_bytes(what=what, max_bytes=_METADATA_MAX)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise FormatError(f"{path}: expected JSON ({what}), found: {err}") from None


def _root(config: Location, url: Any, key: str) -> Location | None:
    if url is None:
        return None
    if not isinstance(url, str):
        raise FormatError(f"{config}, {key}: expected a path or URL, found {url!r}")
    try:
        if is_url(url) or url.startswith(("local://", "file://")) or Path(url).is_absolute():
            return Location.of(url)
    except (MissingDependencyError, UnknownFormatError) as err:
        raise type(err)(f"{config}, {key}: {err}") from None
    return config.parent / url  # relative to the config's folder, local or remote


@dataclass(frozen=True)
class CopickProject:
    """A copick project: its config, roots and pickable objects (see the module docstring).

    ``config`` and ``roots`` are local paths or, for remote ones, URLs.
    """

    config: Path | str
    name: str
    roots: tuple[Path | str, ...]
    objects: tuple[str, ...]
    _roots: tuple[Location, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._roots:  # built from paths / URLs alone
            object.__setattr__(self, "_roots", tuple(Location.of(r) for r in self.roots))

    def _run_dirs(self, run: str) -> list[Location]:
        found = [r / "ExperimentRuns" / run for r in self._roots if (r / "ExperimentRuns" / run).is_dir()]
        if not found:
            raise CryoxrFileNotFoundError(f"{self.config}: no run {run!r}; runs: {self.runs}")
        return found

    @property
    def runs(self) -> list[str]:
        """Run names, over every root, sorted."""
        names = {p.name for r in self._roots for p in (r / "ExperimentRuns").children() if p.is_dir()}
        return sorted(names)

    def voxel_spacings(self, run: str) -> list[float]:
        """The voxel spacings (Å) of a run's tomogram folders."""
        found = {
            float(m.group(1))
            for d in self._run_dirs(run)
            for p in d.children()
            if (m := _SPACING.match(p.name))
        }
        return sorted(found)

    def _spacing_dir(self, run: str, voxel_spacing: float) -> list[Location]:
        dirs = [
            p
            for d in self._run_dirs(run)
            for p in d.children()
            if (m := _SPACING.match(p.name)) and abs(float(m.group(1)) - voxel_spacing) < 1e-3
        ]
        if not dirs:
            raise CryoxrFileNotFoundError(
                f"{self.config}: run {run!r} has no voxel spacing {voxel_spacing}; it has {self.voxel_spacings(run)}"
            )
        return dirs

    def tomogram_kinds(self, run: str, voxel_spacing: float) -> list[str]:
        """The tomogram types (``wbp``, ``denoised``, ...) at one voxel spacing."""
        return sorted(
            {
                p.name[: -len(".zarr")]
                for d in self._spacing_dir(run, voxel_spacing)
                for p in d.children()
                if p.name.endswith(".zarr")
            }
        )

    def tomogram(
        self, run: str, *, voxel_spacing: float, kind: str, level: int = 0, chunks: Chunks = "auto"
    ) -> Image:
        """A lazy Tomogram (level ``level`` of the multiscale OME-Zarr)."""
        from cryoxr.io.ome_zarr import read_ome_zarr

        for folder in self._spacing_dir(run, voxel_spacing):
            store = folder / f"{kind}.zarr"
            if store.is_dir():
                return read_ome_zarr(store.target, level=level, chunks=chunks, experiment_id=run)
        raise CryoxrFileNotFoundError(
            f"{self.config}: run {run!r} has no {kind!r} tomogram at {voxel_spacing} Å; kinds: {self.tomogram_kinds(run, voxel_spacing)}"
        )

    def _pick_files(self, run: str) -> dict[tuple[str, str, str], Location]:
        found: dict[tuple[str, str, str], Location] = {}
        for d in reversed(self._run_dirs(run)):  # overlay (first root) wins
            for path in (d / "Picks").children():
                if not (path.name.endswith(".json") and path.is_file()):
                    continue
                parts = path.stem.split("_", 2)
                if len(parts) == 3:
                    user, session, obj = parts
                    found[(obj, user, session)] = path
        return found

    def pick_sets(self, run: str) -> list[tuple[str, str, str]]:
        """``(object, user, session)`` of each picks file of a run."""
        return sorted(self._pick_files(run))

    def picks(
        self, run: str, *, object: str, user: str, session: str, voxel_spacing: float | None = None
    ) -> xr.Dataset:
        """One picks file as a PoseSet in pixels of ``voxel_spacing`` (default: the run's only spacing)."""
        files = self._pick_files(run)
        key = (object, user, session)
        if key not in files:
            raise CryoxrFileNotFoundError(
                f"{self.config}: run {run!r} has no picks {key}; it has {sorted(files)}"
            )
        if voxel_spacing is None:
            spacings = self.voxel_spacings(run)
            if len(spacings) != 1:
                raise InvalidValueError(
                    f"{self.config}: run {run!r} has voxel spacings {spacings}; pass voxel_spacing="
                )
            voxel_spacing = spacings[0]
        return read_copick_picks(files[key], voxel_spacing=voxel_spacing)


def open_copick(config: PathLike) -> CopickProject:
    """Open a copick project from its config JSON, a local path or a URL.

    Parameters
    ----------
    config
        The config JSON: a path, or a URL (``https://``, ``s3://``, any fsspec protocol;
        needs ``pip install 'cryoxr[remote]'``). Its ``overlay_root`` / ``static_root`` may
        be paths, ``local://`` paths, URLs, or paths relative to the config's folder.

    Raises
    ------
    CryoxrFileNotFoundError
        No such config (a 404), or its server cannot be reached.
    FormatError
        Not JSON, or roots / pickable objects of the wrong type.
    MissingDependencyError
        A URL (config or root) without fsspec, or without the protocol's package.
    UnknownFormatError
        A root whose URL protocol fsspec does not know.

    Examples
    --------
    >>> open_copick("https://127.0.0.1:1/config.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cryoxr.errors.CryoxrFileNotFoundError: https://127.0.0.1:1/config.json: the copick config file could \
not be read: ClientConnectorError: ...
    """
    p = Location.of(config)
    data = _json(p, "copick config")
    if not isinstance(data, dict):
        raise FormatError(f"{p}: expected a JSON object (copick config), found {type(data).__name__}")
    roots = tuple(
        r for key in ("overlay_root", "static_root") if (r := _root(p, data.get(key), key)) is not None
    )
    if not roots:
        raise FormatError(f"{p}: expected overlay_root or static_root, found neither")
    objects = data.get("pickable_objects", [])
    if not isinstance(objects, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in objects
    ):
        raise FormatError(
            f"{p}, pickable_objects: expected a list of objects with a name, found {objects!r:.200}"
        )
    return CopickProject(
        p.target,
        str(data.get("name", p.stem)),
        tuple(r.target for r in roots),
        tuple(o["name"] for o in objects),
        roots,
    )


def _point(path: Location, i: int, point: Any) -> tuple[list[float], np.ndarray, float]:
    try:
        loc = point["location"]
        xyz = [float(loc[a]) for a in "xyz"]
        matrix = np.asarray(point.get("transformation_", np.eye(4)), dtype=np.float64)
        score = float(point.get("score", np.nan) if point.get("score") is not None else np.nan)
    except (KeyError, TypeError, ValueError) as err:
        raise FormatError(
            f"{path}, points[{i}]: expected location {{x, y, z}} and a 4x4 transformation_, found {err!r}"
        ) from None
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or not np.isfinite(xyz).all():
        raise FormatError(
            f"{path}, points[{i}]: expected finite location and 4x4 transformation_, found shape {matrix.shape}"
        )
    rotation = matrix[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0:
        raise FormatError(f"{path}, points[{i}]: transformation_ rotation is not a proper rotation")
    return xyz, matrix, score


def read_copick_picks(path: PathLike | Location, *, voxel_spacing: float) -> xr.Dataset:
    """Read one copick picks JSON (a path or a URL) into a PoseSet in pixels of ``voxel_spacing`` Å.

    Raises
    ------
    FormatError
        Not JSON, no ``points`` list, a point without location, a transformation that is
        not a rotation plus translation, a unit other than angstrom.
    """
    p = path if isinstance(path, Location) else Location.of(path)
    if not (np.isfinite(voxel_spacing) and voxel_spacing > 0):
        raise InvalidValueError(f"{p}: voxel_spacing must be > 0 Å, found {voxel_spacing}")
    data = _json(p, "copick picks")
    if not isinstance(data, dict) or not isinstance(data.get("points", []), list):
        raise FormatError(f"{p}: expected a JSON object with a 'points' list (copick picks)")
    unit = data.get("unit", "angstrom")
    if unit != "angstrom":
        raise FormatError(f"{p}, unit: expected 'angstrom', found {unit!r}")
    points = [_point(p, i, pt) for i, pt in enumerate(data.get("points") or [])]
    n = len(points)
    position = np.array([pt[0] for pt in points], dtype=np.float64).reshape(n, 3) / voxel_spacing
    matrices = np.array([pt[1] for pt in points]).reshape(n, 4, 4)
    run = data.get("run_name") or p.parent.parent.name
    raw = [pt for pt in data.get("points") or [] if isinstance(pt, dict)]
    extra: dict[str, np.ndarray] = {}
    # optional fields become variables only when the file has them (a round trip adds nothing)
    if any("score" in pt for pt in raw):
        extra["score"] = np.array([pt[2] for pt in points], dtype=np.float64)
    try:
        if any("instance_id" in pt for pt in raw):
            extra["instance_id"] = np.asarray(
                [pt.get("instance_id", 0) for pt in raw], dtype=np.int64
            ).reshape(n)
        ds = make_poseset(
            position,
            shift=matrices[:, :3, 3] / voxel_spacing,
            orientation=Rotation.from_matrix(matrices[:, :3, :3]) if n else None,
            experiment_id=str(run),
            pixel_spacing=float(voxel_spacing),
            source=str(p),
            extra=extra,
        )
    except (CryoxrError, ValueError, TypeError, OverflowError) as err:
        raise FormatError(f"{p}: {err}") from None
    ds.attrs.update(
        {
            "format": "copick-picks",
            **{k: str(data.get(k)) for k in ("pickable_object_name", "user_id", "session_id")},
        }
    )
    return ds


def write_copick_picks(
    poses: xr.Dataset, path: PathLike, *, object: str, user: str, session: str, overwrite: bool = False
) -> Path:
    """Write a PoseSet (one experiment) as a copick picks JSON (Å locations, 4x4 transforms).

    ``position`` and ``shift`` are scaled to Å by the set's ``pixel_spacing``; ``score`` and
    ``instance_id`` variables are written when the set has them (copick's fields are optional:
    nothing is invented). ``user`` and ``session`` must not contain ``_`` (copick splits the
    file name ``<user>_<session>_<object>.json`` at the first two underscores). Written to a
    local path only.
    """
    if is_url(path):
        raise InvalidValueError(f"{path}: cryoxr writes copick picks to a local path, not to a URL")
    # copick names the file <user>_<session>_<object>.json and splits the name at the first two '_'
    for name, value in (("user", user), ("session", session)):
        if "_" in value or not value:
            raise InvalidValueError(
                f"{path}: copick {name} {value!r} must be non-empty without '_' (copick's file name "
                f"<user>_<session>_<object>.json is split at the first two underscores)"
            )
    p = Path(path)
    spacing = float(poses.attrs["pixel_spacing"])
    ids = (
        np.unique(np.asarray(poses["experiment_id"].values).astype(str))
        if "experiment_id" in poses.coords
        else [poses.attrs.get("experiment_id", p.parent.parent.name)]
    )
    if len(ids) != 1:
        raise InvalidValueError(f"{p}: a copick picks file holds one run, found experiments {list(ids)[:5]}")
    position = np.asarray(poses["position"].values, dtype=np.float64) * spacing
    shift = np.asarray(poses["shift"].values, dtype=np.float64) * spacing
    rotation = (
        Rotation.from_quat(np.asarray(poses["orientation"].values)).as_matrix()
        if poses.sizes["particle"]
        else np.zeros((0, 3, 3))
    )
    # score and instance_id are optional in copick: written when the set has them, never invented
    score = np.asarray(poses["score"].values, dtype=np.float64) if "score" in poses else None
    instance = np.asarray(poses["instance_id"].values) if "instance_id" in poses else None
    points = []
    for i in range(len(position)):
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = rotation[i], shift[i]
        point: dict[str, Any] = {
            "location": dict(zip("xyz", position[i].tolist(), strict=True)),
            "transformation_": matrix.tolist(),
        }
        if instance is not None:
            point["instance_id"] = int(instance[i])
        if score is not None:
            point["score"] = None if np.isnan(score[i]) else float(score[i])
        points.append(point)
    document = {
        "pickable_object_name": object,
        "user_id": user,
        "session_id": session,
        "run_name": str(ids[0]),
        "voxel_spacing": None,
        "unit": "angstrom",
        "points": points,
        "trust_orientation": True,
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return p
