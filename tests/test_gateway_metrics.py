"""Prometheus metrics of a real node process, scraped over HTTP and parsed by the official
Prometheus text parser (prometheus_client.parser); values match the node and the plant."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from conftest import Proc, wait_for
from operator_stack import can_system, node_pack, plant_cmd, start_node, start_plant

from mbms.paths import data_dir


def scrape(url: str) -> dict[str, list]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(fams: dict[str, list], family: str, sample: str | None = None, **labels: str) -> float:
    for s in fams[family]:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError((family, sample, labels))


def test_node_metrics_endpoint(tmp_path: Path, procs: list[Proc]) -> None:
    link = start_plant(procs, tmp_path)
    system = can_system(tmp_path, [1])
    node = start_node(procs, node_pack(tmp_path, 1, link, '[operator.metrics]\nbind = "127.0.0.1"\nport = 0\n'), system)
    url = node.read_until(lambda s: s.startswith("metrics on http://"), 30).split()[-1].strip()

    def closed() -> dict | None:
        f = scrape(url)
        ok = "mbms_contactor_closed" in f and value(f, "mbms_contactor_closed", contactor="pos") == 1.0 \
            and value(f, "mbms_contactor_closed", contactor="neg") == 1.0
        # the peer's Closed event follows the contactor command once the close is confirmed
        ok = ok and any(s.labels.get("kind") == "closed" for s in f.get("mbms_peer_events", []))
        return f if ok else None
    fams = wait_for(closed, 60, "metrics show the string closed", poll_s=0.2)
    wait_for(lambda: plant_cmd(link, {"op": "state"})["contactors"][0] == [True, True, False], 5, "the plant agrees")
    truth = plant_cmd(link, {"op": "truth"})
    assert value(fams, "mbms_soc_percent", node="1") == pytest.approx(100 * truth["soc"][0], abs=3.0)
    assert value(fams, "mbms_string_volts", node="1") == pytest.approx(truth["v_string_v"][0], abs=2.0)
    assert value(fams, "mbms_system_dcl_amperes", node="1") <= value(fams, "mbms_dcl_amperes", node="1") + 1e-6
    assert 90 <= value(fams, "mbms_soh_capacity_percent", node="1") <= 110
    # histograms: every period observed; the count grows with the node's period counter
    n_step = value(fams, "mbms_step_seconds", "mbms_step_seconds_count", node="1")
    n_periods = value(fams, "mbms_periods", "mbms_periods_total", node="1")
    assert n_step > 10 and abs(n_step - n_periods) <= 2
    assert value(fams, "mbms_loop_jitter_seconds", "mbms_loop_jitter_seconds_bucket", node="1", le="+Inf") == n_step
    assert value(fams, "mbms_step_seconds", "mbms_step_seconds_sum", node="1") > 0
    # protocol counters: the peer protocol ran (the node hears its own messages' echo on CAN)
    assert value(fams, "mbms_transport_messages", "mbms_transport_messages_total", node="1", direction="out") > 5
    assert value(fams, "mbms_peer_events", "mbms_peer_events_total", node="1", kind="closed") >= 1
    assert value(fams, "mbms_alarm_level", node="1") in (0.0, 1.0)
    later = wait_for(lambda: (f := scrape(url)) and value(f, "mbms_periods", "mbms_periods_total", node="1") > n_periods + 5 and f,
                     10, "the counters go on")
    assert value(later, "mbms_step_seconds", "mbms_step_seconds_count", node="1") > n_step
    node.p.terminate()
    node.p.wait(10)


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    import re

    from mbms.gateways import metrics

    dash = json.loads((data_dir() / "grafana" / "mbms.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bmbms_[a-z_]+", e)}
    src = Path(metrics.__file__).read_text()
    exported = set(re.findall(r'"(mbms_[a-z_]+)"', src))
    suffixes = ("_bucket", "_count", "_sum", "_total")
    base = {next((u[: -len(s)] for s in suffixes if u.endswith(s) and u[: -len(s)] in exported), u) for u in used}
    assert base <= exported, base - exported
    assert {"mbms_loop_jitter_seconds", "mbms_step_seconds", "mbms_soc_percent", "mbms_alarm"} <= base
