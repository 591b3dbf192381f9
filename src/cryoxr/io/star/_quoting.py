"""STAR values as text: when a value is quoted, with which quote, and how a line splits into values.

The rules of STAR 1.1 that RELION and ``starfile`` share, as cryoxr applies them:

- values are separated by blanks (spaces and tabs); a line ends at ``\\n``;
- a value may be delimited by ``'`` or ``"``; the delimited value ends at the first
  closing quote that is followed by a blank or the end of the line, so a value may hold
  its own quote character elsewhere (``'it's'`` is ``it's``);
- an unquoted value that starts with ``#`` begins a comment (the rest of the line).

The writer (:func:`format_text`) quotes a value that is empty, holds any white space
(Unicode's, for other readers' sake), holds ``#``, starts with a character that means
something at the start of a STAR token (``_ # $ ; ' " [ ]``) or with a reserved word
(``data_``, ``loop_``, ``save_``, ``global_``, ``stop_``, in any case), or belongs to a text
column all of whose values read as numbers (so that the column comes back as text). It
takes ``"`` unless the value holds a ``"`` followed by a blank, then ``'``; a value that
holds both a ``"`` and a ``'`` followed by a blank, a line break (``\\n``, ``\\r``) or a
NUL cannot be written as a STAR value and is refused. Every value it writes reads back
identically (tested with hypothesis over Unicode text).

Examples
--------
>>> split_values('1 "a b"  \\'it\\'s\\' "" bare # a comment', path="x.star", line=3)
(['1', 'a b', "it's", '', 'bare'], [False, True, True, True, False])
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cryoxr.errors import FormatError, InvalidValueError

__all__ = ["LINE_BREAKS", "format_text", "split_values"]

#: characters no STAR value can hold (RE2 / Python regex class): line breaks, and NUL, which
#: the reader takes for a binary file
LINE_BREAKS = r"[\n\r\x00]"
#: any of Python's white space (str.isspace), written as an RE2 class
_SPACE = r"[\t-\r\x1c-\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
#: values quoted by the writer (RE2, as pyarrow matches it)
NEEDS_QUOTES = rf"(?i)^$|{_SPACE}|#|^[_$;'\"\[\]]|^(data_|loop_|save_|global_|stop_)"
#: a quote followed by a blank (or at the end): it would close a value quoted with it
_CLOSES_DOUBLE = r'"[ \t]'
_CLOSES_SINGLE = r"'[ \t]"

_VALUE = re.compile(
    r"""[ \t]*(?:
        '(?P<single>(?:[^'\n]|'(?![ \t]|$))*)'(?=[ \t]|$)
      | "(?P<double>(?:[^"\n]|"(?![ \t]|$))*)"(?=[ \t]|$)
      | (?P<bare>[^ \t\n]+)
    )""",
    re.VERBOSE,
)


def split_values(text: str, *, path: Any, line: int) -> tuple[list[str], list[bool]]:
    """The values of one STAR line, and whether each was quoted (a trailing comment dropped).

    Raises
    ------
    FormatError
        A quote that is never closed (naming the file and line).
    """
    values: list[str] = []
    quoted: list[bool] = []
    for match in _VALUE.finditer(text):
        kind = match.lastgroup
        value = match.group(kind or "bare")
        if kind == "bare":
            if value[0] == "#":
                break
            if value[0] in "'\"":
                raise FormatError(
                    f"{path}, line {line}: value {value[:40]!r} opens a {value[0]} quote that is not closed "
                    "(a closing quote must be followed by a blank or the end of the line)"
                )
        values.append(value)
        quoted.append(kind != "bare")
    return values, quoted


def _where(label: str, text: pa.Array, mask: pa.Array) -> str:
    index = pc.index(mask, True).as_py()
    return f"column {label}, row {index}: {text[index].as_py()[:60]!r}"


def format_text(text: pa.Array | pa.ChunkedArray, label: str) -> pa.Array | pa.ChunkedArray:
    """A text column as STAR values: quoted where needed (module docstring), else as is.

    Raises
    ------
    InvalidValueError
        A value that no STAR file can hold (a line break, or both kinds of closing quote).

    Examples
    --------
    >>> import pyarrow as pa
    >>> format_text(pa.array(["a", "a b", 'say "hi"', 'x" y', ""]), "rlnX").to_pylist()
    ['a', '"a b"', '"say "hi""', '\\'x" y\\'', '""']
    >>> format_text(pa.array(["1", "2.5"]), "rlnX").to_pylist()  # a text column, kept text
    ['"1"', '"2.5"']
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    broken = pc.match_substring_regex(text, LINE_BREAKS)
    if pc.any(broken).as_py():
        raise InvalidValueError(
            f"STAR {_where(label, text, broken)}: a line break or a NUL cannot be written in a STAR value"
        )
    closes_double = pc.match_substring_regex(text, _CLOSES_DOUBLE)
    closes_single = pc.match_substring_regex(text, _CLOSES_SINGLE)
    neither = pc.and_(closes_double, closes_single)
    if pc.any(neither).as_py():
        raise InvalidValueError(
            f"STAR {_where(label, text, neither)}: a value holding both a \" and a ' followed by a "
            "blank cannot be quoted in STAR"
        )
    needs = pc.match_substring_regex(text, NEEDS_QUOTES)
    if len(text):
        try:
            pc.cast(text, pa.float64())
            numeric = True  # every value reads as a number: quote them all, so the column stays text
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            numeric = False
        if numeric:
            needs = pa.array([True] * len(text))
    double = pc.binary_join_element_wise('"', text, '"', "")
    single = pc.binary_join_element_wise("'", text, "'", "")
    return pc.if_else(needs, pc.if_else(closes_double, single, double), text)
