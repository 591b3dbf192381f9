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

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import mrcfile
import numpy as np
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.poseset import make_poseset

__all__ = [
    "CountingScheduler",
    "patch_mrc_header",
    "raise_if_dask_computes",
    "random_array",
    "random_poses",
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
