"""A fast, strict reader and writer of STAR files (RELION's flavour), as tables.

A STAR file is a sequence of data blocks (``data_<name>``), each either a *simple*
block of ``_label value`` pairs or a *loop* block (``loop_``, one ``_label`` line per
column, then one whitespace-separated row per line). RELION precedes each block with a
``# version N`` comment (50001 for RELION 5, 30001 for 3.1/4; none means 3.0).

The format is described as data: :data:`LABEL_TYPES` maps the RELION labels cryoxr
knows to their column type; unknown labels are typed by their content (integer, else
float, else text). Rows are never touched one by one in Python:

- reading (:mod:`cryoxr.io.star._read`): only the header lines are walked in Python; each
  loop body is handed in one piece to pyarrow's multi-threaded CSV parser with the known
  column names and types.
- writing (:mod:`cryoxr.io.star._write`): every column is formatted at once and the rows
  are joined in pyarrow, in chunks of :data:`WRITE_CHUNK_ROWS` rows, so memory stays bounded.

A malformed file raises :class:`~cryoxr.errors.FormatError` naming the file, the line,
the column and what was expected (missing ``loop_``, ragged rows, text where numbers
belong, Windows line endings, bad UTF-8, ...).

Examples
--------
>>> import tempfile, pathlib
>>> import pandas as pd
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.star"
>>> table = pd.DataFrame({"rlnTomoName": ["TS_01", "TS_02"], "rlnAngleRot": [10.0, -3.5]})
>>> write_star([StarBlock("particles", table, version=50001)], path)
>>> print(path.read_text())
<BLANKLINE>
# version 50001
<BLANKLINE>
data_particles
<BLANKLINE>
loop_
_rlnTomoName #1
_rlnAngleRot #2
TS_01 10.0
TS_02 -3.5
<BLANKLINE>
>>> blocks = read_star(path)
>>> blocks["particles"].table.rlnAngleRot.tolist(), blocks["particles"].version
([10.0, -3.5], 50001)
"""

from cryoxr.io.star._block import LABEL_TYPES, StarBlock
from cryoxr.io.star._read import read_star
from cryoxr.io.star._write import (
    WRITE_CHUNK_ROWS,
    format_block_header,
    format_rows,
    write_star,
    write_star_blocks,
)

__all__ = [
    "LABEL_TYPES",
    "WRITE_CHUNK_ROWS",
    "StarBlock",
    "format_block_header",
    "format_rows",
    "read_star",
    "write_star",
    "write_star_blocks",
]
