"""Readers and writers of the field's files: one module per format family."""

__all__: list[str] = []
