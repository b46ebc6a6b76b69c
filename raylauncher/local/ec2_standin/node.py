"""One instance of the stand-in: a network namespace at the instance's private IP, and in it
an `unshare`d PID/mount/UTS namespace whose init runs sshd on that IP only.

Inside, the node sees the machine's files (the image: this Python environment with Ray) but
has its own hostname (`ip-a-b-c-d`) and /etc/hosts (Ray falls back to the hostname to find
its address when there is no default route), its own /tmp and its own home for the SSH user,
whose login profile sets only PATH and no AWS_* variable (as on EC2), and its own instance
metadata service at 169.254.169.254 (imds.py: region and the instance profile's credentials).
Killing the PID namespace's init ends every process of the node, as terminating an instance does.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from raylauncher.local.ec2_standin.imds import InstanceMetadata, InstanceMetadataService
from raylauncher.local.ec2_standin.network import Bridge, namespace_pids, remove_namespace

#: Set on every process the stand-in starts (value: the stand-in's id); see leftovers.
MARKER_ENV = "RAYLAUNCHER_EC2_STANDIN"
SSHD = "/usr/sbin/sshd"

_INIT = r"""#!/bin/bash
# PID 1 of one stand-in node (PID, mount and UTS namespaces of its own, in its network namespace).
set -euo pipefail
node={node}
hostname {hostname}
mount --make-rprivate /
mount --bind "$node/hosts" /etc/hosts
# root's home is the node's own (a bind over /root would hide what lives there, e.g. pyenv)
mount --bind "$node/passwd" /etc/passwd
# Its own /tmp; paths of this machine that live under /tmp and that the node needs (the Python
# environment, the project) are shown again at the same place.
mkdir -p "$node/host-tmp"
mount --rbind /tmp "$node/host-tmp"
mount --rbind "$node/tmp" /tmp
for rel in {keep_under_tmp}; do
  mkdir -p "/tmp/$rel"
  mount --rbind "$node/host-tmp/$rel" "/tmp/$rel"
done
mkdir -p /run/sshd
{daemon} &
wait
"""

_SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {host_key}
PidFile {node}/sshd.pid
AuthorizedKeysFile {node}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 100
MaxSessions 100
PrintMotd no
Subsystem sftp internal-sftp
"""


def hostname_of(address: str) -> str:
    return "ip-" + address.replace(".", "-")


@dataclass(frozen=True)
class NodeImage:
    """What every node boots with: the machine's Python environment, the few variables the
    image sets (no AWS_* among them: a real node has none) and the SSH user's AWS config file."""

    python_bin_dir: str
    environment: dict[str, str]
    keep_under_tmp: tuple[str, ...]  # paths under /tmp the node must still see (relative)
    aws_config: str = ""  # ~/.aws/config of the SSH user (empty: none)

    def __post_init__(self) -> None:
        aws = sorted(k for k in self.environment if k.startswith("AWS_"))
        if aws:
            raise ValueError(f"a node's environment has no AWS_* variables on EC2; got {', '.join(aws)}")

    def login_profile(self) -> str:
        lines = [f"export PATH={shlex.quote(self.python_bin_dir)}:$PATH"]
        lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(self.environment.items())]
        return "\n".join(lines) + "\n"


class Node:
    """A running node; `start()` brings it up, `stop()` kills every process of it and deletes
    its namespace. Its files live in `directory` (removed by the stand-in on shutdown)."""

    def __init__(self, bridge: Bridge, instance_id: str, address: str, directory: Path) -> None:
        self.bridge = bridge
        self.instance_id = instance_id
        self.address = address
        self.directory = directory
        self.netns = bridge.netns_name(instance_id)
        self._proc: subprocess.Popen[bytes] | None = None
        self._metadata_service: InstanceMetadataService | None = None

    def start(
        self, image: NodeImage, public_key: str, host_key: Path, standin_id: str, *, sshd: bool = True,
        metadata: InstanceMetadata | None = None,
    ) -> None:
        """Create the namespace and boot the node. `sshd=False` boots it without sshd (a fault:
        port 22 refuses, as on an instance whose SSH daemon never came up). `metadata`: what its
        instance metadata service answers (None: no service, as with HttpEndpoint=disabled)."""
        d = self.directory
        for sub in ("home", "tmp", "home/.aws"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "home" / ".bash_profile").write_text(image.login_profile())
        if image.aws_config:
            (d / "home" / ".aws" / "config").write_text(image.aws_config)
        (d / "passwd").write_text(_passwd_with_home(Path("/etc/passwd").read_text(), "root", d / "home"))
        (d / "hosts").write_text(f"127.0.0.1 localhost\n{self.address} {hostname_of(self.address)}\n")
        (d / "authorized_keys").write_text(public_key.strip() + "\n")
        (d / "sshd_config").write_text(_SSHD_CONFIG.format(address=self.address, host_key=host_key, node=d))
        init = d / "init.sh"
        init.write_text(_INIT.format(
            node=shlex.quote(str(d)), hostname=hostname_of(self.address),
            daemon=f'{SSHD} -D -e -f "$node/sshd_config"' if sshd else "sleep infinity",
            keep_under_tmp=" ".join(shlex.quote(p) for p in image.keep_under_tmp) or "",
        ))  # fmt: skip
        self.bridge.add_namespace(self.instance_id, self.address)
        if metadata is not None:
            self._metadata_service = InstanceMetadataService(metadata).start(self.netns)
        with open(d / "node.log", "ab") as log:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                 "--uts", "--mount", "--propagation", "private", "bash", str(init)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), MARKER_ENV: standin_id},
            )  # fmt: skip

    def sshd_listening(self) -> bool:
        done = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-Hltn", f"src {self.address}:22"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        return bool(done.stdout.strip())

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, grace_s: float = 0.0) -> None:
        """Kill every process of the node (its namespace's, by PID: the PID namespace's init
        takes the rest with it), then delete the namespace and the veth."""
        kill_namespace_processes(self.netns, grace_s)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._metadata_service is not None:
            self._metadata_service.stop()
            self._metadata_service = None
        remove_namespace(self.netns, self.bridge.veth_name(self.address))


def _passwd_with_home(passwd: str, user: str, home: Path) -> str:
    lines = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == user:
            fields[5] = str(home)
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def kill_namespace_processes(netns: str, grace_s: float = 0.0) -> None:
    """SIGKILL (after an optional SIGTERM and `grace_s`) every process in network namespace `netns`."""
    signals = [signal.SIGTERM, signal.SIGKILL] if grace_s > 0 else [signal.SIGKILL]
    for sig in signals:
        pids = namespace_pids(netns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(_live(p) for p in namespace_pids(netns)):
            time.sleep(0.05)


def _live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
