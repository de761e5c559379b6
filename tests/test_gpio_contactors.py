"""Contactor lines through the gpiod v2 call shape on the emulated chip: outputs start inactive,
lines are exclusive, a process that dies releases its lines (contactors drop open), and the
welded / stuck-open cross-checks against current and voltage."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
from conftest import Proc, wait_for
from gpiod import LineSettings
from gpiod.line import Direction, Value

from mbms.emulators.gpio_chip import GpioChipServer, request_lines
from mbms.hardware.base import DeviceFault
from mbms.hardware.gpio_contactors import ContactorCheck, GpioContactors, LineMap
from mbms.types import Contactors

LINES = LineMap(0, 1, 2, 3, 4, 5)


@pytest.fixture
def chip(tmp_path: Path):  # type: ignore[no-untyped-def]
    fb = {3: False, 4: False, 5: False}
    seen: list[dict[int, bool]] = []
    server = GpioChipServer(str(tmp_path / "gpio.sock"), 8, inputs=lambda k: fb.get(k, False), on_outputs=seen.append)
    yield server, fb, seen
    server.close()


def test_driver_requests_outputs_inactive_sets_and_reads_feedback(chip) -> None:  # type: ignore[no-untyped-def]
    server, fb, seen = chip
    g = GpioContactors(f"emu://{server.path}", LINES)
    g.open()
    assert seen[-1][0] is False and seen[-1][1] is False and seen[-1][2] is False  # inactive from the request on
    g.set(Contactors(neg=True, pos=False, pre=True))
    assert (seen[-1][0], seen[-1][1], seen[-1][2]) == (True, False, True)
    fb[3], fb[5] = True, True
    assert g.feedback() == Contactors(neg=True, pos=False, pre=True)
    g.close()  # coils off, then released
    assert server.levels()[0] is False and server.levels()[2] is False and server.releases == 1


def test_lines_are_exclusive_like_the_kernels(chip) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = chip
    out = LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE)
    with request_lines(server.path, config={(0, 1): out}, consumer="a") as r:
        with pytest.raises(OSError) as e:
            request_lines(server.path, config={1: out}, consumer="b")
        assert e.value.errno == errno.EBUSY
        r.set_value(0, Value.ACTIVE)
        assert r.get_value(0) == Value.ACTIVE
        with pytest.raises(OSError):
            r.set_value(3, Value.ACTIVE)  # not requested
    # released by the context manager: free for the next holder
    request_lines(server.path, config={1: out}, consumer="b").release()


def test_a_killed_process_releases_its_lines_contactors_open(chip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = chip
    script = tmp_path / "holder.py"
    script.write_text(
        "import sys, time\n"
        "from mbms.hardware.gpio_contactors import GpioContactors, LineMap\n"
        "from mbms.types import Contactors\n"
        f"g = GpioContactors('emu://{server.path}', LineMap(0, 1, 2, 3, 4, 5))\n"
        "g.open(); g.set(Contactors(True, True, False)); print('closed', flush=True)\n"
        "time.sleep(60)\n")
    p = Proc([str(script)])
    try:
        p.read_until(lambda s: s.startswith("closed"), 20)
        assert server.levels()[0] and server.levels()[1]
        p.kill()  # SIGKILL: no atexit, no close(); the connection (fd) goes with the process
        wait_for(lambda: not server.levels()[0] and not server.levels()[1], 5, "coils released")
    finally:
        p.kill()


def test_weld_and_stuck_open_need_their_confirmation_time() -> None:
    chk = ContactorCheck(i_open_a=2.0, dv_closed_v=10.0, confirm_ms=300)
    opened, closed = Contactors(), Contactors(True, True, False)
    chk.check(0.0, opened, opened, 50.0, 350.0, 350.0)  # current still decaying: not yet
    chk.check(0.2, opened, opened, 50.0, 350.0, 350.0)
    with pytest.raises(DeviceFault) as e:
        chk.check(0.31, opened, opened, 50.0, 350.0, 350.0)
    assert e.value.kind == "contactor_welded"
    chk = ContactorCheck(i_open_a=2.0, dv_closed_v=10.0, confirm_ms=300)
    chk.check(0.0, closed, closed, 0.0, 350.0, 300.0)
    chk.check(0.1, closed, closed, 0.0, 350.0, 349.0)  # matched again: the timer restarts
    chk.check(0.3, closed, closed, 0.0, 350.0, 300.0)
    chk.check(0.5, closed, closed, 0.0, 350.0, 300.0)
    with pytest.raises(DeviceFault) as e:
        chk.check(0.61, closed, closed, 0.0, 350.0, 300.0)
    assert e.value.kind == "contactor_stuck_open"
    # precharging (main positive open, precharge closed) with current is not a weld
    ContactorCheck(2.0, 10.0, 0).check(1.0, Contactors(True, False, True), Contactors(True, False, True), 30.0, 350.0, 340.0)


def test_real_gpiod_without_a_chip_is_an_os_error() -> None:
    g = GpioContactors("/dev/gpiochip-does-not-exist", LINES)
    with pytest.raises(OSError):
        g.open()
    assert sys.modules.get("gpiod") is not None
