"""The live web page of ``mbms monitor --web HOST:PORT`` (aiohttp).

Served from a listen-only monitor: everything shown is what the monitor hears on the peer network
(telemetry frames decoded with the DBC, peer messages). There is no write action at all: every
route is a GET, anything else is refused by the router (405).

* ``/``                 the page (``mbms/data/web/index.html``: plain HTML + JS, no build step);
* ``/api/state``        JSON: the system, every pack's row, active alarms, the event timeline;
* ``/api/pack/<id>``    JSON: one pack's row and its cell voltages (404 for an unknown pack, 400
                        for an id that is not a number);
* ``/events``           Server-Sent Events (the HTML living standard, ``text/event-stream``): the
                        state every ``PUSH_PERIOD_S``, so the page updates without polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from mbms.errors import ConfigError, EnvironmentProblem, opening
from mbms.paths import data_dir

log = logging.getLogger("mbms.web")

#: How often the page gets the state pushed (s): a human watches; telemetry is 10 Hz.
PUSH_PERIOD_S = 0.5


def parse_listen(text: str, option: str = "--web", example: str = "127.0.0.1:8080") -> tuple[str, int]:
    """``HOST:PORT`` of a listening option (``--web``, ``mbms sunspec --listen``); a usage error
    (exit 2) naming the option otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(option, f"expected HOST:PORT (e.g. {example}), got {text!r}")
    return host.strip("[]"), int(port)


def state(mon: Any) -> dict[str, Any]:
    """The whole page's data: system, packs (with cells), alarms, timeline."""
    rows = mon.snapshot()
    packs = []
    for r in rows:
        row = mon.rows[r["id"]]
        n = max(row.cells) + 1 if row.cells else 0
        packs.append({**r, "cells_v": [row.cells.get(k) for k in range(n)]})
    alarms = [{"node": r["id"], **r["alarm"]} for r in rows if r.get("alarm")]
    agreed = [r["sys_dcl_a"] for r in rows if r["sys_dcl_a"] is not None]
    return {
        "system": {"id": mon.system.system_id, "members": list(mon.system.members), "quorum": mon.system.quorum,
                   "sys_dcl_a": min(agreed) if agreed else None,
                   "sys_ccl_a": min((r["sys_ccl_a"] for r in rows if r["sys_ccl_a"] is not None), default=None),
                   "i_total_a": sum(r["i_a"] for r in rows if r["i_a"] is not None and r["contactors"] == "NP-"),
                   "closed": [r["id"] for r in rows if r["contactors"] == "NP-"]},
        "t": round(time.time(), 3), "packs": packs, "alarms": alarms, "events": list(mon.events)[-100:],
    }


def make_app(mon: Any) -> Any:
    from aiohttp import web

    page = (data_dir() / "web" / "index.html").read_text(encoding="utf-8")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def api_state(request: web.Request) -> web.Response:
        return web.json_response(state(mon))

    async def api_pack(request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        # ASCII digits only: str.isdigit() is also true for '²' or '①', which int() refuses
        # (a 500 from any such URL; found by tests/test_fuzz_decoders.py)
        if not (raw.isascii() and raw.isdigit()):
            return web.json_response({"error": f"pack id must be a number, got {raw!r}"}, status=400)
        k = int(raw)
        if k not in mon.rows:
            return web.json_response({"error": f"no pack {k} in system {mon.system.system_id}; "
                                               f"members are {list(mon.system.members)}"}, status=404)
        for p in state(mon)["packs"]:
            if p["id"] == k:
                return web.json_response(p)
        return web.json_response({"error": "not found"}, status=404)

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(f"data: {json.dumps(state(mon), separators=(',', ':'))}\n\n".encode())
                await asyncio.sleep(PUSH_PERIOD_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/api/pack/{id}", api_pack)
    app.router.add_get("/events", events)
    return app


async def serve(mon: Any, host: str, port: int, duration_s: float | None) -> None:
    try:
        from aiohttp import web
    except ModuleNotFoundError:
        raise EnvironmentProblem("python package 'aiohttp'", "not installed",
                                 "install the web extra: pip install 'mbms[web]'") from None
    runner = web.AppRunner(make_app(mon), shutdown_timeout=1.0)
    await runner.setup()
    with opening(f"web page {host}:{port}"):
        site = web.TCPSite(runner, host, port)
        await site.start()
    server: Any = site._server  # the port the OS gave for port 0
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
    print(f"web page on http://{host}:{bound}/", flush=True)
    log.info("web page on http://%s:%d/ (listen-only)", host, bound)
    try:
        await mon.run(duration_s, once=False, live=False)
    finally:
        await runner.cleanup()
