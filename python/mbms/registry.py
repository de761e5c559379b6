"""Registries of peer transports and hardware adapters, python-can style: entry points.

python-can finds its interfaces through the ``can.interface`` entry-point group, so a new CAN
interface is a separately installed distribution. mbms does the same for its two kinds of
plug-in (pyproject.toml declares the built-in ones in the same groups):

* ``mbms.transports``: a system file's ``transport.kind`` names one. The entry point is a
  :class:`mbms.transport.base.Transport` subclass with ``from_config(system, node_id)``
  (third-party settings: ``[transport.options]``).
* ``mbms.hardware``: a pack file's ``hardware.adapter`` names one. The entry point is a
  :class:`mbms.hardware.base.Hardware` subclass with ``from_config(section)`` (third-party
  settings: ``[hardware.options]``).

A third-party distribution declares, in its own pyproject.toml::

    [project.entry-points."mbms.hardware"]
    myafe = "mbms_myafe:MyAfeHardware"

and a pack file then says ``adapter = "myafe"``. Nothing in mbms is edited.

A name that is not installed, or whose entry point does not load or is not the right kind of
class, is a :class:`mbms.errors.ConfigError` naming the file and field (``mbms node --check``
reports it as a finding, a start refuses it).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from mbms.errors import ConfigError

TRANSPORTS = "mbms.transports"
HARDWARE = "mbms.hardware"


def _entry_points(group: str) -> dict[str, EntryPoint]:
    # Read on every call (not cached): a distribution installed while a process runs (a test's
    # temporary dist-info on sys.path) is found, as python-can finds it.
    return {ep.name: ep for ep in entry_points(group=group)}


def names(group: str) -> list[str]:
    """The installed names of ``group`` (sorted)."""
    return sorted(_entry_points(group))


def load(group: str, name: str, base: type, field: str, source: str | None = None) -> Any:
    """The class registered as ``name`` in ``group``; it must be a subclass of ``base``."""
    eps = _entry_points(group)
    ep = eps.get(name)
    if ep is None:
        raise ConfigError(field, f"expected one of {sorted(eps)} (installed {group} entry points), got {name!r}",
                          source)
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is a config problem, named, never a traceback
        raise ConfigError(field, f"the {group} entry point {name!r} = {ep.value!r} does not load: "
                                 f"{type(exc).__name__}: {exc}", source) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(field, f"the {group} entry point {name!r} = {ep.value!r} is not a "
                                 f"{base.__module__}.{base.__qualname__} subclass", source)
    if not callable(getattr(cls, "from_config", None)):
        raise ConfigError(field, f"the {group} entry point {name!r} = {ep.value!r} has no from_config", source)
    return cls
