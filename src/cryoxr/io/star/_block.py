"""What a STAR file holds, shared by the reader and the writer: :class:`StarBlock`, and
:data:`LABEL_TYPES`, the column types of the RELION labels cryoxr knows (the format
described as data).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

__all__ = ["LABEL_TYPES", "StarBlock"]

#: RELION labels whose column type cryoxr knows: label -> "float", "int" or "str".
#: Any other label is typed by its content (integer, else float, else text).
LABEL_TYPES: dict[str, str] = {
    **dict.fromkeys(
        [
            "rlnTomoName",
            "rlnMicrographName",
            "rlnMicrographMovieName",
            "rlnImageName",
            "rlnTomoParticleName",
            "rlnOpticsGroupName",
            "rlnTomoTiltSeriesStarFile",
            "rlnTomoTiltSeriesName",
            "rlnTomoReconstructedTomogram",
            "rlnTomoImportImodDir",
            "rlnTomoImportCtfFindFile",
            "rlnEtomoDirectiveFile",
            "rlnMtfFileName",
            "rlnCtfImage",
            "rlnTomoVisibleFrames",
            "rlnMicrographMetadata",
            "rlnReferenceImage",
            "rlnTomoProjX",
            "rlnTomoProjY",
            "rlnTomoProjZ",
            "rlnTomoProjW",
        ],
        "str",
    ),
    **dict.fromkeys(
        [
            "rlnOpticsGroup",
            "rlnClassNumber",
            "rlnGroupNumber",
            "rlnRandomSubset",
            "rlnImageSize",
            "rlnImageDimensionality",
            "rlnNrOfSignificantSamples",
            "rlnTomoSizeX",
            "rlnTomoSizeY",
            "rlnTomoSizeZ",
            "rlnTomoFrameCount",
            "rlnTomoTiltMovieFrameCount",
            "rlnTomoSubTomosAre2DStacks",
            "rlnCtfDataAreCtfPremultiplied",
            "rlnTomoParticleId",
            "rlnTomoManifoldIndex",
        ],
        "int",
    ),
    **dict.fromkeys(
        [
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnCoordinateZ",
            "rlnCenteredCoordinateXAngst",
            "rlnCenteredCoordinateYAngst",
            "rlnCenteredCoordinateZAngst",
            "rlnOriginXAngst",
            "rlnOriginYAngst",
            "rlnOriginZAngst",
            "rlnOriginX",
            "rlnOriginY",
            "rlnOriginZ",
            "rlnAngleRot",
            "rlnAngleTilt",
            "rlnAnglePsi",
            "rlnTomoSubtomogramRot",
            "rlnTomoSubtomogramTilt",
            "rlnTomoSubtomogramPsi",
            "rlnTomoTiltSeriesPixelSize",
            "rlnMicrographPixelSize",
            "rlnMicrographOriginalPixelSize",
            "rlnImagePixelSize",
            "rlnTomoSubtomogramBinning",
            "rlnTomoTomogramBinning",
            "rlnTomoHand",
            "rlnVoltage",
            "rlnSphericalAberration",
            "rlnAmplitudeContrast",
            "rlnTomoXTilt",
            "rlnTomoYTilt",
            "rlnTomoZRot",
            "rlnTomoXShiftAngst",
            "rlnTomoYShiftAngst",
            "rlnTomoNominalStageTiltAngle",
            "rlnTomoNominalTiltAxisAngle",
            "rlnTomoNominalDefocus",
            "rlnMicrographPreExposure",
            "rlnDefocusU",
            "rlnDefocusV",
            "rlnDefocusAngle",
            "rlnCtfMaxResolution",
            "rlnCtfFigureOfMerit",
            "rlnCtfScalefactor",
            "rlnCtfBfactor",
            "rlnPhaseShift",
            "rlnLogLikeliContribution",
            "rlnMaxValueProbDistribution",
            "rlnNormCorrection",
        ],
        "float",
    ),
}


@dataclass
class StarBlock:
    """One data block of a STAR file.

    Parameters
    ----------
    name
        The block name, without ``data_``.
    table
        The block's content: one row per loop row, columns in file order. A simple
        (non-loop) block is a one-row table.
    loop
        Whether the block is a ``loop_`` block.
    version
        The number of the ``# version N`` line before the block, or None.
    """

    name: str
    table: pd.DataFrame
    loop: bool = True
    version: int | None = None
