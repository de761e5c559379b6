"""Network namespaces for multi-host tests: N namespaces, each with veth0 on a bridge that lives in
a namespace of its own (the host's network is not touched). Needs root; ``unavailable()`` says why
not. Partitions are nftables (or iptables) rules inside the namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (ip) not installed"
    if not (shutil.which("nft") or shutil.which("iptables")):
        return "neither nft nor iptables installed"
    probe = f"mbmsProbe{os.getpid() % 100000}"
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns unavailable: {r.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


class Lab:
    def __init__(self, tag: str, n: int, subnet: str = "10.78.0") -> None:
        sfx = f"{os.getpid() % 10000}"
        self.names = [f"mb{tag}{i}x{sfx}" for i in range(1, n + 1)]
        self.bridge_ns = f"mb{tag}brx{sfx}"
        self.ips = [f"{subnet}.{i}" for i in range(1, n + 1)]

    def up(self) -> None:
        for ns in (*self.names, self.bridge_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, (ns, ip) in enumerate(zip(self.names, self.ips)):
            port = f"p{i}"
            sh("ip", "link", "add", "veth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.bridge_ns)
            sh("ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "veth0")
            sh("ip", "-n", ns, "link", "set", "veth0", "up")
            sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "veth0")

    def down(self) -> None:
        for ns in (*self.names, self.bridge_ns):
            sh("ip", "netns", "del", ns, check=False)

    def isolate(self, i: int, on: bool) -> None:
        """Cut namespace i off the peer network (all traffic on its veth0 dropped), or heal it."""
        ns = self.names[i]
        if shutil.which("nft"):
            if on:
                sh("ip", "netns", "exec", ns, "nft", "add table inet mbmscut")
                for hook in ("input", "output"):
                    sh("ip", "netns", "exec", ns, "nft", f"add chain inet mbmscut {hook} {{ type filter hook {hook} priority 0 ; }}")
                sh("ip", "netns", "exec", ns, "nft", "add rule inet mbmscut input iifname veth0 drop")
                sh("ip", "netns", "exec", ns, "nft", "add rule inet mbmscut output oifname veth0 drop")
            else:
                sh("ip", "netns", "exec", ns, "nft", "delete table inet mbmscut")
        else:
            op = "-A" if on else "-D"
            sh("ip", "netns", "exec", ns, "iptables", op, "INPUT", "-i", "veth0", "-j", "DROP")
            sh("ip", "netns", "exec", ns, "iptables", op, "OUTPUT", "-o", "veth0", "-j", "DROP")

    def argv(self, i: int, *cmd: str) -> list[str]:
        """Arguments for conftest.Proc (which prepends the Python executable) running ``cmd`` in ns i."""
        return ["-c", "import os,sys; os.execvp('ip', ['ip','netns','exec',sys.argv[1],*sys.argv[2:]])",
                self.names[i], *cmd]


def mbms_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mbms", *args]


__all__ = ["Lab", "mbms_cmd", "sh", "unavailable", "Path"]
