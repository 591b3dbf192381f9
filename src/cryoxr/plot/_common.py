"""Helpers every figure of :mod:`cryoxr.plot` shares: the lazy pyplot import, new figures,
Å scale bars, pixel-edge extents and percentile contrast.

matplotlib is imported inside the functions only, so importing this module never
imports it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cryoxr.errors import InvalidValueError, MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _pyplot() -> Any:
    """Import matplotlib.pyplot, or explain how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise MissingDependencyError(
            "cryoxr.plot needs matplotlib, which is not installed: pip install 'cryoxr[plot]'"
        ) from err
    return plt


def _nice_length(span: float) -> float:
    """A 1-2-5 length close to a fifth of ``span``."""
    target = span / 5.0
    if not target > 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(target))
    for step in (5.0, 2.0, 1.0):
        if step * power <= target:
            return step * power
    return power


def _length_label(angstrom: float) -> str:
    """``500 Å`` -> ``50 nm``; lengths below 1 nm stay in Å."""
    if angstrom >= 10.0:
        return f"{angstrom / 10.0:g} nm"
    return f"{angstrom:g} Å"


def _add_scale_bar(ax: Axes, span: float, scale_bar: float | bool) -> None:
    """An Å scale bar in the lower right corner of ``ax`` (white on a dark box)."""
    if scale_bar is False:
        return
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _nice_length(span) if scale_bar is True else float(scale_bar)
    if not (math.isfinite(length) and length > 0):
        raise InvalidValueError(f"scale_bar must be True, False or a length > 0 in Å, found {scale_bar!r}")
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        _length_label(length),
        "lower right",
        pad=0.4,
        color="white",
        frameon=False,
        size_vertical=span / 150.0,
        label_top=True,
        fontproperties={"size": 9, "weight": "bold"},
    )
    ax.add_artist(bar)


def _edges(coord: np.ndarray, spacing: float) -> tuple[float, float]:
    """Outer pixel edges of a coordinate, in Å: ``n * spacing`` apart."""
    return float(coord[0]) - spacing / 2.0, float(coord[-1]) + spacing / 2.0


def _contrast(slices: list[np.ndarray], percentiles: tuple[float, float]) -> tuple[float, float]:
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in slices])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def _new_figure(fig: Figure | None, figsize: tuple[float, float]) -> Figure:
    if fig is not None:
        return fig
    return _pyplot().figure(figsize=figsize, layout="constrained")
