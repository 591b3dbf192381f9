"""Point-group symmetry: the rotation matrices of C\\ *n*, D\\ *n*, T, O and I, as RELION names them.

:func:`symmetry_matrices` returns every element of a group as (n, 3, 3) rotation
matrices (the identity first), generated from the same axes RELION writes for each
group in ``SymList::fill_symmetry_class`` (``src/symmetries.cpp``) and closed under
multiplication, as RELION's ``compute_subgroup`` closes them:

========  ==============================================================  =====
group     generators (fold, axis)                                          order
========  ==============================================================  =====
C\\ *n*    *n* about z                                                     *n*
D\\ *n*    *n* about z, 2 about x                                          2\\ *n*
T         3 about z, 2 about (0, 0.816496, 0.577350)                      12
O         3 about (1, 1, 1)/√3, 4 about z                                 24
I, I2     2 about z, 5 about (0.525731, 0, 0.850651), 3 about             60
          (0, 0.356822, 0.934172)
I1        2 about x, 5 about (0.850651, 0, -0.525731), 3 about            60
          (0.934172, 0.356822, 0)
I3        2 about (-0.525731, 0, 0.850651), 5 about z, 3 about            60
          (-0.491123, 0.356822, 0.794654)
I4        2 about (0.525731, 0, 0.850651), 5 about (0.894427, 0,          60
          0.447214), 3 about (0.491123, 0.356822, 0.794654)
========  ==============================================================  =====

Names are case-insensitive (RELION upper-cases them). Groups with mirrors or an
inversion (Cnv, Cnh, Dnh, Ci, Cs, Oh, Ih, ...) have no place in a map of a chiral
molecule and are refused, as is RELION's unimplemented I5.

:func:`symmetrise_fourier` averages a half Fourier volume over a group, as RELION's
``Symmetry::symmetrise_FS_complex`` / ``symmetrise_FS_real`` (``src/jaz/image/symmetry.h``)
do to the accumulated data and weights before the division: each voxel ``k`` becomes
the mean of the volume at ``g k`` over the group's elements, sampled trilinearly.

Examples
--------
>>> from cryoxr.symmetry import symmetry_matrices
>>> [len(symmetry_matrices(g)) for g in ("C1", "c4", "D7", "T", "O", "I")]
[1, 4, 14, 12, 24, 60]
>>> symmetry_matrices("C4")[1].round(12).tolist()
[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import re

import numpy as np

from cryoxr.errors import InvalidValueError

__all__ = ["POINT_GROUP_AXES", "symmetrise_fourier", "symmetry_matrices"]

_S5 = (0.525731114, 0.0, 0.850650807)  # the icosahedral 5-fold axes of RELION's tables

#: group name -> (fold, axis) generators, as RELION's ``fill_symmetry_class`` lists them
#: (cyclic and dihedral groups are built from ``n`` in :func:`symmetry_matrices`)
POINT_GROUP_AXES: dict[str, tuple[tuple[int, tuple[float, float, float]], ...]] = {
    "T": ((3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))),
    "O": ((3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))),
    "I": ((2, (0.0, 0.0, 1.0)), (5, _S5), (3, (0.0, 0.356822076, 0.934172364))),
    "I1": (
        (2, (1.0, 0.0, 0.0)),
        (5, (0.85065080702670, 0.0, -0.5257311142635)),
        (3, (0.9341723640, 0.3568220765, 0.0)),
    ),
    "I2": ((2, (0.0, 0.0, 1.0)), (5, _S5), (3, (0.0, 0.356822076, 0.934172364))),
    "I3": (
        (2, (-0.5257311143, 0.0, 0.8506508070)),
        (5, (0.0, 0.0, 1.0)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
    "I4": (
        (2, (0.5257311143, 0.0, 0.8506508070)),
        (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
}

#: the largest n of Cn / Dn accepted (RELION parses at most two digits)
MAX_FOLD = 99


def _axis_rotation(fold: int, axis: tuple[float, float, float]) -> np.ndarray:
    """The rotation by 360/fold degrees about ``axis`` (normalised), right-handed."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    theta = 2.0 * np.pi / fold
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)


def _close(generators: list[np.ndarray], *, limit: int = 240, tolerance: float = 1e-4) -> np.ndarray:
    """Every product of the generators (breadth first), identity first; RELION's axes are
    given to 6-9 digits, so elements equal within ``tolerance`` are one element."""
    elements = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        fresh = []
        for g in frontier:
            for h in generators:
                product = h @ g
                if not any(np.abs(product - e).max() < tolerance for e in elements):
                    elements.append(product)
                    fresh.append(product)
                    if len(elements) > limit:  # pragma: no cover - the tables above are groups
                        raise InvalidValueError("symmetry: the generators do not close into a point group")
        frontier = fresh
    return np.stack(elements)


def symmetry_matrices(group: str) -> np.ndarray:
    """The rotations of a point group, as RELION defines its axes.

    Parameters
    ----------
    group
        ``C1``..``C99``, ``D1``..``D99``, ``T``, ``O``, ``I`` (= ``I2``, RELION's default
        icosahedral setting), ``I1``, ``I3`` or ``I4``; case-insensitive.

    Returns
    -------
    numpy.ndarray
        (order, 3, 3) float64 rotation matrices, the identity first. They act on
        column vectors ``(x, y, z)`` of the map's frame (the reference frame of the
        particles).

    Raises
    ------
    InvalidValueError
        An unknown name, a group with mirrors or an inversion, or n outside 1..99.

    Examples
    --------
    >>> m = symmetry_matrices("D2")
    >>> sorted(np.round(np.trace(m, axis1=1, axis2=2)).tolist())
    [-1.0, -1.0, -1.0, 3.0]
    """
    if not isinstance(group, str):
        raise InvalidValueError(
            f"symmetry: expected a point-group name such as 'C1' or 'D7', found {group!r}"
        )
    name = group.strip().upper()
    match = re.fullmatch(r"([CD])(\d{1,2})", name)
    if match:
        n = int(match.group(2))
        if not 1 <= n <= MAX_FOLD:
            raise InvalidValueError(f"symmetry {group!r}: n must be 1..{MAX_FOLD}, found {n}")
        turns = np.stack([np.linalg.matrix_power(_axis_rotation(n, (0.0, 0.0, 1.0)), k) for k in range(n)])
        if match.group(1) == "C":
            return turns
        return np.concatenate([turns, _axis_rotation(2, (1.0, 0.0, 0.0)) @ turns])
    axes = POINT_GROUP_AXES.get(name)
    if axes is None:
        raise InvalidValueError(
            f"symmetry: expected C<n>, D<n> (n = 1..{MAX_FOLD}), T, O, I, I1, I2, I3 or I4, found {group!r} "
            "(groups with mirrors or an inversion do not describe a chiral molecule)"
        )
    return _close([_axis_rotation(fold, axis) for fold, axis in axes])


def _sample_half(volume: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear samples of a (box, box, box // 2 + 1) half spectrum at (n, 3) xyz
    frequencies (voxels); points with x < 0 read their Hermitian mate, conjugated."""
    box, half = volume.shape[0], volume.shape[2]
    flip = points[:, 0] < 0
    points = np.where(flip[:, None], -points, points)
    low = np.floor(points)
    f = points - low
    x0, y0, z0 = (low[:, a].astype(np.int64) for a in range(3))
    out = np.zeros(len(points), dtype=volume.dtype)
    for dz in (0, 1):
        wz = f[:, 2] if dz else 1 - f[:, 2]
        z = (z0 + dz) % box
        for dy in (0, 1):
            wzy = wz * (f[:, 1] if dy else 1 - f[:, 1])
            y = (y0 + dy) % box
            for dx in (0, 1):
                x = x0 + dx
                inside = x < half
                w = wzy * (f[:, 0] if dx else 1 - f[:, 0]) * inside
                out += w * volume[z, y, np.minimum(x, half - 1)]
    return np.where(flip, np.conj(out), out) if np.iscomplexobj(out) else out


def symmetrise_fourier(volume: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """The mean of a half spectrum over a point group: ``out(k) = mean_g volume(g k)``.

    Parameters
    ----------
    volume
        (box, box, box // 2 + 1) real or complex half spectrum (``numpy.fft.rfftn``
        layout, axes z, y, x) of a map centred at ``box // 2``.
    matrices
        (order, 3, 3) rotations, e.g. :func:`symmetry_matrices`.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``volume``.

    Examples
    --------
    A map made 4-fold symmetric about z is unchanged by a quarter turn about its centre
    (an odd box: ``rot90`` turns about the middle voxel):

    >>> rng = np.random.default_rng(0)
    >>> vol = np.fft.rfftn(np.fft.ifftshift(rng.normal(size=(15, 15, 15))))
    >>> sym = np.fft.fftshift(np.fft.irfftn(symmetrise_fourier(vol, symmetry_matrices("C4")),
    ...                                     s=(15,) * 3, axes=(0, 1, 2)))
    >>> bool(np.allclose(np.rot90(sym, 1, axes=(1, 2)), sym))
    True
    """
    box, half = volume.shape[0], volume.shape[2]
    k = np.fft.fftfreq(box, 1.0 / box)
    kz, ky, kx = np.meshgrid(k, k, np.arange(half, dtype=np.float64), indexing="ij")
    points = np.stack([kx.ravel(), ky.ravel(), kz.ravel()], axis=1)
    total = np.zeros(points.shape[0], dtype=volume.dtype)
    for g in matrices:
        total += _sample_half(volume, points @ np.asarray(g).T)
    return (total / len(matrices)).reshape(volume.shape)
