"""Images (micrographs, tomograms, stacks) as a small wrapper around one DataArray.

An :class:`Image` holds one :class:`xarray.DataArray` (``image.data``), dask-backed unless
the caller built it from an eager DataArray. Its metadata live in the DataArray's attrs
(``experiment_id``, ``pixel_spacing``, ``source``), so ``image.data`` alone round-trips
through zarr and netCDF. The wrapper satisfies the ``cryotypes`` ImageProtocol (``data``,
``experiment_id``, ``pixel_spacing``, ``source``, ``stack``).

Dims are ``("y", "x")`` for a 2D image, ``("z", "y", "x")`` for a volume and
``("image", "y", "x")`` for a stack of 2D images (tilt series, particle stack). Spatial
coords are float64 Å, ``index * pixel_spacing``: the centre of the first pixel is 0.

Examples
--------
>>> import numpy as np
>>> from cryoxr import Tomogram
>>> tomo = Tomogram.from_array(
...     np.zeros((4, 5, 6), dtype=np.float32), pixel_spacing=10.0, experiment_id="TS_01"
... )
>>> tomo.data.dims
('z', 'y', 'x')
>>> float(tomo.data.x[-1])
50.0
>>> tomo.stack, tomo.pixel_spacing
(False, 10.0)
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from xarray.indexes import PandasIndex

from cryoxr._writers import image_writer
from cryoxr.errors import InvalidValueError, SchemaError

if TYPE_CHECKING:
    from typing import Self

__all__ = ["ArraySource", "Image", "Micrograph", "Tomogram", "bin_image", "image_coords", "validate_image"]

#: The dims an image may have, by number of dimensions and stack flag.
IMAGE_DIMS: dict[tuple[int, bool], tuple[str, ...]] = {
    (2, False): ("y", "x"),
    (3, False): ("z", "y", "x"),
    (3, True): ("image", "y", "x"),
}
SPATIAL_DIMS = ("z", "y", "x")
ANGSTROM = "angstrom"

Chunks = int | str | tuple[int, ...] | tuple[tuple[int, ...], ...] | Mapping[str, Any] | None


def image_coords(shape: tuple[int, ...], dims: tuple[str, ...], pixel_spacing: float) -> xr.Coordinates:
    """Coordinates of an image: float64 Å for spatial dims, integer index for ``image``.

    Parameters
    ----------
    shape, dims
        Shape and dim names of the array.
    pixel_spacing
        Å per pixel.

    Returns
    -------
    xarray.Coordinates
        One indexed coordinate per dim, ready for :class:`xarray.DataArray`.

    Examples
    --------
    >>> c = image_coords((2, 3), ("y", "x"), 1.5)
    >>> c["x"].values.tolist(), c["x"].attrs["units"]
    ([0.0, 1.5, 3.0], 'angstrom')
    """
    variables: dict[str, xr.Variable] = {}
    indexes: dict[str, PandasIndex] = {}
    for size, dim in zip(shape, dims, strict=True):
        values: np.ndarray
        if dim == "image":
            values = np.arange(size, dtype=np.int64)
            variables[dim] = xr.Variable(dim, values)
        else:
            values = np.arange(size, dtype=np.float64) * float(pixel_spacing)
            variables[dim] = xr.Variable(dim, values, attrs={"units": ANGSTROM})
        # the index built here, once: xarray would otherwise build and copy it again per
        # coordinate, the largest part of opening a file
        indexes[dim] = PandasIndex(pd.Index(values, name=dim), dim)
    return xr.Coordinates(variables, indexes=indexes)


def _check_pixel_spacing(value: Any, where: str) -> float:
    try:
        spacing = float(value)
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"{where}: pixel_spacing must be a positive number of Å, found {value!r}"
        ) from None
    if not math.isfinite(spacing) or spacing <= 0:
        raise InvalidValueError(
            f"{where}: pixel_spacing must be a positive finite number of Å, found {value!r}"
        )
    return spacing


def _check_experiment_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValueError(f"{where}: experiment_id must be a non-empty str, found {value!r}")
    return value


def validate_image(
    image: Image | xr.DataArray, *, ndim: Literal[2, 3] | None = None, stack: bool | None = None
) -> xr.DataArray:
    """Check that a DataArray (or the one inside an Image) follows cryoxr's image model.

    Reads no voxels: only dims, shape, coords and attrs are inspected.

    Parameters
    ----------
    image
        An :class:`Image` or a :class:`xarray.DataArray`.
    ndim
        Required number of spatial dims (2 or 3), or None for either.
    stack
        Required stack flag, or None for either.

    Returns
    -------
    xarray.DataArray
        The validated DataArray.

    Raises
    ------
    SchemaError
        Wrong dims, missing attrs or coords.
    InvalidValueError
        Non-positive pixel spacing, empty experiment_id, coords that disagree with it.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> validate_image(xr.DataArray(np.zeros((2, 2)), dims=("a", "b")))
    Traceback (most recent call last):
    ...
    cryoxr.errors.SchemaError: image: dims must be one of ('y', 'x'), ('z', 'y', 'x'), \
('image', 'y', 'x'), found ('a', 'b')
    """
    data = image.data if isinstance(image, Image) else image
    name = "image" if data.name is None else f"image {data.name!r}"
    if not isinstance(data, xr.DataArray):
        raise SchemaError(f"{name}: expected an xarray.DataArray, found {type(data).__name__}")
    dims = tuple(str(d) for d in data.dims)
    allowed = list(IMAGE_DIMS.values())
    if dims not in allowed:
        raise SchemaError(f"{name}: dims must be one of {', '.join(map(str, allowed))}, found {dims}")
    is_stack = dims[0] == "image"
    spatial_ndim = data.ndim - int(is_stack)
    if ndim is not None and spatial_ndim != ndim:
        raise InvalidValueError(f"{name}: expected {ndim} spatial dims, found {spatial_ndim} (dims {dims})")
    if stack is not None and is_stack != stack:
        raise InvalidValueError(f"{name}: expected stack={stack}, found dims {dims} (stack={is_stack})")
    for key in ("pixel_spacing", "experiment_id"):
        if key not in data.attrs:
            raise SchemaError(f"{name}: attrs must hold {key!r}, found keys {list(data.attrs)}")
    spacing = _check_pixel_spacing(data.attrs["pixel_spacing"], name)
    _check_experiment_id(data.attrs["experiment_id"], name)
    source = data.attrs.get("source", "")
    if not isinstance(source, str | Path):
        raise InvalidValueError(f"{name}: source must be a str or Path, found {source!r}")
    if any(size == 0 for size in data.shape):
        raise InvalidValueError(f"{name}: every dim must have at least one pixel, found {data.sizes}")
    for dim in dims:
        if dim == "image":
            continue
        coord_variable = data.coords.variables.get(dim)
        if coord_variable is None:
            raise SchemaError(f"{name}: coordinate {dim!r} (Å) is missing")
        coord = np.asarray(coord_variable.values)
        # a crop keeps its place in the parent: the first value may be any offset
        expected = coord[0] + np.arange(data.sizes[dim], dtype=np.float64) * spacing
        # |coord - expected| <= atol + rtol |expected|, as np.allclose(rtol=1e-9, atol=1e-6)
        if coord.dtype != np.float64 or not bool(
            np.all(np.abs(coord - expected) <= 1e-6 + 1e-9 * np.abs(expected))
        ):
            raise InvalidValueError(
                f"{name}: coordinate {dim!r} must be float64 Å spaced by pixel_spacing "
                f"({spacing} Å), found {coord[:3]}..."
            )
    return data


class ArraySource:
    """A read-through view of an array for :func:`dask.array.from_array`: nothing is copied.

    dask copies any ndarray it wraps (a whole ``np.memmap`` would be read into memory);
    this proxy hides the array behind ``__getitem__`` so each task reads only its chunk.
    A memory map pickles as its path, offset, dtype and shape and is reopened in the
    receiving process, so process-based and distributed schedulers work without shipping
    voxels.
    """

    def __init__(self, array: Any) -> None:
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self._array = array
        self._memmap: tuple[str, str, int, tuple[int, ...], str] | None = None
        if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename:
            order = "C" if array.flags.c_contiguous else "F"
            self._memmap = (str(array.filename), array.dtype.str, int(array.offset), self.shape, order)

    def _source(self) -> Any:
        if self._array is None and self._memmap is not None:
            filename, dtype, offset, shape, order = self._memmap
            layout: Literal["C", "F"] = "C" if order == "C" else "F"
            self._array = np.memmap(
                filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape, order=layout
            )
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._source()[key])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._memmap is not None:
            state["_array"] = None  # reopened by path on the other side
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _as_dask(array: Any, chunks: Chunks, dims: tuple[str, ...]) -> da.Array:
    """Wrap any array-like in dask without reading or copying it."""
    if isinstance(array, da.Array):
        return array if chunks is None or chunks == "auto" else array.rechunk(chunks)
    if chunks is None:
        chunks = "auto"
    if dims[0] == "image" and chunks == "auto":
        # one tilt image per chunk: the access pattern of tilt-series work
        chunks = (1, -1, -1)
    source = array if not isinstance(array, np.ndarray) else ArraySource(array)
    previous = getattr(array, "chunks", None) if chunks == "auto" else None
    if isinstance(previous, tuple) and all(isinstance(c, int) for c in previous):
        # follow the storage chunks of zarr-like arrays when asked for "auto"
        chunks = da.core.normalize_chunks("auto", array.shape, dtype=array.dtype, previous_chunks=previous)
    # a random name: tokenizing would hash the bytes (~0.5 ms per MiB) for nothing
    return da.from_array(
        source,
        chunks=chunks,
        asarray=False,
        lock=False,
        name=False,
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )


class Image:
    """A 2D image, a 3D volume or a stack of 2D images, wrapping one DataArray.

    Build one with :meth:`from_array`, or wrap an existing DataArray that follows the
    model with ``Image(dataarray)`` (it is validated; no voxels are read).

    Parameters
    ----------
    data
        A DataArray with the dims, coords and attrs described in the module docstring.

    Examples
    --------
    >>> import numpy as np
    >>> from cryoxr import Image
    >>> img = Image.from_array(np.zeros((3, 8, 8)), pixel_spacing=2.0,
    ...                        experiment_id="TS_01", stack=True)
    >>> img.data.dims, img.stack
    (('image', 'y', 'x'), True)
    >>> Image(img.data).experiment_id
    'TS_01'
    """

    __slots__ = ("_data",)
    #: spatial dimensionality this class requires (None: 2 or 3)
    required_ndim: ClassVar[Literal[2, 3] | None] = None

    def __init__(self, data: xr.DataArray) -> None:
        self._data = validate_image(data, ndim=self.required_ndim)

    @classmethod
    def from_array(
        cls,
        array: Any,
        *,
        pixel_spacing: float,
        experiment_id: str,
        source: str | Path = "",
        stack: bool = False,
        chunks: Chunks = "auto",
        attrs: Mapping[str, Any] | None = None,
    ) -> Self:
        """Wrap a numpy, dask, zarr or memory-mapped array, lazily.

        Parameters
        ----------
        array
            2D or 3D array-like with shape/ndim/dtype (numpy, ``np.memmap``, dask, zarr).
            It is wrapped in dask; no element is read.
        pixel_spacing
            Å per pixel (isotropic).
        experiment_id
            Name of the experiment (tomogram / tilt series / micrograph).
        source
            Where the data came from (a path), free text.
        stack
            True for a stack of 2D images: dims ``("image", "y", "x")``.
        chunks
            dask chunks; ``"auto"`` (one image per chunk for stacks), an int, a tuple or
            a mapping of dim name to chunk size.
        attrs
            Further attrs to keep on the DataArray (e.g. file header fields).

        Returns
        -------
        Image
            Of the class it was called on (:class:`Tomogram` checks 3D, ...).

        Examples
        --------
        >>> import numpy as np
        >>> from cryoxr import Tomogram
        >>> t = Tomogram.from_array(np.ones((8, 8, 8), np.float32), pixel_spacing=1.0,
        ...                         experiment_id="t", chunks=4)
        >>> t.data.chunks
        ((4, 4), (4, 4), (4, 4))
        """
        where = f"{cls.__name__}.from_array"
        for attr in ("shape", "dtype", "ndim"):
            if not hasattr(array, attr):
                array = np.asarray(array)
                break
        key = (array.ndim, bool(stack))
        if key not in IMAGE_DIMS:
            raise InvalidValueError(
                f"{where}: array must be 2D or 3D (3D with stack=True), "
                f"found {array.ndim}D with shape {tuple(array.shape)} and stack={stack}"
            )
        dims = IMAGE_DIMS[key]
        if cls.required_ndim is not None and array.ndim - int(stack) != cls.required_ndim:
            raise InvalidValueError(
                f"{where}: expected a {cls.required_ndim}D array, "
                f"found {array.ndim}D with shape {tuple(array.shape)}"
            )
        spacing = _check_pixel_spacing(pixel_spacing, where)
        _check_experiment_id(experiment_id, where)
        if isinstance(chunks, Mapping):
            chunks = tuple(chunks.get(d, "auto") for d in dims)
        darr = _as_dask(array, chunks, dims)
        all_attrs = dict(attrs or {})
        all_attrs.update(experiment_id=experiment_id, pixel_spacing=spacing, source=str(source))
        data = xr.DataArray(
            darr,
            dims=dims,
            coords=image_coords(tuple(darr.shape), dims, spacing),
            attrs=all_attrs,
            name=experiment_id,
        )
        # valid by construction (every input was checked above): opening a file is
        # dominated by fixed costs like validation, so it is not repeated here
        image = object.__new__(cls)
        image._data = data
        return image

    # -- the cryotypes ImageProtocol ---------------------------------------------------
    @property
    def data(self) -> xr.DataArray:
        """The wrapped DataArray."""
        return self._data

    @property
    def experiment_id(self) -> str:
        """Experiment name, from ``data.attrs``."""
        return str(self._data.attrs["experiment_id"])

    @property
    def pixel_spacing(self) -> float:
        """Å per pixel, from ``data.attrs``."""
        return float(self._data.attrs["pixel_spacing"])

    @property
    def source(self) -> str:
        """Where the data came from, from ``data.attrs``."""
        return str(self._data.attrs.get("source", ""))

    @property
    def stack(self) -> bool:
        """True for a stack of 2D images (leading dim ``image``)."""
        return self._data.dims[0] == "image"

    # -- conveniences ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the data, in array order."""
        return tuple(self._data.shape)

    @property
    def dims(self) -> tuple[Hashable, ...]:
        """Dim names of the data."""
        return tuple(self._data.dims)

    def _rewrap(self, data: xr.DataArray) -> Image:
        # a selection may drop a dim (a z-slice of a tomogram is a micrograph)
        cls: type[Image] = type(self)
        if cls.required_ndim is not None and data.ndim - int(data.dims[0] == "image") != cls.required_ndim:
            cls = Image
        return cls(data)

    def sel(self, indexers: Mapping[str, Any] | None = None, **kwargs: Any) -> Image:
        """Select by coordinate (Å for spatial dims), like :meth:`xarray.DataArray.sel`.

        Coords keep their values (a crop stays where it was in the parent, in Å). A
        selection keeping every dim returns the same class; dropping a dim (a single
        slice) returns a plain :class:`Image` of lower dimensionality when that still
        fits the model, else raises. Reads no voxels.

        Examples
        --------
        >>> import numpy as np
        >>> from cryoxr import Tomogram
        >>> t = Tomogram.from_array(np.zeros((4, 4, 4)), pixel_spacing=10.0, experiment_id="t")
        >>> t.sel(x=slice(10, 20)).shape
        (4, 4, 2)
        """
        selected = self._data.sel(indexers, **kwargs)
        return self._rewrap(
            selected.drop_vars([d for d in SPATIAL_DIMS if d in selected.coords and d not in selected.dims])
        )

    def isel(self, indexers: Mapping[str, Any] | None = None, **kwargs: Any) -> Image:
        """Select by index, like :meth:`xarray.DataArray.isel`; see :meth:`sel`."""
        selected = self._data.isel(indexers, **kwargs)
        return self._rewrap(
            selected.drop_vars([d for d in SPATIAL_DIMS if d in selected.coords and d not in selected.dims])
        )

    def bin(self, factor: int) -> Image:
        """Lazy mean binning by an integer factor along every spatial dim.

        See :func:`bin_image`.
        """
        return self._rewrap(bin_image(self._data, factor))

    def to_mrc(self, path: str | Path, **kwargs: Any) -> Path:
        """Write to an MRC file: :func:`cryoxr.io.write_mrc`."""
        return image_writer("mrc")(self, path, **kwargs)  # registered by cryoxr.io

    def to_zarr(self, path: str | Path, **kwargs: Any) -> Path:
        """Write an OME-Zarr pyramid: :func:`cryoxr.io.write_ome_zarr`."""
        return image_writer("ome-zarr")(self, path, **kwargs)

    def __repr__(self) -> str:
        d = self._data
        kind = "dask" if isinstance(d.data, da.Array) else type(d.data).__name__
        sizes = ", ".join(f"{k}: {v}" for k, v in d.sizes.items())
        return (
            f"<cryoxr.{type(self).__name__} {self.experiment_id!r} ({sizes}) {d.dtype} "
            f"{self.pixel_spacing:g} Å/px, {kind}>"
        )

    def __eq__(self, other: object) -> bool:
        return NotImplemented


class Micrograph(Image):
    """A single 2D image, dims ``("y", "x")``; see :class:`Image`."""

    __slots__ = ()
    required_ndim = 2


class Tomogram(Image):
    """A 3D volume, dims ``("z", "y", "x")``; see :class:`Image`."""

    __slots__ = ()
    required_ndim = 3


def bin_image(data: xr.DataArray, factor: int) -> xr.DataArray:
    """Mean-bin the spatial dims of an image DataArray by an integer factor, lazily.

    Trailing pixels that do not fill a whole bin are dropped (as IMOD's ``binvol`` and
    RELION do). ``pixel_spacing`` is multiplied by ``factor``; each new coord is the mean
    of the coords it bins (pixel centres), so a binned image keeps its place in Å: bin 0
    of a 2x binning sits at ``0.5 * old_spacing``. The stack dim ``image`` is not binned.

    Parameters
    ----------
    data
        An image DataArray (validated).
    factor
        Bin factor, >= 1.

    Returns
    -------
    xarray.DataArray
        The binned image, float (float32 stays float32, integers become float64).

    Examples
    --------
    >>> import numpy as np
    >>> from cryoxr import Micrograph
    >>> m = Micrograph.from_array(np.arange(16.0).reshape(4, 4), pixel_spacing=1.0,
    ...                           experiment_id="m")
    >>> b = bin_image(m.data, 2)
    >>> b.values.tolist(), b.attrs["pixel_spacing"], b.x.values.tolist()
    ([[2.5, 4.5], [10.5, 12.5]], 2.0, [0.5, 2.5])
    """
    validate_image(data)
    if not isinstance(factor, int | np.integer) or factor < 1:
        raise InvalidValueError(f"bin_image: factor must be an int >= 1, found {factor!r}")
    factor = int(factor)
    if factor == 1:
        return data
    spatial = [d for d in data.dims if d != "image"]
    for d in spatial:
        if data.sizes[d] < factor:
            raise InvalidValueError(
                f"bin_image: dim {d!r} has {data.sizes[d]} pixels, fewer than factor {factor}"
            )
    window = {str(d): factor for d in spatial}
    dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.float64
    binned = data.astype(dtype).coarsen(window, boundary="trim").mean()
    spacing = float(data.attrs["pixel_spacing"]) * factor
    binned.attrs = dict(data.attrs)
    binned.attrs["pixel_spacing"] = spacing
    binned.name = data.name
    return binned
