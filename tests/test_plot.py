"""cryoxr.plot as a package: importing it needs no matplotlib, a call without it says how to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cryoxr
from cryoxr.errors import CryoxrError
from cryoxr.plot import MissingDependencyError, plot_tilt_scheme


def test_importing_plot_and_napari_imports_neither_matplotlib_nor_napari() -> None:
    code = (
        "import sys, cryoxr.plot, cryoxr.napari; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'napari'}); "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_matplotlib_raises_a_clear_cryoxr_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    model = cryoxr.make_projection_model(experiment_id="t", pixel_spacing=1.0)
    with pytest.raises(MissingDependencyError, match=r"pip install 'cryoxr\[plot\]'") as info:
        plot_tilt_scheme(model)
    assert isinstance(info.value, CryoxrError)
    assert isinstance(info.value, ImportError)
