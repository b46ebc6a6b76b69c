"""The instance metadata service of one stand-in instance, as EC2 answers it at 169.254.169.254.

A real node has no AWS_* variables: boto3 on it (the head's autoscaler, the token fetch, the
job) and the AWS SDK inside pyarrow get the region and the instance profile's temporary
credentials from here. Each node's network namespace gets 169.254.169.254 on its own loopback
(a route inside that namespace only, never the host's), and a listening socket there that this
process created inside the namespace; requests are served by a thread of the stand-in. So a node
reaches only its own metadata, and nothing leaves the namespace.

IMDSv2 as EC2 does it: a token from `PUT /latest/api/token` (a TTL header of 1..21600 s is
required; a PUT carrying X-Forwarded-For is refused), then every GET carries it; without one a GET
gets 401 when the instance's MetadataOptions say HttpTokens=required (the launcher's
cluster.yaml does). Instance tags are served only when InstanceMetadataTags=enabled.
"""

from __future__ import annotations

import ctypes
import http.server
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from collections.abc import Callable
from typing import Any

#: Where EC2's instance metadata service answers.
ADDRESS = "169.254.169.254"
_CLONE_NEWNET = 0x40000000
#: Temporary credentials of an instance profile last about six hours on EC2.
CREDENTIALS_LIFETIME = timedelta(hours=6)
_MAX_TOKEN_TTL_S = 21600


@dataclass(frozen=True)
class InstanceMetadata:
    """What the service tells one instance (from moto's description of it)."""

    instance_id: str
    region: str
    availability_zone: str
    instance_type: str
    image_id: str
    private_ip: str
    tokens_required: bool
    tags: Callable[[], dict[str, str]] | None  # the instance's tags now; None: InstanceMetadataTags disabled (EC2's default)
    role_name: str | None  # the instance profile's role; None: no instance profile
    instance_profile_arn: str | None
    credentials: dict[str, str] = field(default_factory=dict)  # AccessKeyId, SecretAccessKey of the role

    @classmethod
    def of(cls, instance: dict[str, Any], region: str, role_name: str | None, credentials: dict[str, str],
           tags: Callable[[], dict[str, str]] | None = None) -> InstanceMetadata:  # fmt: skip
        """`tags`: reads the instance's tags as they are now (Ray retags nodes after launch; EC2's
        metadata shows the change); default: the tags it was launched with."""
        options = instance.get("MetadataOptions") or {}
        launched = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        profile = instance.get("IamInstanceProfile") or {}
        return cls(
            instance_id=instance["InstanceId"], region=region,
            availability_zone=(instance.get("Placement") or {}).get("AvailabilityZone", f"{region}a"),
            instance_type=instance.get("InstanceType", ""), image_id=instance.get("ImageId", ""),
            private_ip=instance.get("PrivateIpAddress", ""),
            # moto may not keep the options: then the stricter answer (tokens required)
            tokens_required=options.get("HttpTokens", "required") == "required",
            tags=(tags or (lambda: launched)) if options.get("InstanceMetadataTags") == "enabled" else None,
            role_name=role_name if profile else None, instance_profile_arn=profile.get("Arn"),
            credentials=credentials,
        )  # fmt: skip

    def tree(self) -> dict[str, Any]:
        """The answer for every GET path under /latest/ (a dict is a listing)."""
        hostname = "ip-" + self.private_ip.replace(".", "-") + f".{self.region}.compute.internal"
        meta: dict[str, Any] = {
            "ami-id": self.image_id, "instance-id": self.instance_id, "instance-type": self.instance_type,
            "local-ipv4": self.private_ip, "local-hostname": hostname, "hostname": hostname,
            "placement": {"availability-zone": self.availability_zone, "region": self.region},
        }  # fmt: skip
        if self.role_name is not None:
            meta["iam"] = {
                "info": json.dumps({"Code": "Success", "LastUpdated": _iso(datetime.now(UTC)),
                                    "InstanceProfileArn": self.instance_profile_arn,
                                    "InstanceProfileId": "AIPA" + self.instance_id[2:].upper()}),  # fmt: skip
                "security-credentials": {self.role_name: self._role_credentials},
            }
        if self.tags is not None:
            tags = self.tags
            meta["tags"] = {"instance": lambda: dict(tags())}  # read when asked
        document = {
            "accountId": "123456789012", "architecture": "x86_64", "availabilityZone": self.availability_zone,
            "imageId": self.image_id, "instanceId": self.instance_id, "instanceType": self.instance_type,
            "privateIp": self.private_ip, "region": self.region, "version": "2017-09-30",
        }  # fmt: skip
        return {"meta-data": meta, "dynamic": {"instance-identity": {"document": json.dumps(document)}}}

    def _role_credentials(self) -> str:
        now = datetime.now(UTC).replace(microsecond=0)
        return json.dumps({
            "Code": "Success", "LastUpdated": _iso(now), "Type": "AWS-HMAC",
            "AccessKeyId": self.credentials["AccessKeyId"], "SecretAccessKey": self.credentials["SecretAccessKey"],
            # moto does not check session tokens; this one names the instance (for reading logs)
            "Token": f"standin-{self.instance_id}-{secrets.token_hex(8)}",
            "Expiration": _iso(now + CREDENTIALS_LIFETIME),
        })  # fmt: skip


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a client that never sends its request does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] != "/latest/api/token":
            return self._send(404, "Not Found")
        if self.headers.get("X-Forwarded-For"):
            return self._send(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= _MAX_TOKEN_TTL_S:
            return self._send(400, "Bad Request")
        self._send(200, self.server.issue_token(int(ttl)), {"X-aws-ec2-metadata-token-ttl-seconds": ttl})

    def do_GET(self) -> None:  # noqa: N802
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token is not None and not self.server.valid_token(token):
            return self._send(401, "Unauthorized")
        if token is None and self.server.metadata.tokens_required:
            return self._send(401, "Unauthorized")
        answer = _lookup(self.server.metadata.tree(), self.path.split("?")[0])
        if answer is None:
            return self._send(404, "Not Found")
        if isinstance(answer, dict):
            return self._send(200, "\n".join(k + ("/" if isinstance(v, dict) else "") for k, v in answer.items()))
        self._send(200, answer)

    def _refuse(self) -> None:
        self._send(405, "Method Not Allowed")

    do_POST = do_DELETE = do_PATCH = do_HEAD = _refuse  # noqa: N815

    def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _lookup(tree: dict[str, Any], path: str) -> Any:
    if not path.startswith("/latest/"):
        return None
    node: Any = tree
    for part in [p for p in path[len("/latest/") :].split("/") if p]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
        node = node() if callable(node) else node  # answers made when asked (credentials, tags)
    return node


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    metadata: InstanceMetadata

    def __init__(self, listener: socket.socket, metadata: InstanceMetadata) -> None:
        super().__init__(listener.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.metadata = metadata
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue_token(self, ttl_s: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: end for t, end in self._tokens.items() if end > now}
            self._tokens[token] = now + ttl_s
        return token

    def valid_token(self, token: str) -> bool:
        with self._lock:
            return self._tokens.get(token, 0.0) > time.monotonic()


def listen_in_namespace(netns: str, address: str = ADDRESS, port: int = 80) -> socket.socket:
    """A listening TCP socket at `address`:`port` inside network namespace `netns`, made by a
    thread that enters the namespace (setns affects only the calling thread) and ends there:
    the socket stays in the namespace, this process stays in its own."""
    result: list[socket.socket | BaseException] = []

    def enter_and_listen() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.create_server((address, port), backlog=64))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result.append(exc)

    # The thread ends inside the namespace: a fresh thread, never one of a pool.
    thread = threading.Thread(target=enter_and_listen, name=f"imds-listen-{netns}", daemon=True)
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class InstanceMetadataService:
    """The metadata service of one node: `start(netns)` after the namespace exists (with `lo`
    up; it adds 169.254.169.254/32 to it), `stop()` before the namespace is deleted."""

    def __init__(self, metadata: InstanceMetadata) -> None:
        self.metadata = metadata
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, netns: str) -> InstanceMetadataService:
        from raylauncher.local.ec2_standin.network import ip

        ip("addr", "add", f"{ADDRESS}/32", "dev", "lo", netns=netns)
        self._server = _Server(listen_in_namespace(netns), self.metadata)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name=f"imds-{self.metadata.instance_id}", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
