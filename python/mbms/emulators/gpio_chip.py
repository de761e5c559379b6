"""An emulated GPIO chip behind the ``gpiod.request_lines`` call shape (libgpiod v2 API).

Used where the gpio-sim kernel module is not available (this machine: no configfs). The chip
is served by :class:`GpioChipServer` in the plant process on a Unix SOCK_SEQPACKET socket; the
node calls :func:`request_lines` with ``gpiod.LineSettings`` exactly as it would call
``gpiod.request_lines`` and gets a request object with ``set_values``, ``get_values``,
``set_value``, ``get_value`` and ``release``. As in the kernel, a line requested by one holder
is busy for others (OSError EBUSY), and when the holder's connection closes (process exit, crash)
its lines are released: outputs return to their hardware default, inactive (contactor open).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import msgpack


class GpioChipServer:
    """``inputs(offset) -> bool`` gives input levels; ``on_outputs(levels)`` sees output changes
    (offset -> bool of every line; released lines read False)."""

    def __init__(self, path: str, n_lines: int, inputs: Callable[[int], bool],
                 on_outputs: Callable[[dict[int, bool]], None]) -> None:
        self.path = path
        self.n = n_lines
        self.inputs = inputs
        self.on_outputs = on_outputs
        self.outputs: dict[int, bool] = {}
        self.owner: dict[int, int] = {}  # offset -> connection id
        self.lock = threading.Lock()
        self.requests = 0
        self.releases = 0
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        self.sock.listen(4)
        self._ids = 0
        threading.Thread(target=self._accept, daemon=True, name=f"gpio-emu {path}").start()

    def levels(self) -> dict[int, bool]:
        with self.lock:
            return {k: self.outputs.get(k, False) for k in range(self.n)}

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._ids += 1
            threading.Thread(target=self._serve, args=(conn, self._ids), daemon=True).start()

    def _release(self, cid: int) -> None:
        with self.lock:
            mine = [k for k, o in self.owner.items() if o == cid]
            for k in mine:
                del self.owner[k]
                self.outputs.pop(k, None)  # released: the hardware default, inactive
            if mine:
                self.releases += 1
        if mine:
            self.on_outputs(self.levels())

    def _handle(self, cid: int, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "request":
            # the whole request is parsed before any line is taken: a malformed one changes
            # nothing (an "out" that was not a map used to take the "in" lines and then fail;
            # found by tests/test_fuzz_decoders.py), as GPIO_V2_GET_LINE_IOCTL is all or nothing
            out_raw, in_raw = req.get("out", {}), req.get("in", [])
            if not isinstance(out_raw, dict) or not isinstance(in_raw, list):
                return {"errno": errno.EINVAL, "msg": "request: 'out' must map offsets to levels, 'in' list offsets"}
            outs = {int(k): bool(v) for k, v in out_raw.items()}
            offs = list(outs) + [int(x) for x in in_raw]
            with self.lock:
                bad = [k for k in offs if not 0 <= k < self.n]
                if bad:
                    return {"errno": errno.EINVAL, "msg": f"line offsets {bad} not on this chip ({self.n} lines)"}
                busy = [k for k in offs if k in self.owner and self.owner[k] != cid]
                if busy:
                    return {"errno": errno.EBUSY, "msg": f"lines {busy} busy"}
                for k in offs:
                    self.owner[k] = cid
                self.outputs.update(outs)
                self.requests += 1
            self.on_outputs(self.levels())
            return {"ok": True}
        if op == "set":
            # every line is checked before any is set: a refused request changes no line (a set
            # with one foreign line used to set the lines before it; found by
            # tests/test_fuzz_decoders.py), as GPIO_V2_LINE_SET_VALUES_IOCTL is all or nothing
            values = {int(k): bool(v) for k, v in req["values"].items()}
            with self.lock:
                for k in values:
                    if self.owner.get(k) != cid or k not in self.outputs:
                        return {"errno": errno.EPERM, "msg": f"line {k} is not an output of this request"}
                self.outputs.update(values)
            self.on_outputs(self.levels())
            return {"ok": True}
        if op == "get":
            vals = []
            for k in req["offsets"]:
                k = int(k)
                with self.lock:
                    if self.owner.get(k) != cid:
                        return {"errno": errno.EPERM, "msg": f"line {k} not requested"}
                    out = self.outputs.get(k)
                vals.append(out if out is not None else bool(self.inputs(k)))
            return {"values": vals}
        if op == "release":
            self._release(cid)
            return {"ok": True}
        return {"errno": errno.EINVAL, "msg": f"unknown op {op!r}"}

    def _serve(self, conn: socket.socket, cid: int) -> None:
        with conn:
            while True:
                try:
                    raw = conn.recv(65536)
                except OSError:
                    break
                if not raw:
                    break
                try:
                    rep = self._handle(cid, msgpack.unpackb(raw, strict_map_key=False))
                except Exception as exc:  # noqa: BLE001 - a bad request is answered, never kills the chip
                    rep = {"errno": errno.EINVAL, "msg": f"{type(exc).__name__}: {exc}"}
                try:
                    conn.send(msgpack.packb(rep))
                except OSError:
                    break
        self._release(cid)

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class EmulatedLineRequest:
    """The part of ``gpiod.LineRequest`` the driver uses."""

    def __init__(self, sock: socket.socket, offsets: list[int]) -> None:
        self._sock = sock
        self.offsets = offsets

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        if self._sock is None:
            raise OSError(errno.EBADF, "request released")
        try:
            self._sock.send(msgpack.packb(req))
            raw = self._sock.recv(65536)
        except OSError as exc:
            raise OSError(errno.EIO, f"emulated GPIO chip: {exc}") from None
        if not raw:
            raise OSError(errno.EIO, "emulated GPIO chip closed the connection")
        rep: dict[str, Any] = msgpack.unpackb(raw, strict_map_key=False)
        if "errno" in rep:
            raise OSError(rep["errno"], rep["msg"])
        return rep

    def set_values(self, values: dict[int, Any]) -> None:
        self._call({"op": "set", "values": {int(k): int(v.value if hasattr(v, "value") else v) for k, v in values.items()}})

    def set_value(self, offset: int, value: Any) -> None:
        self.set_values({offset: value})

    def get_values(self, offsets: Iterable[int] | None = None) -> list[Any]:
        from gpiod.line import Value

        offs = list(self.offsets if offsets is None else offsets)
        vals = self._call({"op": "get", "offsets": offs})["values"]
        return [Value.ACTIVE if v else Value.INACTIVE for v in vals]

    def get_value(self, offset: int) -> Any:
        return self.get_values([offset])[0]

    def release(self) -> None:
        if self._sock is not None:
            try:
                self._call({"op": "release"})
            except OSError:
                pass
            self._sock.close()
            self._sock = None  # type: ignore[assignment]

    def __enter__(self) -> EmulatedLineRequest:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def request_lines(path: str, config: dict[Any, Any], consumer: str | None = None, **_: Any) -> EmulatedLineRequest:
    """``gpiod.request_lines(path, config={offsets: LineSettings}, consumer=...)`` on the emulated
    chip at ``path`` (a Unix socket)."""
    from gpiod.line import Direction, Value

    out: dict[int, int] = {}
    inp: list[int] = []
    for key, settings in config.items():
        offs = key if isinstance(key, tuple) else (key,)
        for o in offs:
            if settings is not None and settings.direction == Direction.OUTPUT:
                out[int(o)] = int(settings.output_value == Value.ACTIVE)
            else:
                inp.append(int(o))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(1.0)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno or errno.ENOENT, f"emulated GPIO chip {path}: {exc.strerror}") from None
    req = EmulatedLineRequest(sock, list(out) + inp)
    req._call({"op": "request", "consumer": consumer or "", "out": out, "in": inp})
    return req
