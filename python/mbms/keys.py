"""The message keys of a battery system (brief S7): key files, their permissions, rotation.

Every node of one system shares its keys (CMAC-AES-128, RFC 4493; the tag is computed and checked
in Rust, ``consensus/src/auth.rs``). A key file is TOML, mode 0600::

    # mbms message keys of system "example-rack". Secret: keep mode 0600.
    system_id = "example-rack"
    keys = ["00112233445566778899aabbccddeeff"]   # 1 or 2 keys: the first signs, every one verifies
    rollover = "accepting"                        # only during a rotation (see below)

Rotation without downtime (``mbms keys rotate FILE``, three times, a rolling restart of the nodes
after each): ``[old]`` -> ``[old, new]`` (``accepting``: the new key verifies on every node) ->
``[new, old]`` (``signing``: nodes sign with the new key, the old one still verifies) -> ``[new]``.
At every step any two nodes accept each other's messages.

A node refuses to start (:class:`~mbms.errors.ConfigError` naming the file and what to do) when
the system file has no ``[auth]``, the key file is missing, unreadable, not owned by the user,
readable or writable by group/others, or not a key file of this system. ``[auth] off = true``
runs without authentication: logged as a warning at every start.

Where the keys come from is a :class:`KeyProvider`; :class:`FileKeyProvider` is the software
provider. A TPM/HSM provider (PKCS#11) would implement the same interface; the keys would then
never reach Python at all only once the MAC runs behind the same interface too.
"""

from __future__ import annotations

import abc
import logging
import os
import secrets
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path

from mbms.config_views import SystemConfig
from mbms.errors import ConfigError

log = logging.getLogger("mbms.keys")

#: CMAC-AES-128 key length (bytes); the Rust side checks it again.
KEY_BYTES = 16
#: Permission bits a key file must not have (group/other read, write, execute).
FORBIDDEN_MODE = 0o077


class KeyProvider(abc.ABC):
    """Where a node's message keys come from."""

    @abc.abstractmethod
    def keys(self) -> list[bytes]:
        """The system's keys, the signing key first (1 or 2 of :data:`KEY_BYTES`)."""


class FileKeyProvider(KeyProvider):
    """The software provider: a key file of this module's format, checked before it is read."""

    def __init__(self, path: Path, system_id: str, source: str | None = None) -> None:
        self.path = Path(path)
        self.system_id = system_id
        self.source = source

    def _error(self, message: str) -> ConfigError:
        return ConfigError("auth.key_file", f"{self.path}: {message}", self.source)

    def keys(self) -> list[bytes]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise self._error(f"no such key file; create it with `mbms keys new {self.path} "
                              f"--system {self.system_id}` and copy it to every node (mode 0600)") from None
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise self._error("not a regular file")
        if st.st_mode & FORBIDDEN_MODE:
            raise self._error(f"mode {stat.S_IMODE(st.st_mode):#o} lets others read or change the keys; "
                              f"expected 0600 (chmod 600 {self.path})")
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise self._error(f"owned by uid {st.st_uid}, not by the user running the node ({os.geteuid()})")
        try:
            doc = tomllib.loads(self.path.read_text())
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise self._error(f"not a key file (TOML): {exc}") from None
        return parse_key_doc(doc, self.system_id, self._error)


def parse_key_doc(doc: dict[str, object], system_id: str, err: Callable[[str], ConfigError]) -> list[bytes]:
    """The keys of a parsed key file of system ``system_id`` (``err(message)`` makes the error)."""
    unknown = set(doc) - {"system_id", "keys", "rollover"}
    if unknown:
        raise err(f"unknown fields {sorted(unknown)}; expected system_id, keys, rollover")
    if doc.get("system_id") != system_id:
        raise err(f"system_id = {doc.get('system_id')!r}: a key file of another system; "
                  f"expected {system_id!r}")
    raw = doc.get("keys")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2:
        raise err("keys: expected a list of 1 or 2 keys (32 hex digits each)")
    out = []
    for i, k in enumerate(raw):
        try:
            b = bytes.fromhex(k) if isinstance(k, str) else b""
        except ValueError:
            b = b""
        if len(b) != KEY_BYTES or not any(b):
            raise err(f"keys[{i}]: expected {2 * KEY_BYTES} hex digits of a non-zero key")
        out.append(b)
    if len(set(out)) != len(out):
        raise err("keys: the same key twice")
    if doc.get("rollover") not in (None, "accepting", "signing") or (len(out) == 2) != ("rollover" in doc):
        raise err("rollover: expected \"accepting\" or \"signing\" with two keys, absent with one")
    return out


def system_keys(system: SystemConfig) -> list[bytes] | None:
    """The keys a node of ``system`` runs with, or None with ``[auth] off = true`` (logged).
    Raises ConfigError when start-up must stop (see the module docstring)."""
    auth = system.auth
    if auth is None:
        raise ConfigError("auth", "missing: a node needs the system's message keys (brief S7); add "
                          "[auth] key_file = \"FILE\" (create it with `mbms keys new FILE --system "
                          f"{system.system_id}`), or off = true to run without authentication", system.source)
    if auth.off:
        log.warning("message authentication is OFF for system %s ([auth] off = true in %s): any device "
                    "on the peer network can speak for a node", system.system_id, system.source)
        return None
    assert auth.key_file is not None  # the core requires key_file or off
    return FileKeyProvider(auth.key_file, system.system_id, system.source).keys()


def _text(system_id: str, keys: list[bytes], rollover: str | None) -> str:
    lines = [f'# mbms message keys of system "{system_id}". Secret: keep mode 0600.',
             f'system_id = "{system_id}"',
             "keys = [" + ", ".join(f'"{k.hex()}"' for k in keys) + "]   # the first signs, every one verifies"]
    if rollover:
        lines.append(f'rollover = "{rollover}"')
    return "\n".join(lines) + "\n"


def write_key_file(path: Path, system_id: str, keys: list[bytes], rollover: str | None = None,
                   replace: bool = False) -> None:
    """Write a key file atomically, created with mode 0600 (never readable by others, not even
    for an instant). Refuses to overwrite an existing file unless ``replace``."""
    path = Path(path)
    if path.exists() and not replace:
        raise ConfigError("key file", f"{path} exists; use `mbms keys rotate` to change its keys")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_text(system_id, keys, rollover))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_key_file(path: Path, system_id: str) -> None:
    write_key_file(path, system_id, [secrets.token_bytes(KEY_BYTES)])


def rotate(path: Path) -> str:
    """One step of a rotation (module docstring); returns what to do next."""
    path = Path(path)
    doc = tomllib.loads(path.read_text())
    system_id = str(doc.get("system_id"))
    keys = FileKeyProvider(path, system_id).keys()
    stage = doc.get("rollover")
    if len(keys) == 1:
        write_key_file(path, system_id, [keys[0], secrets.token_bytes(KEY_BYTES)], "accepting", replace=True)
        return ("step 1 of 3: the new key is accepted but not used; copy the file to every node, restart "
                "them one by one, then run `mbms keys rotate` again")
    if stage == "accepting":
        write_key_file(path, system_id, [keys[1], keys[0]], "signing", replace=True)
        return ("step 2 of 3: nodes sign with the new key, the old one is still accepted; copy, restart one "
                "by one, then run `mbms keys rotate` again")
    write_key_file(path, system_id, [keys[0]], None, replace=True)
    return "step 3 of 3: the old key is gone; copy the file to every node and restart them one by one"
