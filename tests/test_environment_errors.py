"""Issue 11 item 5, environment part: what the machine cannot provide is one line, not a traceback.

An unknown CAN interface and a state directory that cannot be written both gave a Python
traceback. They are :class:`mbms.errors.EnvironmentProblem`: ``mbms node`` prints one line naming
the resource (for the state directory: the pack file and field) and the machine's answer, and
exits with code 3 (more cases in test_cli_exit_codes.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_udp_port
from node_files import pack_file, system_file
from test_cli_exit_codes import assert_one_line


def _run_node(pack: Path, system: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(pack), "--system", str(system),
                           "--duration", "5"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("interface", ["no_such_interface", "socketcan"])
def test_can_interface_the_machine_lacks_is_one_line(interface: str, tmp_path: Path) -> None:
    system = system_file(tmp_path, [1], "can", free_udp_port())
    system.write_text(system.read_text().replace('interface = "udp_multicast"', f'interface = "{interface}"')
                      .replace('channel = "239.74.163.2"', 'channel = "can9"'))
    pack = pack_file(tmp_path, 1, f"udp://127.0.0.1:{free_udp_port()}", with_engine=True)
    assert_one_line(_run_node(pack, system), 3, f"mbms node: error: peer transport can:{interface}:can9:")


def test_state_dir_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    # (the tests run as root here, so permissions cannot forbid it: a path through a regular file can)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    system = system_file(tmp_path, [1], "can", free_udp_port())
    pack = pack_file(tmp_path, 1, f"udp://127.0.0.1:{free_udp_port()}", with_engine=True)
    pack.write_text(pack.read_text().replace(f'state_dir = "{tmp_path}/state1"', f'state_dir = "{blocker}/state"'))
    assert_one_line(_run_node(pack, system), 3, f"mbms node: error: {pack}: node.state_dir", "Not a directory")
