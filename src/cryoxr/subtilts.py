"""RELION 5's 2D subtilt stacks (``relion_tomo_subtomo --stack2d``), lazily: the kernel and the graph.

:func:`cryoxr.extract_subtilts` with ``mode="relion"`` lands here. For every particle and
tilt, RELION 5 (``SubtomoProgram::processTomograms`` in
``src/jaz/tomography/programs/subtomo.cpp`` and ``TomoExtraction::extractAt2D_Fourier`` in
``src/jaz/tomography/extraction.h``, commit 73f0a3c; restated, not copied):

1. cuts a square of ``s0 = int(bin * box + 0.5)`` tilt-image pixels whose corner is
   ``round(p) - s0 / 2`` (C ``round``: halves away from zero; ``p`` the projected point),
   pixels beyond the image edge repeating the edge (``extractSquares`` clamps);
2. Fourier transforms it with the box centre ``s0 / 2`` as origin (unitary FFT);
3. crops the transform to ``box`` (Fourier-crop binning) and divides by ``bin``;
4. shifts by ``(p - corner) / bin - box / 2`` binned pixels, so the projected point lands
   on pixel ``box / 2`` (a phase ramp: sub-pixel exact);
5. multiplies by the CTF of the particle's own defocus (depth offset included:
   :func:`cryoxr.particle_defocus`) at the binned pixel size, times the tilt's dose
   weight (:func:`cryoxr.ctf.dose_weights`) and ``-1`` to invert the contrast. Without CTF
   RELION applies neither CTF nor dose weights, only the sign; here each is a switch;
6. divides by ``bin`` again ("so that the greyscale does not depend on binning");
7. transforms back (unitary) and crops to a circle of radius ``box / 2 - (box - crop) / 2``
   with a 5-pixel raised-cosine edge, after subtracting the mean of the pixels outside
   that radius (``TomoExtraction::cropCircle``);
8. keeps the central ``crop`` pixels.

A tilt is *visible* (``rlnTomoVisibleFrames``) when the projected point lies more than
``bin * crop / 2`` tilt-image pixels inside every edge (``Tomogram::isVisible``, strict
inequalities), the tilt is not excluded and, with ``max_dose``, its pre-exposure is at most
``max_dose``. Invisible tilts are zeros here, as in RELION before it drops them from the
file. RELION's options left out: pre-crop (``--circle_precrop``), whitening, gridding
pre-correction, odd-order aberration correction, motion trajectories.

The lazy graph that runs this kernel over blocks of particles and tilts is
:mod:`cryoxr.subtilt_graph`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

from cryoxr.ctf import ctf_2d, dose_weights
from cryoxr.errors import InvalidValueError

__all__ = ["RelionSteps", "relion_patches"]

#: raised-cosine width of RELION's circular crop, pixels (``EDGE_FALLOFF``)
CIRCLE_FALLOFF = 5.0
#: particles processed together inside a task (their temporaries stay in the caches)
BATCH = 128


@dataclass(frozen=True)
class RelionSteps:
    """What to do to every patch (picklable; one per extraction)."""

    box: int  #: binned box (RELION ``--b``)
    bin: float  #: Fourier-crop factor (``--bin``)
    crop: int  #: output size (``--crop``)
    pixel_size: float  #: Å per tilt-image pixel
    ctf: bool = True
    dose_weight: bool = True
    invert_contrast: bool = True
    circle_crop: bool = True
    bfactor_per_dose: float = 0.0
    dtype: str = "float32"

    @property
    def box0(self) -> int:
        """Unbinned box cut from the tilt image: ``int(bin * box + 0.5)``."""
        return int(self.bin * self.box + 0.5)

    @property
    def radius(self) -> float:
        """Visibility margin in tilt-image pixels: ``bin * crop / 2``."""
        return self.bin * self.crop / 2.0

    @property
    def binned_pixel_size(self) -> float:
        return self.bin * self.pixel_size


def _c_round(x: np.ndarray) -> np.ndarray:
    """C's ``round``: halves away from zero (numpy rounds them to even)."""
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5)).astype(np.int64)


def _fourier_crop(f: np.ndarray, size: int) -> np.ndarray:
    """Keep the ``size`` lowest frequencies of rfft2 spectra (m, h0, h0 // 2 + 1)."""
    h0 = f.shape[-2]
    if size == h0:
        return f
    top = size // 2
    rows = np.r_[0:top, h0 - (size - top) : h0]
    return f[:, rows, : size // 2 + 1]


@functools.lru_cache(maxsize=16)
def _circle(n: int, boundary: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights (n, n), outside mask as float32 (n * n,) / its count) of RELION's ``cropCircle``."""
    centre = float(n // 2)
    radius = centre - boundary
    r = np.hypot(*np.meshgrid(np.arange(n) - centre, np.arange(n) - centre, indexing="ij"))
    inner = radius - CIRCLE_FALLOFF
    weight = np.where(
        r < inner, 1.0, np.where(r < radius, 0.5 - 0.5 * np.cos(np.pi * (radius - r) / CIRCLE_FALLOFF), 0.0)
    )
    outside = (r > radius).ravel()
    mean_of_outside = outside / max(int(outside.sum()), 1)  # zeros when no pixel is outside: mean 0
    return weight.astype(np.float32), mean_of_outside.astype(np.float32)


def _circle_crop(images: np.ndarray, boundary: float) -> np.ndarray:
    """RELION's ``cropCircle``: minus the mean outside the radius, raised-cosine edge."""
    weight, mean_of_outside = _circle(images.shape[-1], float(boundary))
    mean = images.reshape(len(images), -1) @ mean_of_outside
    out = images * weight
    out -= mean[:, None, None] * weight
    return out


def relion_patches(
    image: np.ndarray,
    points: np.ndarray,
    steps: RelionSteps,
    *,
    defocus: np.ndarray | None = None,
    optics: Mapping[str, float] | None = None,
    pre_exposure: float = 0.0,
) -> np.ndarray:
    """The processed ``(m, crop, crop)`` patches of ``m`` points in one tilt image.

    Steps 1-8 of the module docstring, vectorised over the points.

    Parameters
    ----------
    image
        The tilt image, ``(ny, nx)``.
    points
        ``(m, 2)`` projected ``(x, y)`` in tilt-image pixels (all finite).
    steps
        The extraction's settings.
    defocus
        ``(m, 2)`` defocus U, V (Å) of each particle in this tilt; needed with ``steps.ctf``.
    optics
        The other :func:`cryoxr.ctf.ctf_2d` keywords of this tilt (scalars).
    pre_exposure
        Cumulative exposure of this tilt, e/Å² (for ``steps.dose_weight``).

    Examples
    --------
    A point at (10.3, 12.0) of a single bright pixel there lands on the box centre:

    >>> import numpy as np
    >>> img = np.zeros((32, 32), np.float32); img[12, 10] = 1.0
    >>> s = RelionSteps(box=16, bin=1.0, crop=16, pixel_size=1.0, ctf=False, dose_weight=False,
    ...                 invert_contrast=False, circle_crop=False)
    >>> out = relion_patches(img, np.array([[10.0, 12.0]]), s)
    >>> np.unravel_index(out[0].argmax(), out[0].shape)
    (np.int64(8), np.int64(8))
    """
    s0, box = steps.box0, steps.box
    corner = _c_round(points) - s0 // 2  # (m, 2) x, y
    patches = _cut(image, corner, s0)
    spectra = scipy.fft.rfft2(patches, norm="ortho", workers=1)
    if steps.bin != 1.0:
        spectra = _fourier_crop(spectra, box)
    # One phase ramp does three things: centre the FFT on pixel s0 // 2 of the cut box (a
    # roll by -(s0 // 2) there), move the point to pixel box / 2 (RELION's shiftStack), and
    # put the origin back in the middle after the inverse FFT (RELION's (-1)^(x + y)
    # modulation): a shift of t / box + (s0 // 2) / s0 + 1 / 2 cycles per frequency unit,
    # which is t / box (mod 1) for even s0.
    t = (points - corner) / steps.bin - box // 2  # (m, 2) binned pixels
    cycles = np.mod(t / box + (s0 // 2) / s0 + 0.5, 1.0)
    kx = np.arange(box // 2 + 1)
    ky = np.fft.fftfreq(box) * box
    spectra *= np.exp(2j * np.pi * cycles[:, 0, None, None] * kx[None, None, :]).astype(np.complex64)
    spectra *= np.exp(2j * np.pi * cycles[:, 1, None, None] * ky[None, :, None]).astype(np.complex64)
    # the sign, RELION's division by bin after the Fourier crop and again for 2D stacks
    weight = (-1.0 if steps.invert_contrast else 1.0) / steps.bin**2
    factor: Any = np.float32(weight)
    if steps.ctf:
        if defocus is None or optics is None:
            raise InvalidValueError("relion_patches: ctf=True needs defocus and optics")
        factor = ctf_2d(
            box,
            steps.binned_pixel_size,
            defocus[:, 0],
            defocus[:, 1],
            optics["defocus_angle"],
            optics["voltage"],
            optics["spherical_aberration"],
            optics["amplitude_contrast"],
            optics["phase_shift"],
            optics["bfactor"],
            optics["scale"],
            dtype=np.float32,
        )
        factor *= np.float32(weight)
    if steps.dose_weight:
        dose = dose_weights(
            box, steps.binned_pixel_size, pre_exposure, bfactor_per_dose=steps.bfactor_per_dose
        )
        factor = factor * dose.astype(np.float32)
    spectra *= factor
    out = scipy.fft.irfft2(spectra, s=(box, box), norm="ortho", workers=1)
    boundary = (box - steps.crop) // 2
    if steps.circle_crop:
        out = _circle_crop(out, boundary)
    if boundary:
        out = out[:, boundary : boundary + steps.crop, boundary : boundary + steps.crop]
    return np.asarray(out, dtype=np.float32)


def _cut(image: np.ndarray, corner: np.ndarray, size: int) -> np.ndarray:
    """(m, size, size) float32 boxes at ``corner`` (x, y); outside pixels repeat the edge."""
    ny, nx = image.shape
    out = np.empty((len(corner), size, size), dtype=np.float32)
    x0, y0 = corner[:, 0], corner[:, 1]
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + size <= nx) & (y0 + size <= ny)
    for i in np.nonzero(inside)[0]:  # plain slices: a memory map reads only these rows
        out[i] = image[y0[i] : y0[i] + size, x0[i] : x0[i] + size]
    edge = np.nonzero(~inside)[0]
    if edge.size:
        offsets = np.arange(size)
        cols = np.clip(x0[edge, None] + offsets, 0, nx - 1)
        rows = np.clip(y0[edge, None] + offsets, 0, ny - 1)
        out[edge] = image[rows[:, :, None], cols[:, None, :]]
    return out
