"""Helpers for testing code built on cryoxr: prove that nothing is computed.

Examples
--------
>>> import dask.array as da
>>> from cryoxr.testing import raise_if_dask_computes
>>> x = da.ones(10, chunks=5)
>>> with raise_if_dask_computes():
...     y = x + 1                    # building a graph computes nothing
>>> with raise_if_dask_computes(max_computes=1) as scheduler:
...     _ = y.sum().compute()
>>> scheduler.total_computes
1
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import mrcfile
import numpy as np
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.image import Image
from cryoxr.poseset import make_poseset
from cryoxr.projection_model import make_projection_model

__all__ = [
    "CountingHTTPServer",
    "CountingScheduler",
    "noise_tilt_series",
    "patch_mrc_header",
    "raise_if_dask_computes",
    "random_array",
    "random_poses",
    "serve_folder",
    "write_mrc_with_mrcfile",
]


class CountingScheduler:
    """A dask scheduler that counts computes and fails past a budget (as in xarray's tests).

    Parameters
    ----------
    max_computes
        How many computes are allowed before a RuntimeError.
    """

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}.")
        return dask.get(dsk, keys, **kwargs)


@contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Fail if the block computes dask graphs more than ``max_computes`` times.

    Inside the block a distributed Client is overridden by this scheduler.
    """
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


def random_poses(
    rng: np.random.Generator,
    n: int,
    *,
    experiment_id: Any = "TS_01",
    pixel_spacing: float = 1.35,
    dims: tuple[int, int, int] = (4096, 4096, 1000),
    chunks: int | None = None,
) -> xr.Dataset:
    """A PoseSet of ``n`` particles at uniform positions, small shifts and uniform orientations.

    Parameters
    ----------
    rng
        Source of randomness (the same generator state gives the same set).
    n
        Number of particles (0 gives an empty set).
    experiment_id
        A str for one tomogram, or a per-particle sequence for many.
    pixel_spacing
        Å per pixel of the positions.
    dims
        Tomogram size (x, y, z) in pixels; positions are uniform inside it.
    chunks
        Particles per dask chunk, or None for numpy-backed variables.

    Examples
    --------
    >>> import numpy as np
    >>> from cryoxr.testing import random_poses
    >>> ds = random_poses(np.random.default_rng(0), 1000, chunks=300)
    >>> ds.sizes["particle"], ds.position.chunks[0]
    (1000, (300, 300, 300, 100))
    """
    position = rng.uniform(0, 1, size=(n, 3)) * np.asarray(dims)
    shift = rng.normal(0, 2, size=(n, 3))
    return make_poseset(
        position,
        shift=shift,
        orientation=Rotation.random(n, random_state=int(rng.integers(1 << 31))) if n else np.zeros((0, 4)),
        experiment_id=experiment_id,
        pixel_spacing=pixel_spacing,
        source="synthetic",
        chunks=chunks,
    )


def noise_tilt_series(
    n_tilts: int,
    *,
    shape: tuple[int, int] = (80, 96),
    max_angle: float = 30.0,
    experiment_id: str = "TS_01",
    **columns: Any,
) -> tuple[Any, Image]:
    """A small tilt series of Gaussian noise and its model with RELION 5 optics, for extraction tests.

    Tilts from ``-max_angle`` to ``max_angle``, tilt axis 80°, 2.5 Å/px, a 96 x 80 x 40
    tomogram centred in the ``shape`` images, per-tilt defocus 3.0-3.2 µm (U) and
    2.9-3.1 µm (V) at 35°, 300 kV, Cs 2.7 mm, 7% amplitude contrast, handedness -1 and
    3 e/Å² per tilt. ``columns`` adds or overrides model columns (``phase_shift=10.0``, ...).
    The images are the same for the same ``n_tilts`` and ``shape`` (seed 7).

    Examples
    --------
    >>> from cryoxr.testing import noise_tilt_series
    >>> model, series = noise_tilt_series(3, phase_shift=10.0)
    >>> model["rotation_y"].tolist(), model["phase_shift"].tolist(), dict(series.data.sizes)
    ([-30.0, 0.0, 30.0], [10.0, 10.0, 10.0], {'image': 3, 'y': 80, 'x': 96})
    """
    optics: dict[str, Any] = {
        "tomogram_size_x": 96,
        "tomogram_size_y": 80,
        "tomogram_size_z": 40,
        "tilt_image_center_x": 48.0,
        "tilt_image_center_y": 40.0,
        "defocus_u": np.linspace(30000, 32000, n_tilts),
        "defocus_v": np.linspace(29000, 31000, n_tilts),
        "defocus_angle": 35.0,
        "voltage": 300.0,
        "spherical_aberration": 2.7,
        "amplitude_contrast": 0.07,
        "defocus_handedness": -1,
        "pre_exposure": np.arange(n_tilts) * 3.0,
    }
    model = make_projection_model(
        rotation_y=np.linspace(-max_angle, max_angle, n_tilts),
        rotation_z=80.0,
        experiment_id=experiment_id,
        pixel_spacing=2.5,
        **{**optics, **columns},
    )
    images = np.random.default_rng(7).normal(size=(n_tilts, *shape)).astype(np.float32)
    return model, Image.from_array(images, pixel_spacing=2.5, experiment_id=experiment_id, stack=True)


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Random values spanning ``dtype``: normal for float and complex, the full range for integers.

    Examples
    --------
    >>> import numpy as np
    >>> random_array(np.random.default_rng(0), (2, 3), np.dtype("uint8")).dtype
    dtype('uint8')
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def write_mrc_with_mrcfile(
    path: Path, data: np.ndarray, *, voxel_size: float = 2.5, stack: bool = False
) -> Path:
    """Write ``data`` with mrcfile itself (the independent oracle of cryoxr's MRC IO)."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


def patch_mrc_header(path: Path, **fields: Any) -> None:
    """Set raw header fields of an MRC file in place (to build unusual or broken files)."""
    with mrcfile.mmap(path, mode="r+", permissive=True) as mrc:
        for key, value in fields.items():
            mrc.header[key] = value


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server, telling its :class:`CountingHTTPServer` what each request cost."""

    counter: CountingHTTPServer

    def send_head(self) -> Any:
        self.counter._record(self.command, self.path, 0)
        return super().send_head()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        data = source.read()
        # counted before the client can read it: a test that resets the counters as soon
        # as its read returns must never see these bytes land afterwards
        self.counter._record(None, self.path, len(data))
        outputfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the counters instead


class CountingHTTPServer:
    """A local HTTP server serving a folder in a thread, counting requests and bytes per path.

    It listens on 127.0.0.1 at a port the OS picks (never a fixed one), serves the folder as
    Python's ``http.server`` does (HTML index pages for folders, 404 for missing files, no
    ``Range`` support) and counts, per URL path (unquoted, without the query): the requests
    (``requests``, any method) and the body bytes sent (``bytes``). Use :func:`serve_folder`.

    Attributes
    ----------
    url
        ``http://127.0.0.1:<port>``, without a trailing slash.
    requests, bytes
        :class:`collections.Counter` by path (``"/t.zarr/0/c/0/0/0"``).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        handler = functools.partial(
            type("Handler", (_CountingHandler,), {"counter": self}), directory=os.fspath(folder)
        )
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="cryoxr-http", daemon=True)
        self._thread.start()

    def _record(self, method: str | None, raw_path: str, nbytes: int) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(raw_path).path)
        with self._lock:
            if method is not None:
                self.requests[path] += 1
            self.bytes[path] += nbytes

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.requests.clear()
            self.bytes.clear()

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextmanager
def serve_folder(folder: str | os.PathLike[str]) -> Iterator[CountingHTTPServer]:
    """Serve ``folder`` over HTTP on 127.0.0.1 for the block (:class:`CountingHTTPServer`).

    Examples
    --------
    >>> import tempfile, pathlib, urllib.request
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("hello")
    >>> with serve_folder(folder) as server:
    ...     body = urllib.request.urlopen(f"{server.url}/a.txt").read()
    >>> body, server.requests["/a.txt"], server.bytes["/a.txt"]
    (b'hello', 1, 5)
    """
    server = CountingHTTPServer(folder)
    try:
        yield server
    finally:
        server.close()
