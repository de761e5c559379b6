"""Where mbms finds its data: cell parameter sets, pack and system files, the CAN database,
scenarios, reference traces, Linux integration files and JSON schemas.

All of it ships inside the package (``mbms/data/``, read through :mod:`importlib.resources`), so
an installed wheel needs no source checkout. A user's own hardware folder with the same layout
(``cells/``, ``packs/``, ``systems/``, ``dbc/``, ``scenarios/``) is named by ``$MBMS_HW_DIR``;
names are looked up there first, then in the shipped data. A name that is found nowhere is a
:class:`~mbms.errors.ConfigError` that lists every folder looked in and the names available.

``python -m mbms.paths`` prints the folders searched (e.g. to copy the systemd unit from
``linux/``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from mbms.errors import ConfigError

#: Environment variable naming a user's own hardware folder, searched before the shipped data.
HW_DIR_ENV = "MBMS_HW_DIR"


def data_dir() -> Path:
    """The data folder shipped inside the installed package (``mbms/data``)."""
    root = resources.files("mbms").joinpath("data")
    # The package holds a compiled extension module, so it is never imported from a zip
    # archive: its resources are plain files and a Traversable here is a filesystem Path.
    if not isinstance(root, Path):
        raise ConfigError("mbms.data", f"package data at {root!r} is not on the filesystem; "
                                       "install mbms as a regular (unzipped) package")
    return root


# The folder that used to be ``hw/`` in the source tree: the shipped data.
hw_dir = data_dir


def search_dirs(kind: str) -> list[Path]:
    """The folders a name of ``kind`` (``cells``, ``packs``, ...) is looked up in, in order."""
    dirs = []
    env = os.environ.get(HW_DIR_ENV)
    if env:
        dirs.append(Path(env) / kind)
    dirs.append(data_dir() / kind)
    return dirs


def find(kind: str, name_or_path: str | os.PathLike[str], *, suffix: str = ".toml",
         what: str | None = None, field: str | None = None, path_ok: bool = True) -> Path:
    """Resolve an existing file path, or a bare name (with or without ``suffix``) in the ``kind``
    folders. A path with a folder part is taken as given: it is never replaced by a shipped file
    of the same name.

    ``what`` names the file in the error (default: ``"<kind> file"``), ``field`` the dotted
    config field it came from (default: ``kind``); ``path_ok=False`` ignores files in the
    working directory (for data that is only ever looked up by name).
    """
    p = Path(name_or_path)
    if path_ok and p.is_file():
        return p
    dirs = search_dirs(kind)
    if len(p.parts) == 1:
        fname = p.name if p.suffix == suffix else f"{p.name}{suffix}"
        for d in dirs:
            if (d / fname).is_file():
                return d / fname
    known = sorted({f.name.removesuffix(suffix) for d in dirs if d.is_dir() for f in d.glob(f"*{suffix}")})
    looked = ", ".join(str(d) for d in dirs)
    raise ConfigError(
        field or kind,
        f"{what or kind.rstrip('s') + ' file'} {str(name_or_path)!r} not found (looked for that path "
        f"and in {looked}); expected a path to a {suffix} file or one of {known}",
    )


def cell_file(name_or_path: str | os.PathLike[str], field: str = "cell") -> Path:
    """A cell parameter set: a path to a TOML file, or a name in ``cells/``."""
    return find("cells", name_or_path, what="cell parameter file", field=field)


def pack_file(name_or_path: str | os.PathLike[str], field: str = "pack") -> Path:
    """A pack file: a path, or a name in ``packs/`` (e.g. ``example_pack``, ``node1``)."""
    return find("packs", name_or_path, what="pack file", field=field)


def system_file(name_or_path: str | os.PathLike[str], field: str = "system") -> Path:
    """A system file: a path, or a name in ``systems/`` (e.g. ``example_system_udp``)."""
    return find("systems", name_or_path, what="system file", field=field)


def scenario_file(name_or_path: str | os.PathLike[str], field: str = "scenario") -> Path:
    """A scenario: a path, or a name in ``scenarios/`` (e.g. ``partition``)."""
    return find("scenarios", name_or_path, what="scenario file", field=field)


def dbc_file(name: str = "mbms.dbc") -> Path:
    """The CAN database (``dbc/mbms.dbc``)."""
    return find("dbc", name, suffix=".dbc", what="CAN database", field="dbc", path_ok=False)


def traces_dir() -> Path:
    """The shipped physics-based reference traces (``traces/dfn_<cell>.npz``) of ``mbms bench soc``."""
    return data_dir() / "traces"


def schemas_dir() -> Path:
    """The JSON schemas of the configuration files (``schemas/``)."""
    return data_dir() / "schemas"


if __name__ == "__main__":  # python -m mbms.paths
    print(f"shipped data: {data_dir()}")
    env = os.environ.get(HW_DIR_ENV)
    print(f"${HW_DIR_ENV}: {env or '(not set)'}")
