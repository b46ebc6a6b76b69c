"""The EC2 stand-in: moto's EC2 as the cloud, network namespaces as its instances.

    with Ec2StandIn(moto_endpoint_url, region) as standin:
        standin.deployment_file   # what the EC2 backend reads, as on a bastion
        ...                       # `ray up` / `ray down` against moto make and end nodes

Needs Linux, root, `ip`, `unshare`, `sshd`, `ssh`, `rsync` (`unavailable()` says what is
missing, in one line). Leaves nothing behind on exit (also after Ctrl-C); what a crashed
run left is removed by the next start and by `python -m raylauncher.local.leftovers --kill`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

from raylauncher.aws import LOCAL_SECRET_ACCESS_KEY
from raylauncher.clusters.processes import checkout_id
from raylauncher.config import Ec2Deployment
from raylauncher.local.ec2_standin import cleanup, deltas
from raylauncher.local.ec2_standin.forwarder import Forwarder
from raylauncher.local.ec2_standin.imds import InstanceMetadata
from raylauncher.local.ec2_standin.materializer import Materializer
from raylauncher.local.ec2_standin.network import Bridge, NetworkError, free_subnet
from raylauncher.local.ec2_standin.node import SSHD, NodeImage
from raylauncher.local.ec2_standin.seed import KEY_NAME, seed

log = logging.getLogger(__name__)

#: The access key id of the stand-in's own calls to moto.
OBSERVER_KEY_ID = "standin-observer"
#: Where stand-ins keep their files: not under /tmp, which every node replaces with its own.
STATE_ROOT = Path("/var/lib/raylauncher-standin")
REQUIRED_TOOLS = {"ip": "iproute2", "unshare": "util-linux", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
                  "rsync": "rsync"}  # fmt: skip


class StandInUnavailable(RuntimeError):
    """This machine cannot run the stand-in (the message says why, in one line)."""


def unavailable() -> str | None:
    """Why the stand-in cannot run here, or None if it can."""
    if platform.system() != "Linux":
        return f"the EC2 stand-in needs Linux network namespaces; this is {platform.system()}"
    if os.geteuid() != 0:
        return "the EC2 stand-in needs root (it creates network namespaces and a bridge)"
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if not os.access(SSHD, os.X_OK):
        missing.append("openssh-server")
    if missing:
        return f"the EC2 stand-in needs {', '.join(missing)}: apt-get install -y {' '.join(missing)}"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--uts", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"the EC2 stand-in needs PID/UTS namespaces: unshare said {probe.stderr.decode().strip()!r}"
    return None


def _paths_under_tmp(*paths: Path) -> tuple[str, ...]:
    keep = []
    for path in paths:
        resolved = path.resolve()
        if resolved.is_relative_to("/tmp"):
            keep.append(str(resolved.relative_to("/tmp")))
    return tuple(sorted(set(keep)))


class Ec2StandIn:
    def __init__(
        self, moto_endpoint_url: str, region: str, project_dir: Path, state_root: Path = STATE_ROOT,
        instance_changes: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    ) -> None:
        """`instance_changes(listener)`: where the moto server tells of calls that start or end
        instances (MotoServer.on_instance_change); the stand-in then makes or ends nodes at once
        instead of polling moto five times a second. Returns the unsubscribe."""
        self.moto_endpoint_url = moto_endpoint_url
        self._instance_changes = instance_changes
        self._unsubscribe: Callable[[], None] | None = None
        self.region = region
        self._project_dir = project_dir
        self._state_root = state_root
        self.id = ""
        self.directory = Path()
        self.bridge: Bridge | None = None
        self.deployment: Ec2Deployment | None = None
        self.materializer: Materializer | None = None
        self._forwarder: Forwarder | None = None

    # -- clients on moto --------------------------------------------------------------------------

    def client(self, service: str) -> Any:
        """A client of the stand-in's own (seeding, watching instances): its own access key id,
        so moto's call log tells its calls from the launcher's."""
        return boto3.client(
            service, region_name=self.region, endpoint_url=self.moto_endpoint_url,
            aws_access_key_id=OBSERVER_KEY_ID, aws_secret_access_key=LOCAL_SECRET_ACCESS_KEY,
        )  # fmt: skip

    @property
    def deployment_file(self) -> Path:
        return self.directory / "ec2-deployment.json"

    @property
    def endpoint_for_nodes(self) -> str:
        assert self._forwarder is not None
        host, port = self._forwarder.address
        return f"http://{host}:{port}"

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> Ec2StandIn:
        reason = unavailable()
        if reason:
            raise StandInUnavailable(reason)
        moto = urllib.parse.urlsplit(self.moto_endpoint_url)
        if not moto.hostname or not ipaddress.ip_address(moto.hostname).is_loopback:
            raise StandInUnavailable(f"moto must listen on loopback, not {moto.hostname}")
        cleanup.remove_dead_standins(self._state_root)
        self.id = secrets.token_hex(3)[:5]
        self.directory = self._state_root / self.id
        self.directory.mkdir(parents=True, mode=0o700)
        (self.directory / "owner.json").write_text(json.dumps({"pid": os.getpid(), "checkout": checkout_id()}))
        try:
            self._start(moto.hostname, moto.port or 80)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, moto_host: str, moto_port: int) -> None:
        # Stand-ins side by side (parallel test workers): choosing a free /24 and taking it is
        # one step, under a lock that every stand-in on this machine shares.
        with open(self._state_root / ".network.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.bridge = Bridge(self.id, free_subnet())
            self.bridge.create()
        self._forwarder = Forwarder(self.bridge.address, (moto_host, moto_port)).start()
        node_key, host_key = self.directory / "node_key", self.directory / "ssh_host_ed25519_key"
        for key in (node_key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"raylauncher-standin-{self.id}",
                            "-f", str(key)], check=True)  # fmt: skip
        public_key = node_key.with_suffix(".pub").read_text()
        ec2 = self.client("ec2")
        self.deployment = seed(
            ec2, self.client("iam"), self.region, self.bridge.subnet, public_key,
            deltas.config_overrides(KEY_NAME, str(node_key)),
        )  # fmt: skip
        self.deployment_file.write_text(self.deployment.model_dump_json(indent=1))
        vpc_id = ec2.describe_subnets(SubnetIds=[self.deployment.subnet_ids[0]])["Subnets"][0]["VpcId"]
        image = NodeImage(
            python_bin_dir=str(Path(sys.executable).parent),
            environment=deltas.instance_environment(),
            keep_under_tmp=_paths_under_tmp(Path(sys.prefix), Path(sys.executable).parent, self._project_dir),
            aws_config=deltas.aws_config(self.endpoint_for_nodes),
        )
        self.materializer = Materializer(ec2, vpc_id, self.bridge, image, public_key, host_key,
                                         self.directory / "nodes", self.id,
                                         woken=self._instance_changes is not None,
                                         metadata_of=self._metadata_of)  # fmt: skip
        if self._instance_changes is not None:
            self._unsubscribe = self._instance_changes(self.materializer.wake)
        self.materializer.start()
        log.info("EC2 stand-in %s: bridge %s %s, moto via %s", self.id, self.bridge.name, self.bridge.subnet,
                 self.endpoint_for_nodes)  # fmt: skip

    def _metadata_of(self, instance: dict[str, Any]) -> InstanceMetadata | None:
        """What the instance's metadata service answers: its description in moto, and the
        role of its instance profile (as IAM has it) with that role's keys."""
        if (instance.get("MetadataOptions") or {}).get("HttpEndpoint") == "disabled":
            return None
        role_name = None
        profile_arn = (instance.get("IamInstanceProfile") or {}).get("Arn")
        if profile_arn:
            profile = self.client("iam").get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[-1])
            roles = profile["InstanceProfile"]["Roles"]
            role_name = roles[0]["RoleName"] if roles else None
        keys = deltas.role_keys(role_name) if role_name else {}
        ec2, instance_id = self.client("ec2"), instance["InstanceId"]

        def tags_now() -> dict[str, str]:
            found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance_id]}])["Tags"]
            return {t["Key"]: t["Value"] for t in found}

        return InstanceMetadata.of(instance, self.region, role_name, keys, tags=tags_now)

    def stop(self) -> None:
        """Kill every node, stop the forwarder, delete bridge, namespaces and files. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.materializer is not None:
            self.materializer.stop()
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        if self.id:
            cleanup.remove_standin(self.id, self._state_root)

    def __enter__(self) -> Ec2StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests and the demo look at -----------------------------------------------------------

    def check_route(self, address: str) -> None:
        """NetworkError unless `address` routes via the stand-in's bridge (see network.py)."""
        if self.bridge is None:
            raise NetworkError("the stand-in is not running")
        self.bridge.require_route(address)

    def instances(self) -> list[dict[str, Any]]:
        assert self.materializer is not None
        return self.materializer.instances()

    def refuse_ssh(self, predicate: Callable[[dict[str, str]], bool]) -> None:
        """Fault: instances whose tags match boot without sshd from now on."""
        assert self.materializer is not None
        self.materializer.refuse_ssh = predicate
