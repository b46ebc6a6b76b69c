"""The local backend gives each of a `ray start`'s components its own port: chosen together, so
two components never get the same one (one port asked for and released at a time can come back
on the next ask: 1 run in 2,000 of six asks had a repeat; `ray start` then refuses to start)."""

from __future__ import annotations

import socket
from contextlib import closing

from raylauncher.clusters.local import free_ports


def test_ports_chosen_together_are_distinct_and_free() -> None:
    # Given many rounds of the six ports one `ray start` needs
    for _ in range(500):
        # When they are chosen
        ports = free_ports(6)
        # Then no two are the same, and each is free to bind on loopback now
        assert len(set(ports)) == 6, ports
    for port in free_ports(6):
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", port))
