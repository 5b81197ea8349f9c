"""Test hosts on one machine: Linux network namespaces on a private /24 behind one bridge.

    root namespace (this pytest)  ── bridge vgc<pid>br  .1
        ├── veth ── namespace vgc-<pid>-services   .2
        ├── veth ── namespace vgc-<pid>-head       .3
        └── ...                                    .4, .5, ...

Each host has its own network stack (addresses, ports, routes; it sees only loopback and its own
veth), and shares the machine's filesystem, users and Python environment with the others — as
hosts with a common NFS mount would. The subnet is the first of `CANDIDATE_SUBNETS` that no
interface or route of the root namespace touches, chosen under a machine-wide lock. Everything is
removed on every exit path (`TestNetwork` is a context manager), and networks left behind by a test
process that died are removed at the next start.

`cut(a, b)` silences the link between two hosts in both directions while both keep talking to
everyone else: each routes the other's address through a neighbour that does not exist, so packets
vanish (connects time out, as on a pulled cable), `restore(a, b)` deletes those routes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vggt_common.files import file_lock

PREFIX = "vgc"  # namespaces vgc-<pid>-<host>; links vgc<pid>br, vgc<pid>v<i>, vgc<pid>v<i>b
CANDIDATE_SUBNETS = ("10.213.47.0/24", "10.187.93.0/24", "172.29.211.0/24", "192.168.219.0/24")
LOCK = Path("/tmp/vggt-test-netns.lock")
DEAD_NEIGHBOUR = 254  # host part of the address `cut` routes through (never assigned)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def can_create_namespaces() -> str | None:
    """None if this process can build a test network, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One test host: a network namespace with one address on the test subnet."""

    name: str
    netns: str
    ip: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run on this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), env=env, capture_output=True, text=True, timeout=timeout)

    def popen(self, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        """A long-running process on this host, in its own session, output to `log`."""
        with open(log, "ab") as out:
            return subprocess.Popen(self.command(argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def pids(self) -> list[int]:
        """Every process running on this host (in its network namespace)."""
        listed = ip("netns", "pids", self.netns, check=False).stdout.split()
        return [int(p) for p in listed if p.isdigit()]

    def signal_all(self, sig: int) -> list[int]:
        """Send `sig` to every process on this host; returns their pids."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def kill_all(self, wait: float = 30) -> list[int]:
        """SIGKILL every process on this host and wait until they are gone (host loss)."""
        pids = self.signal_all(signal.SIGKILL)
        self.wait_gone(wait)
        return pids

    def listening(self) -> list[str]:
        """`address:port` of every TCP socket listening on this host."""
        out = self.run(["ss", "-Hltn"], timeout=30).stdout
        return sorted({line.split()[3] for line in out.splitlines() if line.strip()})


class TestNetwork:
    """The bridge, the subnet and one namespace per host name; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self.subnet: ipaddress.IPv4Network | None = None

    def __enter__(self) -> TestNetwork:
        try:
            with file_lock(LOCK):
                remove_stale_networks()
                self.subnet = pick_subnet()
                self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def address(self, index: int) -> str:
        return str(self.subnet.network_address + index)

    def _build(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address(1)}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            host = Host(name, f"{PREFIX}-{os.getpid()}-{name}", self.address(2 + i))
            veth, peer = f"{self.tag}v{i}", f"{self.tag}v{i}b"
            ip("netns", "add", host.netns)
            self.hosts[name] = host
            ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            ip("link", "set", veth, "netns", host.netns)
            ip("link", "set", peer, "master", self.bridge, "up")
            ip("-n", host.netns, "addr", "add", f"{host.ip}/{self.subnet.prefixlen}", "dev", veth)
            ip("-n", host.netns, "link", "set", veth, "up")
            ip("-n", host.netns, "link", "set", "lo", "up")

    def cut(self, a: Host, b: Host) -> None:
        """Packets between `a` and `b` vanish, both ways; each still reaches every other host."""
        dead = self.address(DEAD_NEIGHBOUR)
        for src, dst in ((a, b), (b, a)):
            ip("-n", src.netns, "route", "add", f"{dst.ip}/32", "via", dead)

    def restore(self, a: Host, b: Host) -> None:
        for src, dst in ((a, b), (b, a)):
            ip("-n", src.netns, "route", "del", f"{dst.ip}/32", check=False)

    def destroy(self) -> None:
        """Stop every process on the hosts, remove the namespaces and the bridge (idempotent)."""
        stop_all(list(self.hosts.values()))
        for host in self.hosts.values():
            ip("netns", "del", host.netns, check=False)
        self.hosts.clear()
        ip("link", "del", self.bridge, check=False)


def stop_all(hosts: list[Host], grace: float = 10) -> None:
    """SIGTERM every process on `hosts`, SIGKILL what is left after `grace` seconds."""
    for host in hosts:
        host.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for host in hosts:
        if not host.wait_gone(max(0.0, deadline - time.monotonic())):
            host.kill_all()


def pick_subnet() -> ipaddress.IPv4Network:
    """The first candidate /24 that no address or route of this machine overlaps (default route aside)."""
    used = []
    for entry in json.loads(ip("-j", "-4", "addr", "show").stdout or "[]"):
        for addr in entry.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    for candidate in map(ipaddress.ip_network, CANDIDATE_SUBNETS):
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError(f"every candidate test subnet is in use on this machine: {', '.join(CANDIDATE_SUBNETS)}")


def remove_stale_networks() -> None:
    """Namespaces and bridges of test processes that died without cleaning up."""
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit() and not alive(int(parts[1])):
            stop_all([Host(name, name, "")], grace=2)
            ip("netns", "del", name, check=False)
    for entry in json.loads(ip("-j", "link", "show").stdout or "[]"):
        name = entry.get("ifname", "")
        pid = name[len(PREFIX):-2]
        if name.startswith(PREFIX) and name.endswith("br") and pid.isdigit() and not alive(int(pid)):
            ip("link", "del", name, check=False)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
