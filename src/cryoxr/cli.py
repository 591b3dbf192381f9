"""The ``cryoxr`` command: inspect, convert, project, and the demo.

Every sub-command only parses arguments and calls public functions. Errors reach the
user as one line, ``cryoxr: error: <file>: <what>``, with exit code 2, in the command's
own terms (``--overwrite``, not ``overwrite=True``: see :data:`CLI_TERMS`); ``--debug``
shows the traceback. Results go to stdout, progress to stderr.

Parsing comes before any heavy import (dask, xarray, zarr, scipy), so ``--help`` and a
mistyped flag answer at once; each command imports what it needs when it runs.

Examples
--------
>>> from cryoxr.cli import main
>>> main(["--version"])
cryoxr 0.1.0
0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryoxr.cli_particles import cmd_average, cmd_extract, cmd_reconstruct
from cryoxr.errors import CryoxrError

__all__ = ["CLI_TERMS", "build_parser", "main"]

#: how a library message's advice reads on the command line: Python argument -> flag
CLI_TERMS: dict[str, str] = {
    "pass overwrite=True (--overwrite)": "pass --overwrite",
    "pass overwrite=True": "pass --overwrite",
    "pass image_size=(nx, ny)": "pass --image-size X Y",
    "pass tomograms= (tomograms.star, its table or {name: (X, Y, Z)})": "pass --tomograms tomograms.star",
    "pass tomograms= or version=4": "pass --tomograms tomograms.star",
    "pass tomograms=": "pass --tomograms tomograms.star",
    "pass pixel_spacing= (Å)": "pass --pixel-spacing Å",
    "pass pixel_spacing= (Å per pixel of the tilt images)": "pass --pixel-spacing Å (Å per pixel of the tilt images)",
    "pass pixel_spacing=": "pass --pixel-spacing Å",
    "pixel_spacing= is only for": "--pixel-spacing is only for",
}


def in_cli_terms(message: str) -> str:
    """``message`` with the Python advice of :data:`CLI_TERMS` replaced by the command's flags.

    Examples
    --------
    >>> in_cli_terms("a.mrc: exists; pass overwrite=True to replace it")
    'a.mrc: exists; pass --overwrite to replace it'
    """
    for python, flag in CLI_TERMS.items():
        message = message.replace(python, flag)
    return message


def _count(text: str) -> int:
    """argparse type: a whole number >= 0 (``--particles``)."""
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {value}")
    return value


def _add_vector(parser: argparse.ArgumentParser, flag: str, kind: type, help_text: str) -> None:
    """A flag taking X Y (sizes, centres) or X Y Z (``--tomogram-size``)."""
    metavar = ("X", "Y", "Z") if flag == "--tomogram-size" else ("X", "Y")
    parser.add_argument(flag, nargs=len(metavar), type=kind, metavar=metavar, help=help_text)


def _add_tomograms_star(parser: argparse.ArgumentParser, purpose: str) -> None:
    """An optional ``--tomograms`` (RELION 5 tomograms.star) and what it serves."""
    parser.add_argument("--tomograms", type=Path, default=None, help=f"RELION 5 tomograms.star: {purpose}")


def _add_subtilt_options(parser: argparse.ArgumentParser) -> None:
    """The inputs and geometry ``extract`` and ``reconstruct`` share (RELION 5 terms)."""
    parser.add_argument("--particles", required=True, type=Path, help="RELION particles.star")
    parser.add_argument("--tomograms", required=True, type=Path, help="RELION 5 tomograms.star")
    parser.add_argument("--box-size", required=True, type=int, help="binned box size in pixels (RELION --b)")
    parser.add_argument("--bin", type=float, default=1.0, help="Fourier-crop binning factor (default 1)")
    parser.add_argument(
        "--max-dose", type=float, default=None, help="leave out tilts with more pre-exposure (e/Å²)"
    )
    parser.add_argument(
        "--tilt-series-dir",
        type=Path,
        default=None,
        help="take tilt images (or <name>.mrc/.zarr stacks) from here",
    )
    parser.add_argument("--particles-per-task", type=int, default=None, help="particles per dask task")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--scheduler``, ``--overwrite`` and ``--no-progress``: the same for every command that computes."""
    parser.add_argument(
        "--scheduler",
        default="threads",
        help="threads, processes, or a dask.distributed scheduler address (tcp://...)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")


def _angstrom(text: str) -> float:
    """argparse type: a pixel size in Å, finite and > 0 (``--pixel-spacing``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of Å, found {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a pixel size > 0 Å, found {text!r}")
    return value


#: help of ``--pixel-spacing`` (info, convert, project)
PIXEL_SPACING_HELP = (
    "Å per pixel, for files that store none (IMOD .xf, AreTomo .aln, Dynamo .tbl without apix)"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cryoxr`` command."""
    parser = argparse.ArgumentParser(
        prog="cryoxr",
        description="Cryo-ET tomograms, particle poses and tilt-series projection at HPC scale.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the end-to-end demo on built-in synthetic data")
    demo.add_argument(
        "--particles", type=_count, default=1_000_000, help="particles to simulate (default 1,000,000)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("cryoxr-demo"), help="output folder (default ./cryoxr-demo)"
    )
    demo.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-figure", action="store_true", help="skip the PNG figures")
    demo.add_argument("--no-progress", action="store_true", help="no progress on stderr")

    info = sub.add_parser("info", help="describe files cryoxr can read or has written")
    info.add_argument("paths", nargs="+", type=Path)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    _add_tomograms_star(info, "tomogram sizes for centred particle coordinates")
    info.add_argument("--pixel-spacing", type=_angstrom, metavar="Å", help=PIXEL_SPACING_HELP)

    convert = sub.add_parser("convert", help="convert images, poses or alignments between formats")
    convert.add_argument("src", type=Path)
    convert.add_argument("dst", type=Path)
    convert.add_argument(
        "--to", dest="to_format", default=None, help="output format (default: from DST's suffix)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    _add_tomograms_star(convert, "tomogram sizes for centred coordinates (read and write)")
    _add_vector(
        convert, "--image-size", int, "tilt-image size, for alignment formats that record it (AreTomo)"
    )
    convert.add_argument("--pixel-spacing", type=_angstrom, metavar="Å", help=PIXEL_SPACING_HELP)
    convert.add_argument("--no-progress", action="store_true")

    proj = sub.add_parser("project", help="project particles into every tilt image, streaming to zarr")
    proj.add_argument("--poses", required=True, type=Path, help="particles (STAR, tbl)")
    proj.add_argument("--alignment", required=True, type=Path, help="alignment (tomograms.star, xf, aln)")
    _add_vector(
        proj,
        "--tomogram-size",
        float,
        "tomogram size in pixels of the poses (default: from the alignment file)",
    )
    _add_vector(proj, "--image-size", int, "tilt-image size in pixels: adds the field-of-view mask")
    _add_vector(
        proj,
        "--tilt-image-center",
        float,
        "rotation centre in the tilt images (default: from the alignment, else size // 2)",
    )
    proj.add_argument(
        "--pixel-spacing", type=_angstrom, metavar="Å", help="Å per pixel of the tilt images (IMOD, AreTomo)"
    )
    proj.add_argument("--margin", type=float, default=0.0, help="field-of-view margin in pixels")
    proj.add_argument("--chunks", type=int, default=100_000, help="particles per chunk")
    proj.add_argument("--out", required=True, type=Path, help="output zarr store")
    _add_run_options(proj)

    avg = sub.add_parser(
        "average", help="extract particles from tomograms, rotate them to the reference frame and average"
    )
    avg.add_argument("--particles", required=True, type=Path, help="particles (STAR, tbl)")
    avg.add_argument(
        "--tomograms",
        required=True,
        type=Path,
        help="a folder of <experiment_id>.mrc/.rec/.zarr..., one tomogram file, a tomograms.star "
        "(rlnTomoName, rlnTomoReconstructedTomogram) or a text map of 'experiment_id path' lines",
    )
    avg.add_argument("--box-size", required=True, type=int, help="box edge in tomogram voxels")
    avg.add_argument("--out", required=True, type=Path, help="output MRC file of the average")
    avg.add_argument(
        "--order", type=int, choices=(1, 3), default=1, help="1 trilinear (default), 3 cubic spline"
    )
    avg.add_argument("--no-rotate", action="store_true", help="average unrotated boxes")
    avg.add_argument(
        "--edge",
        choices=("exclude", "include"),
        default="exclude",
        help="particles whose box crosses the tomogram edge: leave out (default) or average what is inside",
    )
    wedge = avg.add_mutually_exclusive_group()
    wedge.add_argument("--alignment", type=Path, help="weight by the missing wedge of this alignment's tilts")
    wedge.add_argument(
        "--tilt-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="weight by the missing wedge of this tilt range",
    )
    avg.add_argument("--half-maps", action="store_true", help="also write OUT_half1.mrc and OUT_half2.mrc")
    avg.add_argument("--figure", type=Path, help="PNG of the central slices and the half-map FSC")
    _add_run_options(avg)

    ext = sub.add_parser(
        "extract", help="RELION 5 2D subtilt stacks of every particle (relion_tomo_subtomo --stack2d)"
    )
    _add_subtilt_options(ext)
    ext.add_argument("--crop-size", type=int, default=None, help="output box size (default: --box-size)")
    ext.add_argument(
        "--no-ctf", action="store_true", help="no CTF premultiplication and no dose weights (as RELION)"
    )
    ext.add_argument("--no-dose-weight", action="store_true", help="no dose weights (CTF still applied)")
    ext.add_argument("--no-invert-contrast", action="store_true", help="keep particles dark (RELION --no_ic)")
    ext.add_argument("--no-circle-crop", action="store_true", help="no soft circular crop")
    ext.add_argument("--float16", action="store_true", help="write half-precision stacks (MRC mode 12)")
    ext.add_argument(
        "--min-frames", type=int, default=1, help="drop particles visible in fewer tilts (default 1)"
    )
    ext.add_argument("--zarr", type=Path, default=None, help="also store the stack array in this zarr store")
    ext.add_argument("--out", required=True, type=Path, help="output folder (RELION job folder)")
    _add_run_options(ext)

    rec = sub.add_parser(
        "reconstruct", help="the particle's map from its subtilts (relion_tomo_reconstruct_particle)"
    )
    _add_subtilt_options(rec)
    rec.add_argument("--symmetry", default="C1", help="point group: C1, C<n>, D<n>, T, O, I (default C1)")
    rec.add_argument("--no-ctf", action="store_true", help="no CTF premultiplication nor CTF² weights")
    rec.add_argument("--snr", type=float, default=None, help="Wiener division with this SNR (RELION --SNR)")
    rec.add_argument("--taper", type=float, default=10.0, help="soft mask edge in voxels (default 10)")
    rec.add_argument(
        "--out", required=True, type=Path, help="merged map (MRC); halves beside: <stem>_half1.mrc"
    )
    _add_run_options(rec)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from cryoxr.demo import run_demo

    figure = not args.no_figure
    if figure:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            figure = False
    summary = run_demo(
        args.particles,
        args.out,
        seed=args.seed,
        progress=not args.no_progress,
        figure=figure,
        overwrite=args.overwrite,
    )
    print(summary.format())
    return 0


def _human(key: str, value: Any) -> str:
    """A report value as a person reads it: sizes in MB/GB, lists without brackets."""
    if key.startswith("size") and isinstance(value, int):
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if value >= scale:
                return f"{value / scale:.1f} {unit} ({value:,} bytes)"
        return f"{value} bytes"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return " x ".join(map(str, value)) if key in ("shape", "chunks") else ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def _cmd_info(args: argparse.Namespace) -> int:
    from cryoxr.io import describe

    reports = [
        describe(path, tomograms=args.tomograms, pixel_spacing=args.pixel_spacing) for path in args.paths
    ]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2, default=str))
    else:
        for report in reports:
            print(f"{report['path']}")
            width = max(len(key) for key in report) + 2
            for key, value in report.items():
                if key != "path":
                    print(f"  {key.replace('_', ' '):<{width}}{_human(key, value)}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from cryoxr.io import convert
    from cryoxr.progress import scheduler as _scheduler

    start = time.perf_counter()
    with _scheduler("threads", not args.no_progress):
        written = convert(
            args.src,
            args.dst,
            to=args.to_format,
            overwrite=args.overwrite,
            image_size=tuple(args.image_size) if args.image_size else None,
            tomograms=args.tomograms,
            pixel_spacing=args.pixel_spacing,
        )
    print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    import numpy as np
    import xarray as xr

    from cryoxr.errors import FileExistsNoOverwriteError, InvalidValueError
    from cryoxr.field_of_view import in_field_of_view
    from cryoxr.io import read_alignment, read_poses
    from cryoxr.io._atomic import atomic_path
    from cryoxr.poseset import experiment_ids
    from cryoxr.progress import scheduler as _scheduler
    from cryoxr.projection import project
    from cryoxr.projection_model import PMDL, PTC

    if args.out.exists() and not args.overwrite:  # before any reading: say it at once
        raise FileExistsNoOverwriteError(
            f"{args.out}: exists; pass --overwrite to replace it (nothing was written)"
        )
    model = read_alignment(args.alignment, pixel_spacing=args.pixel_spacing)
    # a RELION 5 tomograms.star holds the sizes RELION 5 particle files need
    star = args.alignment.suffix.lower() == ".star" and args.poses.suffix.lower() == ".star"
    tomograms = args.alignment if star else None  # only RELION particle files take it
    poses = read_poses(args.poses, tomograms=tomograms) if tomograms else read_poses(args.poses)
    experiments = experiment_ids(poses)
    eids = model[PMDL.EXPERIMENT_ID].astype(str)
    # geometry a reader keeps only in attrs becomes columns (model pixels, as the columns are)
    for key, columns in (
        ("tomogram_dimensions", PTC.TOMOGRAM_SIZE),
        ("tilt_image_center", PTC.TILT_IMAGE_CENTER),
    ):
        value = model.attrs.get(key)
        if value is None or all(c in model.columns for c in columns):
            continue
        per = value if isinstance(value, dict) else dict.fromkeys(experiments, value)
        rows = np.array([per.get(e, [np.nan] * len(columns)) for e in eids], dtype=np.float64)
        model = model.assign(**{c: rows[:, i] for i, c in enumerate(columns)})
    # an explicit centre (IMOD's (N - 1) / 2) in model pixels -> pixels of the poses
    specimen: dict[str, Any] | None = None
    centres = model.attrs.get("specimen_center")
    if args.tomogram_size is None and centres is not None:
        per = centres if isinstance(centres, dict) else dict.fromkeys(experiments, centres)
        spacing = model.groupby(eids, sort=False)[PMDL.PIXEL_SPACING].first()
        ratio = {
            e: float(poses.attrs["pixel_spacing"]) / float(spacing[e]) for e in experiments if e in spacing
        }
        specimen = {
            e: np.asarray(per[e], dtype=np.float64) / ratio[e] for e in experiments if e in per and e in ratio
        }
    dims = tuple(args.tomogram_size) if args.tomogram_size is not None else None
    centre: Any = tuple(args.tilt_image_center) if args.tilt_image_center is not None else None
    has_centres = all(c in model.columns for c in PTC.TILT_IMAGE_CENTER) and bool(
        np.isfinite(model[PTC.TILT_IMAGE_CENTER].to_numpy(dtype=np.float64)).all()
    )
    if centre is None and not has_centres and args.image_size is not None:
        centre = (args.image_size[0] // 2, args.image_size[1] // 2)  # cryoxr's default rule (RELION's)
    try:
        projected = project(
            poses,
            model,
            tomogram_dimensions=dims,
            tilt_image_center=centre,
            specimen_center=specimen or None,
            chunks=args.chunks,
        )
    except InvalidValueError as err:
        message = str(err)
        for python, flag in (
            ("pass tomogram_dimensions=(x, y, z) in pixels of the poses (or specimen_center=)",
             "pass --tomogram-size X Y Z (pixels of the poses)"),
            ("pass tilt_image_center=(x, y) in tilt-image pixels", "pass --tilt-image-center X Y or --image-size X Y"),
        ):  # fmt: skip
            message = message.replace(python, flag)
        raise InvalidValueError(f"{args.alignment}: {message}") from None
    image_shape: tuple[int, int] | None = None
    if args.image_size is not None:
        image_shape = (args.image_size[1], args.image_size[0])
    elif all(c in model.columns for c in PTC.IMAGE_SIZE):
        sizes = model.loc[eids.isin(experiments), [PTC.IMAGE_SIZE_Y, PTC.IMAGE_SIZE_X]].to_numpy(np.float64)
        if np.isfinite(sizes).all() and (sizes == sizes[0]).all():
            image_shape = (int(sizes[0, 0]), int(sizes[0, 1]))  # the tilt-image size the alignment holds
    variables = {"projected": projected}
    if image_shape is not None:
        variables["in_field_of_view"] = in_field_of_view(
            projected, image_shape=image_shape, margin=args.margin
        )
    out = xr.Dataset(variables)
    out.attrs.update(poses=str(args.poses), alignment=str(args.alignment))
    for name in ("experiment_ids",):
        out.attrs[name] = list(projected.attrs.get(name, []))
    start = time.perf_counter()
    with (
        atomic_path(args.out, overwrite=args.overwrite, directory=True) as tmp,
        _scheduler(args.scheduler, not args.no_progress) as client,
    ):
        if client is not None:
            from distributed import progress

            future = out.to_zarr(tmp, mode="w-", compute=False, zarr_format=ZARR_FORMAT)
            handle = client.compute(future)
            if not args.no_progress:
                with contextlib.redirect_stdout(sys.stderr):  # results on stdout, progress on stderr
                    progress(handle)
            handle.result()
        else:
            out.to_zarr(tmp, mode="w-", zarr_format=ZARR_FORMAT)
    elapsed = time.perf_counter() - start
    n, t = projected.sizes["particle"], projected.sizes["image"]
    print(f"projected {n:,} particles x {t} tilts in {elapsed:.1f} s -> {args.out}")
    if "in_field_of_view" in variables:
        counts = np.asarray(xr.open_zarr(args.out)["in_field_of_view"].sum("particle").values)
        print(f"in field of view per tilt: min {counts.min():,}, max {counts.max():,}")
    return 0


#: zarr format of `cryoxr project` outputs: v2 keeps the string coords (axis labels,
#: experiment ids) that zarr v3 has no stable data type for yet
ZARR_FORMAT = 2

COMMANDS = {
    "demo": _cmd_demo,
    "info": _cmd_info,
    "convert": _cmd_convert,
    "project": _cmd_project,
    "average": cmd_average,
    "extract": cmd_extract,
    "reconstruct": cmd_reconstruct,
}


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Library warnings (columns a format cannot store, a scale kept) reach shell users as
    one line each on stderr, ``cryoxr: warning: <message>``, in the command's terms."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen: set[str] = set()
            for warning in caught:
                text = in_cli_terms(str(warning.message))
                if text not in seen:
                    seen.add(text)
                    print(f"cryoxr: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cryoxr`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from cryoxr import __version__

        print(f"cryoxr {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _warnings_as_lines():
            return COMMANDS[args.command](args)
    except (CryoxrError, OSError) as err:
        if args.debug:
            raise
        message = (
            in_cli_terms(str(err))
            if isinstance(err, CryoxrError)
            else f"{getattr(err, 'filename', '') or ''}: {err.strerror or err}"
        )
        print(f"cryoxr: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cryoxr: interrupted", file=sys.stderr)
        return 130
