"""mbms: a multi-master battery management system for parallel strings.

Layers, each using only the ones below it:

* ``mbms._core``: the Rust core (pack engine, plant simulator, consensus) - pure, no I/O.
* ``mbms.engine`` / ``mbms.plant`` / ``mbms.consensus``: typed Python APIs over the core.
* ``mbms.node`` / ``mbms.transport`` / ``mbms.discovery``: the runtime of one BMU.
* ``mbms.sim``: multi-node simulation; ``mbms.cli``: the command line.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mbms")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
