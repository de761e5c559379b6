"""Hardware adapters of a node: measurements in, contactor and balancing commands out. The
adapter a pack file names is looked up in the ``mbms.hardware`` entry-point group
(:mod:`mbms.registry`): ``sim`` is built in, others install as their own distributions."""

from __future__ import annotations

from mbms import registry
from mbms.config_views import HardwareSection
from mbms.hardware.base import Hardware

__all__ = ["Hardware", "hardware_class", "make_hardware"]


def hardware_class(cfg: HardwareSection, source: str | None = None) -> type[Hardware]:
    """The registered adapter ``hardware.adapter`` names (ConfigError if none is installed)."""
    cls: type[Hardware] = registry.load(registry.HARDWARE, cfg.adapter, Hardware, "hardware.adapter", source)
    return cls


def make_hardware(cfg: HardwareSection, source: str | None = None) -> Hardware:
    hw: Hardware = hardware_class(cfg, source).from_config(cfg)  # type: ignore[attr-defined]
    return hw
