"""The monitor's decoder of the consensus peer messages, against hand-encoded messages in the
format of consensus/src/wire.rs, and the monitor rows built from them."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from node_files import system_file

from mbms.commands.monitor import Monitor
from mbms.errors import FrameError
from mbms.config_views import load_system
from mbms.peer_wire import decode


def _msg(sysid: int, sender: int, kind: int, phase: int, main: bool, pre: bool, body: list[int]) -> bytes:
    flags = phase | (main << 4) | (pre << 5)
    coord = 3 | 2 << 4 | 2 << 8  # req ticket 3, granting to node 2 (ticket 2)
    return msgpack.packb([1 << 4 | kind, sysid, sender, 5, 77, flags, coord, *body])


def test_decode_both_kinds_and_reject_bad() -> None:
    m = decode(_msg(42, 3, 0, 4, True, False, [35012, 123, 290, 135, 400, 200]))
    assert (m.sender, m.phase, m.main_closed, m.grant_to, m.kind) == (3, 4, True, 2, "limits")
    assert m.values == {"ocv_v": 350.12, "r_ohm": 0.0123, "dcl_a": 29.0, "ccl_a": 13.5, "dcl_peak_a": 40.0, "ccl_peak_a": 20.0}
    d = decode(_msg(42, 3, 1, 2, False, True, [870, 400, 512, 35000, 34990, -25]))
    assert d.values["soc"] == 0.512 and d.values["i_a"] == -2.5 and d.pre_closed
    for bad in (b"", b"\xc1", msgpack.packb([2 << 4, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                msgpack.packb([1 << 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), bytes(65)):
        with pytest.raises(FrameError):
            decode(bad)


def test_monitor_rows_from_peer_messages(tmp_path: Path) -> None:
    system = load_system(system_file(tmp_path, [1, 2, 3], "udp", 47555))
    mon = Monitor(system)
    sid = system.system_id_u32
    mon._on_message(2, _msg(sid, 2, 0, 4, True, False, [35012, 123, 290, 135, 400, 200]))
    mon._on_message(2, _msg(sid, 2, 1, 4, True, False, [870, 400, 512, 35000, 34990, -25]))
    mon._on_message(3, _msg(sid + 1, 3, 0, 0, False, False, [0] * 6))  # another system
    mon._on_message(3, b"junk")
    rows = {r["id"]: r for r in mon.snapshot()}
    assert rows[2]["phase"] == "CLOSED" and rows[2]["contactors"] == "NP-" and rows[2]["soc_pct"] == pytest.approx(51.2)
    assert rows[2]["dcl_a"] == 29.0 and rows[2]["sys_dcl_a"] == 87.0 and rows[2]["grant_to"] == 2
    assert rows[3]["phase"] is None and rows[3]["undecodable_messages"] == 2
    assert not mon._all_seen()
    mon.transport.close()


def test_monitor_table_renders(tmp_path: Path) -> None:
    from rich.console import Console

    system = load_system(system_file(tmp_path, [1, 2], "udp", 47556))
    mon = Monitor(system)
    mon._on_message(1, _msg(system.system_id_u32, 1, 1, 2, False, True, [870, 400, 512, 35000, 34990, -25]))
    console = Console(record=True, width=160)
    console.print(mon.table())
    text = console.export_text()
    assert "PRECHARGING" in text and "51.2" in text and "quorum 2" in text
    mon.transport.close()
