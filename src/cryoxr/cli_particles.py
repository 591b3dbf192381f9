"""The ``cryoxr`` commands that work on particles in images: ``average``, ``extract``, ``reconstruct``.

Like every command, each only parses what ``cli.build_parser`` gave it and calls public
functions; heavy modules are imported inside the command, after parsing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["cmd_average", "cmd_extract", "cmd_reconstruct"]


def _tomogram_source(path: Path) -> Any:
    """``--tomograms``: one tomogram, or a function opening the tomogram of an experiment_id."""
    from cryoxr.errors import CryoxrFileNotFoundError, FormatError
    from cryoxr.io import open_image
    from cryoxr.io.images import IMAGE_READERS
    from cryoxr.io.star import read_star

    if path.is_dir():

        def in_folder(eid: str) -> Any:
            found = [
                p
                for p in sorted(path.iterdir())
                if p.name.lower() in {eid.lower() + s for s in IMAGE_READERS}
            ]
            if len(found) != 1:
                what = (
                    "no tomogram"
                    if not found
                    else f"{len(found)} tomograms ({', '.join(p.name for p in found)})"
                )
                raise CryoxrFileNotFoundError(
                    f"{path}: {what} for experiment_id {eid!r}; expected one file {eid}<suffix>, "
                    f"suffix one of {', '.join(sorted(IMAGE_READERS))}"
                )
            return open_image(found[0], experiment_id=eid)

        return in_folder
    if not path.exists():
        raise CryoxrFileNotFoundError(f"{path}: no such tomogram, folder or map file")
    if any(path.name.lower().endswith(s) for s in IMAGE_READERS):
        return open_image(path)
    paths: dict[str, Path] = {}
    if path.suffix.lower() == ".star":
        for block in read_star(path).values():
            table = block.table
            if {"rlnTomoName", "rlnTomoReconstructedTomogram"} <= set(table.columns):
                names, files = (
                    table["rlnTomoName"].astype(str),
                    table["rlnTomoReconstructedTomogram"].astype(str),
                )
                paths = {name: Path(file) for name, file in zip(names, files, strict=True)}
        if not paths:
            raise FormatError(f"{path}: no block with columns rlnTomoName and rlnTomoReconstructedTomogram")
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2:
                raise FormatError(
                    f"{path}, line {number}: expected 'experiment_id path', found {line.strip()!r}"
                )
            paths[fields[0]] = Path(fields[1])
    folder = path.parent
    return {
        eid: open_image(p if p.is_absolute() else folder / p, experiment_id=eid) for eid, p in paths.items()
    }


def cmd_average(args: argparse.Namespace) -> int:
    import dask

    from cryoxr.average import average_subtomograms
    from cryoxr.image import Tomogram
    from cryoxr.io import read_alignment, read_poses, write_mrc
    from cryoxr.io._atomic import check_overwrite
    from cryoxr.progress import scheduler as _scheduler
    from cryoxr.resolution import fsc

    halves = [args.out.with_name(f"{args.out.stem}_half{i}{args.out.suffix}") for i in (1, 2)]
    for out in [args.out, *(halves if args.half_maps else []), *([args.figure] if args.figure else [])]:
        check_overwrite(out, args.overwrite)  # before the work, not after it
    poses = read_poses(args.particles)
    wedge: Any = read_alignment(args.alignment) if args.alignment else args.tilt_range
    maps = average_subtomograms(
        _tomogram_source(args.tomograms),
        poses,
        box_size=args.box_size,
        rotate=not args.no_rotate,
        order=args.order,
        missing_wedge=tuple(wedge) if isinstance(wedge, list) else wedge,
        half_maps=True,
        edge=args.edge,
    )
    start = time.perf_counter()
    with _scheduler(args.scheduler, not args.no_progress) as client:
        if client is not None:
            from distributed import progress

            futures = client.compute([m.data.data for m in maps])
            if not args.no_progress:
                with contextlib.redirect_stdout(sys.stderr):  # results on stdout, progress on stderr
                    progress(futures)
            arrays = client.gather(futures)
        else:
            arrays = dask.compute(*(m.data.data for m in maps))
    average, half1, half2 = (Tomogram(m.data.copy(data=a)) for m, a in zip(maps, arrays, strict=True))
    elapsed = time.perf_counter() - start
    write_mrc(average, args.out, overwrite=args.overwrite)
    written = [args.out]
    if args.half_maps:
        for half, out in zip((half1, half2), halves, strict=True):
            write_mrc(half, out, overwrite=args.overwrite)
        written += halves
    curve = fsc(half1, half2)
    attrs = average.data.attrs
    print(
        f"averaged {attrs['n_particles']:,} particles ({attrs['n_at_edge']:,} with boxes crossing the edge, "
        f"edge={args.edge}) in {elapsed:.1f} s -> {', '.join(map(str, written))}"
    )
    crosses = "" if curve.attrs["crosses_0143"] else " (Nyquist: the FSC never falls below 0.143)"
    print(f"half-map FSC 0.143 resolution: {curve.attrs['resolution_0143']:.1f} Å{crosses}")
    if args.figure:
        from cryoxr.plot import plot_average

        fig = plot_average(average, curve)
        fig.savefig(args.figure, dpi=120)
        print(f"figure -> {args.figure}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    import numpy as np

    from cryoxr.defocus import particle_defocus
    from cryoxr.errors import FileExistsNoOverwriteError
    from cryoxr.extraction import extract_subtilts
    from cryoxr.io.relion import (
        open_relion_tilt_series,
        read_relion_particles,
        read_relion_tilt_series,
        with_image_geometry,
        write_relion_subtilts,
        write_subtilts_zarr,
    )
    from cryoxr.poseset import experiment_ids
    from cryoxr.progress import scheduler as _scheduler
    from cryoxr.projection import project
    from cryoxr.projection_model import PMDL

    for path in (args.out, args.zarr):
        if path is not None and path.exists() and not args.overwrite:  # before any reading
            raise FileExistsNoOverwriteError(
                f"{path}: exists; pass --overwrite to replace it (nothing was written)"
            )
    model = read_relion_tilt_series(args.tomograms)
    # chunks near one task's particles: positions and defocus are made chunk by chunk as the
    # tasks need them (one chunk of all particles would be held until every tilt is cut)
    poses = read_relion_particles(args.particles, tomograms=args.tomograms)
    poses = poses.chunk({"particle": args.particles_per_task or 1024})
    used = model[model[PMDL.EXPERIMENT_ID].astype(str).isin(experiment_ids(poses))]
    used.attrs = model.attrs
    series = open_relion_tilt_series(used, tilt_series_dir=args.tilt_series_dir)
    used = with_image_geometry(used, series)  # tilt series the STAR reader could not size (OME-Zarr)
    ctf = not args.no_ctf
    stacks = extract_subtilts(
        series,
        project(poses, used),
        box_size=args.box_size,
        mode="relion",
        projection_model=used,
        defocus=particle_defocus(poses, used) if ctf else None,
        bin=args.bin,
        crop_size=args.crop_size,
        ctf=ctf,
        dose_weight=ctf and not args.no_dose_weight,
        invert_contrast=not args.no_invert_contrast,
        circle_crop=not args.no_circle_crop,
        max_dose=args.max_dose,
        dtype=np.float16 if args.float16 else np.float32,
        particles_per_task=args.particles_per_task,
    )
    start = time.perf_counter()
    with _scheduler(args.scheduler, not args.no_progress) as client:
        compute = None
        if client is not None:

            def compute(*objects: Any) -> list[Any]:
                futures = client.compute(list(objects))
                if not args.no_progress:
                    from distributed import progress

                    with contextlib.redirect_stdout(sys.stderr):
                        progress(futures)
                return list(client.gather(futures))

        report = write_relion_subtilts(
            stacks,
            poses,
            args.out,
            tomograms=args.tomograms,
            min_frames=args.min_frames,
            overwrite=args.overwrite,
            compute=compute,
        )
        if args.zarr is not None:
            write_subtilts_zarr(stacks, args.zarr, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    t = stacks.sizes["image"]
    removed = (
        f" ({report['removed']:,} not visible in --min-frames tilts: left out)" if report["removed"] else ""
    )
    print(
        f"extracted {report['particles']:,} particles x {t} tilts in {elapsed:.1f} s -> {args.out}{removed}"
    )
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import dask

    from cryoxr.defocus import particle_defocus
    from cryoxr.errors import FileExistsNoOverwriteError
    from cryoxr.extraction import extract_subtilts
    from cryoxr.image import Tomogram
    from cryoxr.io import write_mrc
    from cryoxr.io.relion import open_relion_tilt_series, read_relion_particles, read_relion_tilt_series
    from cryoxr.poseset import experiment_ids
    from cryoxr.progress import scheduler as _scheduler
    from cryoxr.projection import project
    from cryoxr.projection_model import PMDL
    from cryoxr.reconstruction import ctf_weights, reconstruct_particle, task_particles

    outputs = {
        "merged": args.out,
        **{
            h: args.out.with_name(f"{args.out.stem}_{h}{args.out.suffix or '.mrc'}")
            for h in ("half1", "half2")
        },
    }
    for path in outputs.values():
        if path.exists() and not args.overwrite:  # before any reading
            raise FileExistsNoOverwriteError(
                f"{path}: exists; pass --overwrite to replace it (nothing was written)"
            )
    model = read_relion_tilt_series(args.tomograms)
    poses = read_relion_particles(args.particles, tomograms=args.tomograms)
    used = model[model[PMDL.EXPERIMENT_ID].astype(str).isin(experiment_ids(poses))]
    used.attrs = model.attrs
    ctf = not args.no_ctf
    n_tilts = int(used.groupby(PMDL.EXPERIMENT_ID).size().max())
    # one chunking for every step (positions, cutting, back-projection): dask then finishes
    # block after block and memory does not grow with the particles
    per_task = args.particles_per_task or task_particles(n_tilts, args.box_size)
    defocus = particle_defocus(poses, used, chunks=per_task) if ctf else None
    # RELION's reconstruct_particle cuts its own subtilts: CTF- and dose-premultiplied,
    # contrast flipped, circle-cropped
    subtilts = extract_subtilts(
        open_relion_tilt_series(used, tilt_series_dir=args.tilt_series_dir),
        project(poses, used, chunks=per_task),
        box_size=args.box_size,
        mode="relion",
        projection_model=used,
        defocus=defocus,
        bin=args.bin,
        ctf=ctf,
        dose_weight=ctf,
        max_dose=args.max_dose,
        particles_per_task=per_task,
    )
    maps = reconstruct_particle(
        subtilts,
        poses,
        used,
        ctf_weights=ctf_weights(subtilts, poses, used, defocus=defocus) if ctf else None,
        symmetry=args.symmetry,
        snr=args.snr,
        taper=args.taper,
    )
    start = time.perf_counter()
    with _scheduler(args.scheduler, not args.no_progress) as client:
        if client is not None:
            future = client.compute(maps)
            if not args.no_progress:
                from distributed import progress

                with contextlib.redirect_stdout(sys.stderr):  # results on stdout, progress on stderr
                    progress(future)
            maps = future.result()
        else:
            (maps,) = dask.compute(maps)
    args.out.parent.mkdir(parents=True, exist_ok=True)  # a RELION job folder, as RELION makes it
    for name, path in outputs.items():
        write_mrc(Tomogram(maps[name]), path, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    print(
        f"reconstructed {poses.sizes['particle']:,} particles x {subtilts.sizes['image']} tilts "
        f"({args.symmetry.upper()}, box {args.box_size}, {maps.attrs['pixel_spacing']:g} Å/px) in {elapsed:.1f} s "
        f"-> {', '.join(str(p) for p in outputs.values())}"
    )
    return 0
