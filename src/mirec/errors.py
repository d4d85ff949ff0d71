"""Exceptions that carry a message naming the file, line, field or value at fault."""


class MirecError(Exception):
    """Base class of every error mirec raises on purpose (the CLI prints these without a trace)."""


class MirecDataError(MirecError):
    """Bad input data: the message names the file, the line (or row group), the column and value."""


class MirecConfigError(MirecError):
    """A bad configuration value: the message names the field."""
