"""errors: one base class, each subclass also the builtin a caller would catch."""

from __future__ import annotations

import pytest

from cryoxr import errors

EXPECTED_BUILTIN = {
    "InvalidValueError": ValueError,
    "SchemaError": ValueError,
    "FormatError": ValueError,
    "UnknownFormatError": ValueError,
    "CryoxrFileNotFoundError": FileNotFoundError,
    "FileExistsNoOverwriteError": FileExistsError,
    "WriteError": OSError,
    "MissingDependencyError": ImportError,
}


@pytest.mark.parametrize("name", [n for n in errors.__all__ if n != "CryoxrError"])
def test_every_error_is_a_cryoxr_error_and_a_builtin(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.CryoxrError)
    assert issubclass(cls, EXPECTED_BUILTIN[name])
    assert cls.__doc__
    with pytest.raises(EXPECTED_BUILTIN[name]):
        raise cls("file.star, line 3, column rlnAngleRot: expected a number, found 'x'")


def test_all_lists_every_error_class() -> None:
    defined = {
        n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.CryoxrError)
    }
    assert defined == set(errors.__all__)
