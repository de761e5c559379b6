"""Where the hardware data (cell parameter sets, example configs, CAN database) lives."""

from __future__ import annotations

import os
from pathlib import Path

from mbms.errors import ConfigError


def hw_dir() -> Path:
    """The ``hw/`` folder: ``$MBMS_HW_DIR`` if set, else the one of the source checkout."""
    env = os.environ.get("MBMS_HW_DIR")
    if env:
        return Path(env)
    # python/mbms/paths.py -> repository root is two levels above the package
    return Path(__file__).resolve().parents[2] / "hw"


def cell_file(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a cell parameter set: a path to a TOML file, or a name in ``hw/cells/``."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = hw_dir() / "cells" / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if candidate.exists():
        return candidate
    known = sorted(f.stem for f in (hw_dir() / "cells").glob("*.toml"))
    raise ConfigError(
        "cell",
        f"cell parameter file {str(name_or_path)!r} not found; expected a path to a .toml file "
        f"or one of {known}",
    )
