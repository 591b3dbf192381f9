"""RELION 5 2D subtilt stacks: the folder ``relion_tomo_subtomo --stack2d`` writes, and a zarr twin.

:func:`write_relion_subtilts` writes what RELION 5's ``SubtomoProgram`` writes
(``src/jaz/tomography/programs/subtomo.cpp``, ``writeParticleSet`` and
``processTomograms``; read at commit 73f0a3c), from the lazy output of
:func:`cryoxr.extract_subtilts` with ``mode="relion"``:

- ``Subtomograms/<tomo>/<name>_stack2d.mrcs`` per particle (``<name>`` is
  ``rlnTomoParticleName``; when that name already holds a ``/``, as RELION's own
  ``TS_01/12`` do, the file is ``Subtomograms/<name>_stack2d.mrcs``): the particle's
  *visible* tilts only, in tilt order, float32 (mode 2) or float16 (mode 12), pixel size
  the binned one;
- ``particles.star`` (``# version 50001``): a ``data_general`` block with
  ``rlnTomoSubTomosAre2DStacks 1``; the optics block with ``rlnCtfDataAreCtfPremultiplied``,
  ``rlnImageDimensionality 2``, ``rlnTomoSubtomogramBinning``, ``rlnImagePixelSize`` (binned)
  and ``rlnImageSize`` (the crop size); the particles with their origins folded into
  ``rlnCenteredCoordinateX/Y/ZAngst`` (origins written as 0, RELION's default
  ``apply_offsets``), ``rlnImageName`` (the stack's path as RELION writes it: the output
  folder as given, then ``Subtomograms/...``), ``rlnTomoVisibleFrames`` (``[1,1,0,...]``,
  one flag per tilt of the tilt series); ``rlnCoordinateX/Y/Z`` and ``rlnCtfImage`` are
  dropped. Particles with fewer than ``min_frames`` visible tilts are left out, as RELION
  does. Every other column is kept;
- ``optimisation_set.star``: ``rlnTomoParticlesFile`` and ``rlnTomoTomogramsFile``.

Where a particle has no ``rlnTomoParticleName`` (a set not read from RELION 5), it is named
``<tomo>/<k>``, ``k`` counting the tomogram's particles from 1, which is how RELION 5's
own pickers name them.

The stacks are streamed. Stacks straight from :func:`cryoxr.extract_subtilts` are cut
again one task per block of particles over all tilts (:func:`cryoxr.subtilt_graph.subtilt_blocks`),
and the task that cut a block writes each of its particles' files in one system call, header
(with its statistics) and frames together, so the threads cut and write at once. Any other
stacks are written tilt by tilt: each task writes its block of particles' frames of one tilt
into their files at their own offsets, and the header statistics are summed on the way. Both
write the same bytes. The folder is written under a temporary name and renamed when complete
(:mod:`cryoxr.io._atomic`): one rename, whatever the number of files.
:func:`write_subtilts_zarr` stores the whole ``(particle, image, y, x)`` array with its
``visible`` mask and attrs, streamed, for Python users.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.io._atomic import atomic_path
from cryoxr.io.mrc.header import HEADER_BYTES, HEADER_DTYPE, _build_header
from cryoxr.io.relion._common import TomogramsInput, _block_to_json, relion_tomograms_table
from cryoxr.io.relion.particles import write_relion_particles
from cryoxr.io.star import StarBlock, write_star
from cryoxr.poseset import validate_poseset
from cryoxr.subtilt_graph import subtilt_blocks

__all__ = ["write_relion_subtilts", "write_subtilts_zarr"]

VERSION_LINE = 50001
#: particle columns RELION's subtomo deactivates in its output
DROPPED_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnCtfImage")
_STAT_FIELDS = ("dmin", "dmax", "dmean", "rms")
_NAME = re.compile(r"^[^\s\"'#]+$")
ZARR_FORMAT = 2  # string coordinates (experiment ids): see cryoxr.cli.ZARR_FORMAT


def _check_stack(stacks: xr.DataArray, where: str) -> None:
    if not isinstance(stacks, xr.DataArray) or stacks.dims != ("particle", "image", "y", "x"):
        raise InvalidValueError(
            f"{where}: expected the output of extract_subtilts, found {getattr(stacks, 'dims', stacks)!r}"
        )
    if stacks.attrs.get("mode") != "relion" or "visible" not in stacks.coords:
        raise InvalidValueError(
            f"{where}: the stacks must come from extract_subtilts(..., mode='relion') (with its 'visible' coordinate)"
        )


def _experiment_ids(poses: xr.Dataset) -> np.ndarray:
    n = poses.sizes["particle"]
    if "experiment_id" in poses.coords:
        return np.asarray(poses.coords["experiment_id"].values).astype(str)
    return np.full(n, str(poses.attrs["experiment_id"]))


def _particle_names(poses: xr.Dataset, ids: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """``rlnTomoParticleName`` per particle (given, or ``tomo/k``), and whether it was generated."""
    if "rlnTomoParticleName" in poses.data_vars:
        names = np.asarray(poses["rlnTomoParticleName"].values, dtype=object).astype(str)  # StringDType too
        generated = False
    else:
        counter: dict[str, int] = {}
        out = []
        for eid in ids:
            counter[eid] = counter.get(eid, 0) + 1
            out.append(f"{eid}/{counter[eid]}")
        names, generated = np.asarray(out, dtype=str), True
    for name in names:
        parts = PurePosixPath(name).parts
        if not _NAME.match(name) or name.startswith("/") or ".." in parts or "\\" in name:
            raise InvalidValueError(
                f"{where}: particle name {name!r} cannot name a file inside the output folder (no blanks, "
                "quotes, '..' or leading '/')"
            )
    if len(set(names.tolist())) != len(names):
        raise InvalidValueError(f"{where}: particle names (rlnTomoParticleName) must be unique")
    return names, generated


def _stack_files(names: np.ndarray, ids: np.ndarray) -> list[str]:
    """Paths inside the output folder, as RELION's ``getOutputFilename``."""
    per_tomogram = len(names) > 0 and "/" not in names[0]
    if per_tomogram:
        return [f"Subtomograms/{t}/{n}_stack2d.mrcs" for t, n in zip(ids, names, strict=True)]
    return [f"Subtomograms/{n}_stack2d.mrcs" for n in names]


def _header_bytes(frames: int, size: int, pixel_size: float, mode: int) -> bytes:
    stub = xr.DataArray(np.empty((0, 0, 0)), dims=("image", "y", "x"), attrs={"pixel_spacing": pixel_size})
    return _build_header(stub, mode, (frames, size, size), b"").tobytes()


def _write_block(
    block: np.ndarray, files: np.ndarray, slots: np.ndarray, folder: str, frame_bytes: int, file_dtype: str
) -> np.ndarray:
    """Write each particle's frame of one tilt into its file; (n, 1, 4) min, max, sum, sum of squares."""
    stats = np.zeros((len(block), 1, 4))
    stats[:, :, 0], stats[:, :, 1] = np.inf, -np.inf
    values = np.asarray(block[:, 0], dtype=file_dtype)
    for i in np.nonzero(slots[:, 0] >= 0)[0]:
        frame = values[i]
        fd = os.open(os.path.join(folder, str(files[i])), os.O_WRONLY)
        try:
            os.pwrite(fd, frame.tobytes(), HEADER_BYTES + int(slots[i, 0]) * frame_bytes)
        finally:
            os.close(fd)
        wide = frame.astype(np.float64)
        stats[i, 0] = wide.min(), wide.max(), wide.sum(), np.square(wide).sum()
    return stats


def _statistics(frames: np.ndarray) -> tuple[float, float, float, float]:
    """dmin, dmax, dmean, rms of (k, size, size) frames, as mrcfile computes them (float64
    sums of each frame, then over frames)."""
    wide = frames.reshape(len(frames), -1).astype(np.float64)
    n = wide.size
    mean = float(wide.sum(axis=1).sum()) / n
    squares = float(np.square(wide).sum(axis=1).sum())
    rms = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
    return float(wide.min()), float(wide.max()), mean, rms


def _stat_offsets() -> dict[str, int]:
    fields: Mapping[str, Any] = HEADER_DTYPE.fields or {}
    return {field: int(fields[field][1]) for field in _STAT_FIELDS}


def _write_particles(
    block: np.ndarray,
    files: np.ndarray,
    visible: np.ndarray,
    keep: np.ndarray,
    folder: str,
    file_dtype: str,
    pixel_size: float,
    mode: int,
) -> np.ndarray:
    """Write each kept particle's visible frames of a (n, T, size, size) block as its whole
    file, one ``writev`` of header and frames (new files only); (n,) frames written."""
    size = int(block.shape[-1])
    offsets = _stat_offsets()
    written = np.zeros(len(block), dtype=np.int64)
    for i in np.nonzero(keep)[0]:
        frames = np.ascontiguousarray(block[i][visible[i]], dtype=file_dtype)
        header = bytearray(_header_bytes(len(frames), size, pixel_size, mode))
        for field, value in zip(_STAT_FIELDS, _statistics(frames), strict=True):
            header[offsets[field] : offsets[field] + 4] = np.float32(value).astype("<f4").tobytes()
        payload: list[bytes | memoryview] = [bytes(header), frames.data.cast("B")]
        fd = os.open(os.path.join(folder, str(files[i])), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            done = os.writev(fd, payload)
            if done < HEADER_BYTES + frames.nbytes:  # a short write: the rest, as plain writes
                rest = b"".join(bytes(p) for p in payload)[done:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        finally:
            os.close(fd)
        written[i] = len(frames)
    return written


def _finish_headers(folder: Path, files: list[str], stats: np.ndarray, counts: np.ndarray, size: int) -> None:
    """Write dmin, dmax, dmean, rms (as mrcfile computes them) into each file's header."""
    offsets = _stat_offsets()
    for name, (low, high, total, squares), frames in zip(files, stats, counts, strict=True):
        n = frames * size * size
        mean = total / n
        rms = np.sqrt(max(squares / n - mean * mean, 0.0))
        fd = os.open(folder / name, os.O_WRONLY)
        try:
            for field, value in zip(_STAT_FIELDS, (low, high, mean, rms), strict=True):
                os.pwrite(fd, np.float32(value).astype("<f4").tobytes(), offsets[field])
        finally:
            os.close(fd)


def _optics_block(poses: xr.Dataset, tomograms: pd.DataFrame, stacks: xr.DataArray) -> StarBlock:
    """The particle set's optics block with the values RELION's subtomo sets for 2D stacks."""
    relion = poses.attrs.get("relion") or {}
    blocks = [b for b in relion.get("blocks") or [] if b is not None and b["name"] == "optics"]
    if blocks:
        table = pd.DataFrame(dict(blocks[0]["columns"]))
    else:
        table = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]})
        for label in ("rlnSphericalAberration", "rlnVoltage", "rlnAmplitudeContrast"):
            if label in tomograms.columns:
                table[label] = tomograms[label].iloc[0]
    table["rlnTomoTiltSeriesPixelSize"] = float(stacks.attrs["tilt_series_pixel_spacing"])
    table["rlnCtfDataAreCtfPremultiplied"] = int(stacks.attrs["ctf_premultiplied"])
    table["rlnImageDimensionality"] = 2
    table["rlnTomoSubtomogramBinning"] = float(stacks.attrs["bin"])
    table["rlnImagePixelSize"] = float(stacks.attrs["pixel_spacing"])
    table["rlnImageSize"] = int(stacks.attrs["crop_size"])
    return StarBlock("optics", table, True, VERSION_LINE)


def write_relion_subtilts(
    stacks: xr.DataArray,
    poses: xr.Dataset,
    out_dir: str | os.PathLike[str],
    *,
    tomograms: TomogramsInput,
    tomograms_file: str | os.PathLike[str] | None = None,
    min_frames: int = 1,
    overwrite: bool = False,
    compute: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Write a RELION 5 2D-stack particle set (``relion_tomo_subtomo --stack2d`` output).

    Parameters
    ----------
    stacks
        :func:`cryoxr.extract_subtilts` output with ``mode="relion"`` (lazy).
    poses
        The PoseSet the stacks were extracted for (same particles, same order).
    out_dir
        Output folder (created with its parents; refused if it exists unless ``overwrite``). As in RELION,
        ``rlnImageName`` starts with this path as given (run from the project folder with
        a relative ``out_dir`` such as ``Extract/job010``).
    tomograms
        ``tomograms.star`` (path), its table or a ProjectionModel: the tomogram sizes for
        the centred coordinates, and optics values for a set without an optics block.
    tomograms_file
        Name written as ``rlnTomoTomogramsFile`` in ``optimisation_set.star``; default
        ``tomograms`` when it is a path.
    min_frames
        Particles with fewer visible tilts are left out (RELION ``--min_frames``).
    overwrite
        Replace an existing ``out_dir``.
    compute
        Function that computes dask objects and returns their values (default
        :func:`dask.compute`; the CLI passes one that shows progress on a cluster).

    Returns
    -------
    dict
        ``particles`` (written), ``removed`` (fewer than ``min_frames`` visible tilts),
        ``particles_star`` and ``optimisation_set`` (paths).

    Raises
    ------
    InvalidValueError
        Stacks not from the RELION mode, poses that do not match them, particle names
        that cannot name files.
    FileExistsNoOverwriteError
        ``out_dir`` exists and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, mrcfile, cryoxr
    >>> model = cryoxr.make_projection_model(experiment_id="TS_01", pixel_spacing=2.0,
    ...     tomogram_size_x=64, tomogram_size_y=64, tomogram_size_z=32,
    ...     tilt_image_center_x=32.0, tilt_image_center_y=32.0, pre_exposure=0.0)
    >>> ts = cryoxr.Image.from_array(np.random.default_rng(0).normal(size=(1, 64, 64)).astype(np.float32),
    ...                              pixel_spacing=2.0, experiment_id="TS_01", stack=True)
    >>> poses = cryoxr.make_poseset([[30.0, 33.0, 16.0]], experiment_id="TS_01", pixel_spacing=2.0)
    >>> stacks = cryoxr.extract_subtilts(ts, cryoxr.project(poses, model), box_size=16, mode="relion",
    ...                                  projection_model=model, ctf=False)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "job"
    >>> report = write_relion_subtilts(stacks, poses, out, tomograms=model)
    >>> report["particles"], sorted(p.name for p in out.iterdir())
    (1, ['Subtomograms', 'optimisation_set.star', 'particles.star'])
    >>> with mrcfile.open(out / "Subtomograms" / "TS_01" / "1_stack2d.mrcs") as m:
    ...     m.data.shape, float(m.voxel_size.x)
    ((16, 16), 2.0)
    """
    where = f"write_relion_subtilts: {out_dir}"
    _check_stack(stacks, where)
    validate_poseset(poses, check_values=False)
    n = stacks.sizes["particle"]
    if poses.sizes["particle"] != n:
        raise InvalidValueError(f"{where}: {poses.sizes['particle']} poses for {n} particle stacks")
    ids = _experiment_ids(poses)
    if "experiment_id" in stacks.coords and not np.array_equal(
        np.asarray(stacks.coords["experiment_id"].values).astype(str), ids
    ):
        raise InvalidValueError(
            f"{where}: the poses' experiment ids differ from the stacks' (same particles, same order?)"
        )
    if int(min_frames) < 1:
        raise InvalidValueError(f"{where}: min_frames must be >= 1, found {min_frames!r}")
    compute = compute or dask.compute
    names, generated = _particle_names(poses, ids, where)
    (visible,) = compute(stacks.coords["visible"].data)
    visible = np.asarray(visible, dtype=bool)
    counts = visible.sum(axis=1)
    kept = np.nonzero(counts >= int(min_frames))[0]
    slots = np.where(visible, np.cumsum(visible, axis=1) - 1, -1)
    slots[counts < int(min_frames)] = -1
    files = _stack_files(names, ids)
    file_dtype = np.dtype(stacks.dtype).newbyteorder("<")
    mode = 12 if file_dtype.itemsize == 2 else 2
    px = float(stacks.attrs["pixel_spacing"])
    table = relion_tomograms_table(tomograms)
    if tomograms_file is None and isinstance(tomograms, (str, os.PathLike)):
        tomograms_file = tomograms
    prefix = str(out_dir).rstrip("/")
    if not Path(out_dir).exists() or overwrite:
        Path(out_dir).parent.mkdir(parents=True, exist_ok=True)  # as RELION makes its job folders
    with atomic_path(out_dir, overwrite=overwrite, directory=True) as tmp:
        tmp.mkdir()
        for folder in sorted({str(PurePosixPath(files[i]).parent) for i in kept}):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        keep = counts >= int(min_frames)
        blocks = subtilt_blocks(stacks.data)
        if blocks is not None:  # cut and write each particle's whole file in the same task
            _write_whole(blocks, files, visible, keep, str(tmp.resolve()), file_dtype.str, px, mode, compute)
        else:
            _write_by_tilt(stacks, files, slots, keep, counts, tmp, px, mode, compute)
        sub = poses.isel(particle=kept)
        sub = sub.assign(position=sub["position"] + sub["shift"], shift=xr.zeros_like(sub["shift"]))
        sub = sub.drop_vars([c for c in DROPPED_COLUMNS if c in sub.data_vars])
        flags = np.array(
            ["[" + ",".join(map(str, row.astype(int).tolist())) + "]" for row in visible[kept]], dtype=str
        )
        extra = {
            "rlnImageName": ("particle", np.array([f"{prefix}/{files[i]}" for i in kept], dtype=str)),
            "rlnTomoVisibleFrames": ("particle", flags),
        }
        if generated:
            extra["rlnTomoParticleName"] = ("particle", names[kept])
        if "rlnOpticsGroup" not in sub.data_vars:
            extra["rlnOpticsGroup"] = ("particle", np.ones(len(kept), dtype=np.int64))
        sub = sub.assign(extra)
        relion = dict(poses.attrs.get("relion") or {})
        general = StarBlock("general", pd.DataFrame({"rlnTomoSubTomosAre2DStacks": [1]}), False, VERSION_LINE)
        optics = _optics_block(poses, table, stacks)
        relion.update(
            blocks=[_block_to_json(general), _block_to_json(optics), None],
            version=VERSION_LINE,
            pixel_size_label="rlnTomoTiltSeriesPixelSize",
        )
        relion.pop("layout", None)
        sub.attrs = {**poses.attrs, "relion": relion}
        write_relion_particles(sub, tmp / "particles.star", version=5, tomograms=table)
        option_set = {"rlnTomoParticlesFile": [f"{prefix}/particles.star"]}
        if tomograms_file is not None:
            option_set["rlnTomoTomogramsFile"] = [str(tomograms_file)]
        write_star(
            {"": StarBlock("", pd.DataFrame(option_set), False, VERSION_LINE)}, tmp / "optimisation_set.star"
        )
    out = Path(out_dir)
    return {
        "particles": len(kept),
        "removed": int(n - len(kept)),
        "particles_star": out / "particles.star",
        "optimisation_set": out / "optimisation_set.star",
    }


def _write_whole(
    blocks: da.Array,
    files: list[str],
    visible: np.ndarray,
    keep: np.ndarray,
    folder: str,
    file_dtype: str,
    px: float,
    mode: int,
    compute: Callable[..., Any],
) -> None:
    """Write every kept particle's file from stacks chunked one block of particles x all tilts."""
    pchunks = blocks.chunks[0]
    written = da.blockwise(
        _write_particles, "p", blocks, "ptyx",
        da.from_array(np.asarray(files, dtype=object), chunks=(pchunks,)), "p",
        da.from_array(visible, chunks=(pchunks, -1)), "pt",
        da.from_array(keep, chunks=(pchunks,)), "p",
        folder, None, file_dtype, None, px, None, mode, None,
        concatenate=True, dtype=np.int64, meta=np.empty((0,), np.int64),
    )  # fmt: skip
    compute(written)


def _write_by_tilt(
    stacks: xr.DataArray,
    files: list[str],
    slots: np.ndarray,
    keep: np.ndarray,
    counts: np.ndarray,
    tmp: Path,
    px: float,
    mode: int,
    compute: Callable[..., Any],
) -> None:
    """Write the kept particles' files tilt by tilt (any stacks): sized files first, then each
    frame at its offset, then the header statistics."""
    size = int(stacks.sizes["x"])
    file_dtype = np.dtype(stacks.dtype).newbyteorder("<")
    frame_bytes = size * size * file_dtype.itemsize
    kept = np.nonzero(keep)[0]
    for i in kept:
        with open(tmp / files[i], "wb") as handle:
            handle.write(_header_bytes(int(counts[i]), size, px, mode))
            handle.truncate(HEADER_BYTES + int(counts[i]) * frame_bytes)
    pchunks = stacks.data.chunks[0]
    file_array = da.from_array(np.asarray(files, dtype=object), chunks=(pchunks,))
    slot_array = da.from_array(slots, chunks=(pchunks, stacks.data.chunks[1]))
    stats = da.blockwise(
        _write_block, "pts", stacks.data, "ptyx", file_array, "p", slot_array, "pt",
        str(tmp.resolve()), None, frame_bytes, None, file_dtype.str, None,
        new_axes={"s": 4}, concatenate=True, dtype=np.float64, meta=np.empty((0, 0, 0)),
    )  # fmt: skip
    summary = da.stack(
        [
            stats[..., 0].min(axis=1),
            stats[..., 1].max(axis=1),
            stats[..., 2].sum(axis=1),
            stats[..., 3].sum(axis=1),
        ],
        axis=1,
    )
    (totals,) = compute(summary)
    _finish_headers(tmp, [files[i] for i in kept], np.asarray(totals)[kept], counts[kept], size)


def write_subtilts_zarr(
    stacks: xr.DataArray, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Store the stacks of :func:`cryoxr.extract_subtilts` in a zarr store, streamed.

    The ``(particle, image, y, x)`` array keeps its chunks; ``visible`` (RELION mode),
    ``experiment_id`` and the attrs come along. Read back with ``xarray.open_zarr``.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, xarray as xr, cryoxr
    >>> ts = cryoxr.Image.from_array(np.ones((1, 8, 8), np.float32), pixel_spacing=1.0,
    ...                              experiment_id="t", stack=True)
    >>> s = cryoxr.extract_subtilts(ts, xr.DataArray([[[3.0, 4.0]]], dims=("particle", "image", "axis")),
    ...                             box_size=4)
    >>> p = write_subtilts_zarr(s, pathlib.Path(tempfile.mkdtemp()) / "s.zarr")
    >>> xr.open_zarr(p)["subtilts"].shape
    (1, 1, 4, 4)
    """
    if not isinstance(stacks, xr.DataArray) or stacks.dims != ("particle", "image", "y", "x"):
        raise InvalidValueError(f"write_subtilts_zarr: {path}: expected the output of extract_subtilts")
    ds = stacks.rename("subtilts").to_dataset()
    ds.attrs = {k: _plain(v) for k, v in stacks.attrs.items()}
    ds["subtilts"].attrs = {}
    with atomic_path(path, overwrite=overwrite, directory=True) as tmp:
        ds.to_zarr(tmp, mode="w-", zarr_format=ZARR_FORMAT)
    return Path(path)


def _plain(value: Any) -> Any:
    """An attr value JSON can hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
