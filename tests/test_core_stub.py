"""The type stub of the extension module matches the built module (mypy's stubtest): a method
added, removed or re-signed in bindings/src without its stub fails here."""

import subprocess
import sys


def test_core_stub_matches_the_built_module() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "mbms._core"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
