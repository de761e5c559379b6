"""Hardware adapters of a node: measurements in, contactor and balancing commands out."""

from __future__ import annotations

from mbms.hardware.base import Hardware
from mbms.node.config import HardwareSection

__all__ = ["Hardware", "make_hardware"]


def make_hardware(cfg: HardwareSection) -> Hardware:
    if cfg.adapter == "sim":
        from mbms.hardware.sim_link import SimLinkHardware

        return SimLinkHardware(cfg.link, cfg.string, cfg.link_timeout_ms / 1000.0)
    raise ValueError(f"unknown hardware adapter {cfg.adapter!r}")
