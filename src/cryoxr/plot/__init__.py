"""Matplotlib figures of tomograms, projected particles, orientations and tilt schemes.

matplotlib is an optional extra (``pip install 'cryoxr[plot]'``): the modules of this
package import it inside each function, so ``import cryoxr.plot`` works without it and a
call raises :class:`MissingDependencyError` (a :class:`~cryoxr.errors.CryoxrError` and an
``ImportError``) when it is missing.

Modules: :mod:`~cryoxr.plot.images` (orthoslices, projected particles),
:mod:`~cryoxr.plot.orientations` (view-direction histograms), :mod:`~cryoxr.plot.tilts`
(tilt scheme); shared figure helpers in ``_common``. The public names are re-exported here.

Every function **returns the** :class:`matplotlib.figure.Figure` it drew on; its axes are
``fig.axes``. Single-panel plots (:func:`plot_projected`, :func:`plot_orientations`) take
an ``ax=`` to draw into an existing axes (the figure returned is ``ax.figure``);
multi-panel plots (:func:`plot_orthoslices`, :func:`plot_tilt_scheme`) take a ``fig=``
to fill. Without either, a new pyplot figure is created (close it with
``plt.close(fig)``).

Each function computes only what it draws: three slices of a lazy tomogram, one tilt
image, one streaming histogram of the orientations -- never a whole volume or set.

Units: image axes are in Å (the coords of the data), with a scale bar; shifts of a
projection model are in pixels of its tilt images, as in the model.

Examples
--------
>>> import matplotlib.pyplot as plt
>>> import numpy as np
>>> import cryoxr
>>> from cryoxr.plot import plot_orthoslices
>>> tomo = cryoxr.Tomogram.from_array(np.random.default_rng(0).normal(size=(20, 40, 50)),
...                                   pixel_spacing=10.0, experiment_id="TS_01")
>>> fig = plot_orthoslices(tomo)
>>> [ax.get_xlabel() for ax in fig.axes]
['x (Å)', 'z (Å)', 'x (Å)']
>>> plt.close(fig)
"""

from cryoxr.errors import MissingDependencyError
from cryoxr.plot.average import plot_average
from cryoxr.plot.images import IN_VIEW_COLOR as IN_VIEW_COLOR
from cryoxr.plot.images import OUT_OF_VIEW_COLOR as OUT_OF_VIEW_COLOR
from cryoxr.plot.images import plot_orthoslices, plot_projected
from cryoxr.plot.maps import plot_map_slices
from cryoxr.plot.orientations import SCATTER_MAX as SCATTER_MAX
from cryoxr.plot.orientations import UNIT_VECTORS as UNIT_VECTORS
from cryoxr.plot.orientations import orientation_histogram, plot_orientations
from cryoxr.plot.tilts import plot_tilt_scheme

__all__ = [
    "MissingDependencyError",
    "orientation_histogram",
    "plot_average",
    "plot_map_slices",
    "plot_orientations",
    "plot_orthoslices",
    "plot_projected",
    "plot_tilt_scheme",
]
