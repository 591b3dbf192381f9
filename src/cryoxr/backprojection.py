"""The numerical steps of RELION 5's particle reconstruction, on numpy arrays.

:func:`cryoxr.reconstruct_particle` (:mod:`cryoxr.reconstruction`) builds the dask graph;
the functions here are its tasks: :func:`backproject_block` inserts the subtilts of a
chunk of particles into per-half Fourier sums, :func:`finalise` turns the summed halves
into maps (symmetry, gridding correction, division by the weights, RELION's mask). The
module docstring of :mod:`cryoxr.reconstruction` says which RELION function each step
follows. Volumes are half spectra in ``numpy.fft.rfftn`` layout, axes (z, y, x), of maps
centred at voxel ``box // 2``.

Examples
--------
>>> import numpy as np
>>> from cryoxr.backprojection import soft_sphere_mask
>>> soft_sphere_mask(np.ones((4, 4, 4)), 1.0).shape
(4, 4, 4)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse as sparse

from cryoxr.errors import InvalidValueError
from cryoxr.symmetry import symmetrise_fourier

__all__ = ["GRIDDING_FLOOR", "backproject_block", "finalise", "soft_sphere_mask"]

#: RELION's floor of the gridding correction (griddingCorrect3D_sinc2's ``eps``)
GRIDDING_FLOOR = 0.01
#: the PoseSet variable that assigns half sets (RELION's label, kept by the STAR reader)
HALF_SET_VARIABLE = "rlnRandomSubset"


@lru_cache(maxsize=8)
def _slice_samples(box: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 2D frequencies of a ``box`` patch that can reach a voxel inside Nyquist.

    Returns flat indices into the (box, box // 2 + 1) ``rfft2`` array, ``kx``, ``ky``
    (float32, cycles per box) and the sample weights: 1/2 on the ``kx = 0`` column (and
    ``kx = box / 2`` for even boxes), whose samples ``rfft2`` holds together with their
    Hermitian mates, which fold onto the same voxels.
    """
    half = box // 2 + 1
    ky, kx = np.meshgrid(np.fft.fftfreq(box, 1.0 / box), np.arange(half, dtype=np.float64), indexing="ij")
    keep = np.flatnonzero((np.hypot(kx, ky) < box / 2 + 2).ravel())
    weight = np.ones((box, half))
    weight[:, 0] = 0.5
    if box % 2 == 0:
        weight[:, -1] = 0.5
    as32 = np.float32
    return (
        keep,
        kx.ravel()[keep].astype(as32),
        ky.ravel()[keep].astype(as32),
        weight.ravel()[keep].astype(as32),
    )


def _insert(
    spectra: np.ndarray, weights: np.ndarray | None, rotations: np.ndarray, box: int, trilinear: bool
) -> np.ndarray:
    """Scatter (T, box * half) slices at (T, 3, 3) orientations; returns (V, 3) float32
    sums of data (real, imaginary) and weight over the (box, box, half) volume."""
    half = box // 2 + 1
    n_voxels = box * box * half
    keep, kx, ky, column = _slice_samples(box)
    n_tilts, n_samples = rotations.shape[0], kx.size
    n = n_tilts * n_samples
    # k3 = R^T (kx, ky, 0): the frequency in the particle frame, one axis at a time
    k = [kx[None, :] * rotations[:, 0, a, None] + ky[None, :] * rotations[:, 1, a, None] for a in range(3)]
    sign = np.where(k[0] < 0, np.float32(-1.0), np.float32(1.0))  # fold onto kx >= 0 (Hermitian mate)
    values = spectra[:, keep]
    columns = np.empty((n, 3), np.float32)
    columns[:, 0] = (values.real * column).ravel()
    columns[:, 1] = (values.imag * column * sign).ravel()
    columns[:, 2] = (
        np.broadcast_to(column, (n_tilts, n_samples)) if weights is None else weights[:, keep] * column
    ).ravel()
    if weights is not None:  # RELION zeroes the data where it zeroes the weight (dose cut-off)
        columns[columns[:, 2] == 0, :2] = 0.0
    k = [(axis * sign).ravel() for axis in k]
    if trilinear:
        low = [np.floor(axis) for axis in k]
        fx, fy, fz = (axis - lo for axis, lo in zip(k, low, strict=True))
        x0, y0, z0 = (lo.astype(np.int32) for lo in low)
        xs, wxs = [x0, x0 + 1], [1 - fx, fx]
        y0 %= box
        z0 %= box
        ys = (y0 * half, ((y0 + 1) % box) * half)
        zs = (z0 * (box * half), ((z0 + 1) % box) * (box * half))
        wys, wzs = (1 - fy, fy), (1 - fz, fz)
        for d in range(2):  # beyond the last column (past Nyquist in x): no voxel
            outside = xs[d] >= half
            wxs[d] = np.where(outside, np.float32(0.0), wxs[d])
            xs[d] = np.minimum(xs[d], half - 1)
        index = np.empty((n, 8), np.int32)
        weight = np.empty((n, 8), np.float32)
        corner = 0
        for dz in range(2):
            for dy in range(2):
                zy, wzy = zs[dz] + ys[dy], wzs[dz] * wys[dy]
                for dx in range(2):
                    np.add(zy, xs[dx], out=index[:, corner])
                    np.multiply(wzy, wxs[dx], out=weight[:, corner])
                    corner += 1
        per_sample = 8
    else:
        x, y, z = (np.rint(axis).astype(np.int32) for axis in k)
        inside = x < half
        index = (((z % box) * box + (y % box)) * half + np.minimum(x, half - 1)).reshape(n, 1)
        weight = inside.astype(np.float32).reshape(n, 1)
        per_sample = 1
    # each sample is a row with 8 (or 1) voxel entries: the transposed product scatters
    # the three columns in one pass over the entries
    scatter = sparse.csr_matrix(
        (weight.ravel(), index.ravel(), np.arange(0, per_sample * n + 1, per_sample, dtype=np.int64)),
        shape=(n, n_voxels),
    )
    return np.asarray(scatter.T @ columns)


def _quaternion_matrices(q: np.ndarray) -> np.ndarray:
    """(n, 4) unit quaternions (x, y, z, w) -> (n, 3, 3) rotation matrices."""
    x, y, z, w = (q[:, i] for i in range(4))
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def _halves(values: np.ndarray, from_subsets: bool, offset: np.ndarray) -> np.ndarray:
    if not from_subsets:
        return (offset % 2).astype(np.int64)
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isin(values, (1.0, 2.0))
    if bad.any():
        raise InvalidValueError(
            f"reconstruct_particle: {HALF_SET_VARIABLE} must be 1 or 2 for every particle, found "
            f"{float(values[bad][0])} (particle {int(offset[np.argmax(bad)])})"
        )
    return (values - 1).astype(np.int64)


def backproject_block(
    subtilts: np.ndarray,
    quaternions: np.ndarray,
    codes: np.ndarray,
    subsets: np.ndarray,
    index: np.ndarray,
    tilt_rotations: np.ndarray,
    residuals: np.ndarray | None,
    weights: np.ndarray | None,
    visible: np.ndarray | None,
    from_subsets: bool,
    trilinear: bool,
) -> np.ndarray:
    """One chunk of particles -> (1, 2, V, 3) float64 sums per half (real, imag, weight)."""
    from scipy import fft

    n, n_tilts, box = subtilts.shape[0], subtilts.shape[1], subtilts.shape[-1]
    half = box // 2 + 1
    out = np.zeros((1, 2, box * box * half, 3))
    if n == 0:
        return out
    halves = _halves(subsets, from_subsets, index)
    orientation = _quaternion_matrices(np.asarray(quaternions, dtype=np.float64))
    patches = np.asarray(subtilts, dtype=np.float32)
    seen = np.asarray(np.isfinite(patches).all(axis=(2, 3)))
    if visible is not None:
        seen &= np.asarray(visible, dtype=bool)
    patches = np.where(seen[:, :, None, None], patches, np.float32(0.0))
    spectra = fft.rfft2(fft.ifftshift(patches, axes=(-2, -1)), axes=(-2, -1)).reshape(n, n_tilts, -1)
    if residuals is not None:  # the point sits at box // 2 + residual: move it to box // 2
        ky, kx = np.meshgrid(np.fft.fftfreq(box), np.arange(half) / box, indexing="ij")
        r = np.nan_to_num(np.asarray(residuals, dtype=np.float64))
        phase = r[:, :, 0, None] * kx.ravel() + r[:, :, 1, None] * ky.ravel()
        spectra *= np.exp(2j * np.pi * phase).astype(np.complex64)
    tilt = tilt_rotations[np.asarray(codes, dtype=np.int64)]  # (n, T, 3, 3)
    seen &= np.isfinite(tilt).all(axis=(2, 3))
    for p in range(n):
        rows = np.flatnonzero(seen[p])
        if rows.size == 0:
            continue
        rotation = (tilt[p, rows] @ orientation[p]).astype(np.float32)
        w = None if weights is None else np.asarray(weights[p, rows], dtype=np.float32).reshape(rows.size, -1)
        out[0, halves[p]] += _insert(spectra[p, rows], w, rotation, box, trilinear)
    return out


def _mirror_plane_fix(volume: np.ndarray, conjugate: bool) -> None:
    """Add to the ``kx = 0`` plane its Hermitian mate (``k -> -k``), in place: a sample
    folded onto ``kx >= 0`` also spreads, mirrored, onto ``(0, -ky, -kz)``."""
    box = volume.shape[0]
    mirror = (-np.arange(box)) % box
    plane = volume[:, :, 0]
    mate = plane[mirror][:, mirror]
    volume[:, :, 0] = plane + (np.conj(mate) if conjugate else mate)


def _radius_grid(box: int) -> np.ndarray:
    """|k| in voxels over the (box, box, box // 2 + 1) half volume."""
    k = np.fft.fftfreq(box, 1.0 / box)
    kz, ky, kx = np.meshgrid(k, k, np.arange(box // 2 + 1), indexing="ij")
    return np.sqrt(kx**2 + ky**2 + kz**2)


def _radial_average(values: np.ndarray, radius: np.ndarray, shells: int) -> np.ndarray:
    """RELION's RadialAvg::fftwHalf_3D_lin: each voxel split linearly between its two shells."""
    r0 = np.floor(radius).astype(np.int64)
    f = radius - r0
    total = np.zeros(shells + 1)
    count = np.zeros(shells + 1)
    for shell, w in ((r0, 1 - f), (r0 + 1, f)):
        inside = shell < shells
        total += np.bincount(shell[inside], w[inside] * values[inside], shells + 1)
        count += np.bincount(shell[inside], w[inside], shells + 1)
    return np.divide(total[:shells], count[:shells], out=np.zeros(shells), where=count[:shells] > 0)


def _gridding_correct(volume: np.ndarray, box: int, trilinear: bool) -> np.ndarray:
    """Real-space map (centre at box // 2) of a centred half spectrum, divided by the
    insertion kernel's transform: sinc² (trilinear) or sinc (nearest), floor 0.01."""
    from scipy import fft

    real = fft.fftshift(fft.irfftn(volume, s=(box,) * 3, axes=(0, 1, 2)))
    c = np.arange(box) - box // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) / box
    kernel = np.sinc(r) ** (2 if trilinear else 1)
    kernel = np.where((kernel < GRIDDING_FLOOR) | (r > 1.0), GRIDDING_FLOOR, kernel)
    return real / kernel


def _divide(real: np.ndarray, weight: np.ndarray, box: int, fraction: float, snr: float | None) -> np.ndarray:
    """RELION's ctfCorrect3D_heuristic (or _Wiener with ``snr``): back to Fourier space,
    divide by the (floored) weights, zero at and past Nyquist, return the real map."""
    from scipy import fft

    spectrum = fft.rfftn(fft.ifftshift(real), axes=(0, 1, 2))
    if snr is not None:
        return np.asarray(
            fft.fftshift(fft.irfftn(spectrum / (weight + 1.0 / snr), s=(box,) * 3, axes=(0, 1, 2)))
        )
    radius = _radius_grid(box)
    shells = box // 2 + 1
    average = _radial_average(weight, radius, shells)
    r0 = np.floor(radius).astype(np.int64)
    inside = r0 + 1 < shells
    f = radius - r0
    lo = average[np.minimum(r0, shells - 1)]
    hi = average[np.minimum(r0 + 1, shells - 1)]
    floor = (f * hi + (1 - f) * lo) * fraction
    w = np.maximum(weight, floor)
    spectrum = np.where(inside, spectrum / np.where(w > 0, w, 1.0), 0.0)
    return np.asarray(fft.fftshift(fft.irfftn(spectrum, s=(box,) * 3, axes=(0, 1, 2))))


def soft_sphere_mask(volume: np.ndarray, width: float) -> np.ndarray:
    """RELION's ``Reconstruction::taper`` (the mask of ``merged.mrc``), on a cubic map.

    Inside the sphere of radius ``m = box / 2`` about ``(m, m, m)`` (voxel indices) the
    weight is 1 up to ``m - width`` and ``(1 - cos(pi (m - r) / width)) / 2`` beyond;
    the mean of the map under these weights is subtracted, then the map is multiplied
    by them; outside the sphere it is 0.

    Examples
    --------
    A constant map has nothing left; a map with one bright voxel keeps it, less the mean:

    >>> float(np.abs(soft_sphere_mask(np.full((8, 8, 8), 5.0), 2.0)).max())
    0.0
    >>> spot = np.zeros((8, 8, 8))
    >>> spot[4, 4, 4] = 1.0
    >>> out = soft_sphere_mask(spot, 2.0)
    >>> float(out[0, 0, 0]), bool(0.98 < out[4, 4, 4] < 1.0)
    (0.0, True)
    """
    box = volume.shape[0]
    m = box / 2.0
    c = np.arange(box) - m
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if width > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.clip(m - r, 0.0, width) / width)
        weights = np.where(r < m - width, 1.0, edge)
    else:
        weights = np.ones_like(r)
    weights = np.where(r < m, weights, 0.0)
    mean = float((weights * volume).sum() / weights.sum())
    return weights * (volume - mean) + 0.0  # no -0.0 outside


def finalise(
    sums: np.ndarray,
    box: int,
    symmetry: np.ndarray,
    trilinear: bool,
    fraction: float,
    snr: float | None,
    taper: float,
) -> np.ndarray:
    """(2, V, 3) summed halves -> (3, box, box, box) float32 maps: half1, half2, merged."""
    half = box // 2 + 1
    sums = np.asarray(sums).reshape(2, box, box, half, 3)
    data = sums[..., 0] + 1j * sums[..., 1]
    weight = sums[..., 2].copy()
    for h in range(2):
        _mirror_plane_fix(data[h], conjugate=True)
        _mirror_plane_fix(weight[h], conjugate=False)
        if len(symmetry) > 1:
            data[h] = symmetrise_fourier(data[h], symmetry)
            weight[h] = symmetrise_fourier(weight[h], symmetry)
    maps = np.empty((3, box, box, box), np.float32)
    for i, (d, w) in enumerate(
        ((data[0], weight[0]), (data[1], weight[1]), (data[0] + data[1], weight[0] + weight[1]))
    ):
        corrected = _divide(_gridding_correct(d, box, trilinear), w, box, fraction, snr)
        maps[i] = soft_sphere_mask(corrected, taper) if taper is not None else corrected
    return maps
