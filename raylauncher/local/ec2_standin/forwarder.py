"""A TCP forwarder on the bridge's address: nodes reach moto (bound to 127.0.0.1 only) through it.

It listens on one address of our own bridge (never 0.0.0.0) and connects only to the one
loopback target it was given, from NODES_SOURCE: moto sees the nodes' calls (the head's
autoscaler) apart from the bastion's, which come from 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import threading


#: The loopback address the forwarder connects from.
NODES_SOURCE = "127.0.0.2"


class _Pipe(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            upstream = socket.create_connection(self.server.target, timeout=10, source_address=(NODES_SOURCE, 0))
        except OSError:
            return
        upstream.settimeout(None)
        with upstream:
            back = threading.Thread(target=_copy, args=(upstream, self.request), daemon=True)
            back.start()
            _copy(self.request, upstream)
            back.join(timeout=60)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    target: tuple[str, int]


class Forwarder:
    """Forward `listen_host`:<free port> to `target` (a loopback address)."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        if ipaddress.ip_address(listen_host).is_unspecified:
            raise ValueError("the forwarder never listens on every address")
        if not ipaddress.ip_address(target[0]).is_loopback:
            raise ValueError(f"the forwarder only forwards to this machine, not {target[0]}")
        self._server = _Server((listen_host, 0), _Pipe)
        self._server.target = target
        self._thread = threading.Thread(target=self._server.serve_forever, name="standin-forwarder", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
