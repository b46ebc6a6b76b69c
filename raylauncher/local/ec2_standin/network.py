"""The stand-in's network: one Linux bridge with a /24 of its own, one network namespace per
instance joined to it by a veth pair. Nothing is routed anywhere else: the namespaces get
only the bridge's subnet (no default route), ip_forward is never touched, and before any
traffic `ip route get` must show that the subnet goes via our bridge.

Everything made here is named so it can be found again and removed, also after a crash:
bridge `rlsb<id>`, host-side veths `rlv<id>-<n>`, namespaces `rlsb<id>-<instance id>`,
where <id> is the stand-in's 5-hex-digit id.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

#: Every name this module makes starts with one of these (see `ours`).
BRIDGE_PREFIX = "rlsb"
VETH_PREFIX = "rlv"
#: The stand-in's /24s are taken from here (a range no cloud or home network is likely to use).
POOL = ipaddress.ip_network("10.254.0.0/16")


class NetworkError(RuntimeError):
    """An `ip` command failed, or a route check found traffic would leave our bridge."""


def ip(*args: str, check: bool = True, netns: str | None = None) -> str:
    """Run `ip ARGS` (optionally inside a namespace); NetworkError with its stderr on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def route_device(address: str, netns: str | None = None) -> str | None:
    """The device the kernel would send a packet to `address` through (None: unreachable)."""
    try:
        routes = json.loads(ip("-j", "route", "get", address, netns=netns) or "[]")
    except NetworkError:
        return None
    return routes[0].get("dev") if routes else None


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host already routes or has an address in (the default excepted)."""
    nets = []
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst not in ("default",) and not dst.startswith(("127.", "broadcast", "local")):
            try:
                nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
            except ValueError:
                continue
    return nets


def free_subnet(exclude: Sequence[ipaddress.IPv4Network] = ()) -> ipaddress.IPv4Network:
    """A /24 of POOL that overlaps nothing the host routes."""
    taken = [*used_networks(), *exclude]
    for candidate in POOL.subnets(new_prefix=24):
        if candidate.network_address.packed[2] == 0:
            continue  # skip 10.254.0.0/24: too easily confused with a default
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NetworkError(f"no free /24 left in {POOL}")


@dataclass(frozen=True)
class Bridge:
    """The stand-in's bridge and its subnet; the host side's address is `.1`."""

    standin_id: str
    subnet: ipaddress.IPv4Network

    @property
    def name(self) -> str:
        return f"{BRIDGE_PREFIX}{self.standin_id}"

    @property
    def address(self) -> str:
        return str(self.subnet.network_address + 1)

    def create(self) -> None:
        ip("link", "add", self.name, "type", "bridge")
        ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.name)
        ip("link", "set", self.name, "up")
        self.require_route(str(self.subnet.network_address + 2))

    def require_route(self, address: str) -> None:
        """Refuse (NetworkError) unless `address` is in our subnet and routes via our bridge."""
        if ipaddress.ip_address(address) not in self.subnet:
            raise NetworkError(f"{address} is outside the stand-in's subnet {self.subnet}")
        dev = route_device(address)
        if dev != self.name:
            raise NetworkError(f"{address} would route via {dev!r}, not the stand-in's bridge {self.name}")

    def veth_name(self, address: str) -> str:
        return f"{VETH_PREFIX}{self.standin_id}-{ipaddress.ip_address(address).packed[3]}"

    def netns_name(self, instance_id: str) -> str:
        if not re.fullmatch(r"i-[0-9a-f]{8,17}", instance_id):
            raise ValueError(f"{instance_id!r} is not an instance id")
        return f"{self.name}-{instance_id}"

    def add_namespace(self, instance_id: str, address: str) -> str:
        """A namespace for one instance: its veth is `eth0` at `address`/24, plus `lo`; no
        default route. Returns the namespace's name."""
        self.require_route(address)
        ns, veth = self.netns_name(instance_id), self.veth_name(address)
        ip("netns", "add", ns)
        try:
            ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            ip("link", "set", f"{veth}p", "netns", ns)
            ip("link", "set", veth, "master", self.name, "up")
            ip("link", "set", f"{veth}p", "name", "eth0", netns=ns)
            ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0", netns=ns)
            ip("link", "set", "eth0", "up", netns=ns)
            ip("link", "set", "lo", "up", netns=ns)
        except NetworkError:
            remove_namespace(ns, veth)
            raise
        return ns

    def remove(self) -> None:
        ip("link", "del", self.name, check=False)


def remove_namespace(ns: str, veth: str | None = None) -> None:
    """Delete a namespace (its eth0 and so the veth pair go with it) and the host-side veth."""
    ip("netns", "del", ns, check=False)
    if veth:
        ip("link", "del", veth, check=False)


def namespace_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def our_namespaces(standin_id: str | None = None) -> list[str]:
    prefix = BRIDGE_PREFIX + (standin_id or "")
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.startswith(prefix)]


def our_links(standin_id: str | None = None) -> list[str]:
    names = []
    for link in json.loads(ip("-j", "link", "show") or "[]"):
        name = link.get("ifname", "")
        for prefix in (BRIDGE_PREFIX, VETH_PREFIX):
            if name.startswith(prefix + (standin_id or "")):
                names.append(name)
    return names
