"""Typed errors of mbms. Every error names what was wrong and what was expected."""

from __future__ import annotations

import contextlib
import enum
import errno
import sys
from collections.abc import Iterator


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
    """The machine, not the configuration, stops the command: no CAN interface, permission
    denied, a port already in use, an unreachable broker or plant, a missing optional package.

    The configuration may be right and the same command may work once the environment is fixed,
    so it has its own exit code (:attr:`ExitCode.ENVIRONMENT`). ``what`` names the resource
    (``CAN interface 'can0' (socketcan)``, ``udp://127.0.0.1:47000``), ``problem`` says what is
    wrong with it and ``hint`` what the user can do.
    """

    def __init__(self, what: str, problem: str, hint: str | None = None) -> None:
        self.what = what
        self.problem = problem
        self.hint = hint
        super().__init__(f"{what}: {problem}" + (f"; {hint}" if hint else ""))


class ExitCode(enum.IntEnum):
    """Exit codes of every ``mbms`` command (README "Exit codes", ``mbms --help``)."""

    OK = 0
    #: The run found what it checks for: a safety invariant violated (sim, bench consensus),
    #: a member never seen (monitor --once).
    FAILED_CHECK = 1
    #: Bad command line or configuration (file, dotted field, expected value in the message).
    USAGE = 2
    #: The environment: no CAN interface, permission denied, port in use, peer/broker unreachable,
    #: a missing optional package.
    ENVIRONMENT = 3
    #: A bug in mbms: the traceback is printed; please report it.
    INTERNAL = 4
    #: Stopped by Ctrl-C (128 + SIGINT, the shell convention).
    INTERRUPTED = 130


# errno -> (problem, hint): what a user can do about the OS errors an mbms command meets.
_ERRNO_HINTS: dict[int, tuple[str, str]] = {
    errno.EADDRINUSE: ("address already in use", "another process listens there: stop it or choose another port"),
    errno.EACCES: ("permission denied", "run as a user with access to it (group membership, file mode, capabilities)"),
    errno.EPERM: ("operation not permitted", "run as a user with the needed rights (e.g. CAP_NET_ADMIN/CAP_NET_RAW)"),
    errno.ENODEV: ("no such device", "is the interface present and up? `ip link show`"),
    errno.ENXIO: ("no such device or address", "is the interface present and up? `ip link show`"),
    errno.EAFNOSUPPORT: ("address family not supported by the kernel", "load the kernel module (e.g. `modprobe can`)"),
    errno.ECONNREFUSED: ("connection refused", "is the peer/broker/plant running and listening there?"),
    errno.EHOSTUNREACH: ("host unreachable", "check the address and the network"),
    errno.ENETUNREACH: ("network unreachable", "check the address, the interface and the routes"),
    errno.ETIMEDOUT: ("timed out", "is the remote side running and reachable?"),
    errno.EADDRNOTAVAIL: ("address not available on this host", "check the interface address in the config"),
    errno.ENOENT: ("no such file or socket", "is the path right, and the serving process running?"),
}


def environment_problem(what: str, exc: BaseException) -> EnvironmentProblem | None:
    """The :class:`EnvironmentProblem` an exception met while opening/using ``what`` stands for:
    an OS error with an errno, or python-can's "cannot open this interface" errors; else None
    (a bug, not the environment)."""
    if isinstance(exc, EnvironmentProblem):
        return exc
    can = sys.modules.get("can")  # python-can is only imported where CAN is used
    if can is not None and isinstance(exc, (can.CanInitializationError, can.CanInterfaceNotImplementedError)):
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
        if cause is None or cause.errno not in _ERRNO_HINTS:
            return EnvironmentProblem(what, " ".join(str(exc).split()),
                                      "is the interface present, up and supported by this kernel/driver?")
        exc = cause
    if isinstance(exc, OSError) and exc.errno is not None:
        problem, hint = _ERRNO_HINTS.get(exc.errno, (exc.strerror or str(exc), None))
        if exc.errno in (errno.EAFNOSUPPORT, errno.ENODEV) and "can" in what.lower():
            hint = ("this kernel has no CAN support or no such CAN interface: `modprobe can can_raw`, then "
                    "bring it up (mbms/data/linux/socketcan-setup.sh); or use a UDP transport")
        return EnvironmentProblem(what, problem, hint)
    return None


@contextlib.contextmanager
def opening(what: str) -> Iterator[None]:
    """Open ``what`` (a sensor link, a transport, a listening socket) inside this block: an
    exception that stands for a problem of the machine becomes its :class:`EnvironmentProblem`
    (one line, exit 3); anything else propagates unchanged."""
    try:
        yield
    except Exception as exc:
        env = environment_problem(what, exc)
        if env is None:
            raise
        raise env from exc
