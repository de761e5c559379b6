"""The live web page of `mbms monitor --web`, in real Chromium driven by Playwright, against a
processes-mode system (a real plant and three real `mbms node` processes): the page shows a
string isolating on a fault and rejoining, and the alarm that caused it. Screenshots are saved
to $MBMS_SCREENSHOTS (default: the test's tmp dir)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import Proc, free_udp_port, wait_for
from operator_stack import node_pack, plant_cmd, start_node, start_plant
from test_gateway_uds import LOW_OVERCURRENT

from node_files import system_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_web_page_shows_isolation_alarm_and_rejoin(tmp_path: Path, procs: list[Proc]) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("MBMS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    link = start_plant(procs, tmp_path)
    system = system_file(tmp_path, [1, 2, 3], "can", free_udp_port())
    for k in (1, 2, 3):
        extra = LOW_OVERCURRENT if k == 3 else ""
        start_node(procs, node_pack(tmp_path, k, link, "", extra, auto_reset_s=2.0), system)
    mon = Proc(["-m", "mbms", "monitor", "--system", str(system), "--web", "127.0.0.1:0"])
    procs.append(mon)
    url = mon.read_until(lambda s: s.startswith("web page on http://"), 30).split()[-1].strip()

    # listen-only: unknown packs are clear errors, and nothing can be written
    for path, code in [("api/pack/9", 404), ("api/pack/x", 400)]:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + path, timeout=5)
        assert e.value.code == code and "error" in json.loads(e.value.read())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(url + "api/state", data=b"{}", method="POST"), timeout=5)
    assert e.value.code == 405

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        page.goto(url)
        row = lambda k: page.locator(f'#strings tr[data-pack="{k}"]')  # noqa: E731
        for k in (1, 2, 3):
            row(k).and_(page.locator('[data-phase="CLOSED"]')).wait_for(timeout=90_000)
        page.locator('#heat div[data-cell="95"]').wait_for(timeout=30_000)  # the heat map of pack 1, all 96 cells
        assert page.locator("#conn").inner_text() == "live"
        page.screenshot(path=str(shots / "web_all_closed.png"), full_page=True)

        # a load step: pack 3's low overcurrent threshold trips, it isolates; the others stay on
        plant_cmd(link, {"op": "load", "i": 30.0})
        page.locator('#alarms li.alarm.lvl-Fault[data-pack="3"]').wait_for(timeout=30_000)
        assert "overcurrent_discharge" in page.locator('#alarms li[data-pack="3"]').inner_text()
        page.locator('#strings tr[data-pack="3"][data-contactors="---"]').wait_for(timeout=30_000)
        assert row(1).get_attribute("data-contactors") == "NP-" and row(2).get_attribute("data-contactors") == "NP-"
        page.select_option("#pack", "3")
        page.screenshot(path=str(shots / "web_pack3_isolated.png"), full_page=True)

        # the cause goes (no load): the auto reset clears the latch and pack 3 rejoins
        plant_cmd(link, {"op": "load", "i": 0.0})
        row(3).and_(page.locator('[data-phase="CLOSED"]')).wait_for(timeout=90_000)
        page.locator("#alarms li.alarm").wait_for(state="detached", timeout=30_000)
        timeline = page.locator("#timeline").inner_text()
        assert "pack 3: Fault: overcurrent_discharge" in timeline and "pack 3: cleared: overcurrent_discharge" in timeline
        assert page.locator('#timeline .event[data-kind="phase"][data-pack="3"]').count() >= 2
        page.screenshot(path=str(shots / "web_pack3_rejoined.png"), full_page=True)
        browser.close()
    print(f"screenshots: {shots}/web_all_closed.png, web_pack3_isolated.png, web_pack3_rejoined.png")
