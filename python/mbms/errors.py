"""Typed errors of mbms. Every error names what was wrong and what was expected."""

from __future__ import annotations


class MbmsError(Exception):
    """Base of all mbms errors."""


class ConfigError(MbmsError, ValueError):
    """A configuration (pack, system, scenario, cell file) is invalid.

    ``field`` is the dotted path of the offending key (e.g. ``protection.cell_ov.fault_v``),
    ``source`` the file it came from, if any.
    """

    def __init__(self, field: str, message: str, source: str | None = None) -> None:
        self.field = field
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}")


class InputError(MbmsError, ValueError):
    """A step input (array length, dtype, value) is invalid."""


class FrameError(MbmsError, ValueError):
    """A received frame or message is malformed, foreign, stale or oversized."""


class EnvironmentProblem(MbmsError):
    """The machine cannot provide what a valid configuration asks for: a CAN interface that does
    not exist here, a state directory that cannot be written, an address that cannot be bound.

    Not a bug and not a bad file: the message names the config field (``field``), the file it came
    from (``source``) and what the machine said, in one line (``mbms`` exits with code 3).
    """

    def __init__(self, field: str, message: str, source: str | None = None) -> None:
        self.field = field
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}")
