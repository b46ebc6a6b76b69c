"""A node's bootstrap on a stock image, for real: the setup commands the EC2 backend renders for
an image without Ray (`raylauncher.clusters.ec2_config.setup_commands`, preinstalled=False),
run one by one as Ray's launcher runs them, in a fresh Debian root made by debootstrap, as a
non-root user with passwordless sudo (the `ubuntu` user of the stack's default image). Then the
check a node's `ray start` depends on: `ray` and a Python with the pinned Ray and boto3 first on
PATH of a login shell, and every command run a second time (Ray may rerun them) still exits 0.

What differs from the stack's default image (Ubuntu 22.04 from Canonical): Debian 12 (python
3.11, apt 2.6) instead of Ubuntu 22.04 (python 3.10); no cloud-init and no unattended-upgrades
running (the commands' waits for them are skipped or find nothing to wait for); minbase (fewer
packages than a cloud image: what it lacks, the commands must install). It runs in a chroot on
this machine's network: Debian's mirror and PyPI, the registries this machine reaches; the root
trusts the host's CA bundle (this machine's TLS-intercepting proxy; /etc/pip.conf names it).

Figures: seconds for debootstrap, for each setup command, and in all for the node's bootstrap
(the setup commands) — what baking the pinned Ray into an image (`ray_preinstalled`) saves
on every node's first boot. Written to bench/results/node_bootstrap.json.

Usage (root, Linux, debootstrap installed; about 5-10 minutes, downloads Ray's wheels):
    python bench/node_bootstrap.py [--suite bookworm] [--keep DIR]
    python bench/node_bootstrap.py --print > node-setup.sh   # the commands as a script (to bake an image)
`make check-bootstrap` runs it; the test suite does not need it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import write_result  # noqa: E402

from raylauncher.clusters.ec2_config import pinned_boto3_version, pinned_ray_version, setup_commands  # noqa: E402

USER = "ubuntu"
MIRROR = "http://deb.debian.org/debian"


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]


def as_ray_runs_it(command: str) -> str:
    """The shell line Ray's SSH command runner makes of a node command (its own function)."""
    from ray.autoscaler._private.command_runner import _with_interactive

    return " ".join(_with_interactive(command))


class Root:
    """A debootstrapped root with /proc, /dev and the host's DNS, a sudo user, torn down on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounts: list[Path] = []

    def create(self, suite: str) -> float:
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o755)  # the root's "/": mkdtemp makes it 0700, and the user must get in
        started = time.monotonic()
        done = run(["debootstrap", "--variant=minbase", "--include=sudo,ca-certificates", suite, str(self.path), MIRROR])
        if done.returncode != 0:
            raise SystemExit(f"debootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        seconds = time.monotonic() - started
        for target, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--rbind", "/dev"]), ("sys", ["-t", "sysfs", "sys"])):
            mount_point = self.path / target
            subprocess.run(["mount", *args, str(mount_point)], check=True)
            self.mounts.append(mount_point)
        shutil.copy("/etc/resolv.conf", self.path / "etc" / "resolv.conf")
        # This machine reaches PyPI through a TLS-intercepting proxy: the root trusts what the host
        # trusts, for pip too (a site setting, as behind a corporate proxy; not a node command).
        host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if host_bundle.exists():
            shutil.copy(host_bundle, self.path / "etc" / "ssl" / "certs" / "host-ca-bundle.crt")
            (self.path / "etc" / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n")
        self.chroot(["useradd", "--create-home", "--shell", "/bin/bash", USER])
        (self.path / "etc" / "sudoers.d" / USER).write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
        (self.path / "etc" / "sudoers.d" / USER).chmod(0o440)
        return seconds

    def chroot(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return run(["chroot", str(self.path), *argv])

    def as_user(self, shell_line: str) -> subprocess.CompletedProcess[str]:
        env = ["env", "-i", f"HOME=/home/{USER}", f"USER={USER}", "LOGNAME=" + USER, "PATH=/usr/local/bin:/usr/bin:/bin",
               "TERM=dumb", "LANG=C.UTF-8"]  # fmt: skip
        return self.chroot(["runuser", "-u", USER, "--", *env, "bash", "-c", shell_line])

    def unmount(self) -> bool:
        """Unmount /proc, /dev, /sys of the root; False if any is still mounted."""
        for mount_point in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(mount_point)], check=False)
        still = [m for m in self.mounts if os.path.ismount(m)]
        self.mounts = still
        return not still

    def remove(self) -> None:
        # never delete through a bind mount of the host's /dev
        if not self.unmount():
            print(f"could not unmount {', '.join(map(str, self.mounts))}: {self.path} left in place", file=sys.stderr)
            return
        shutil.rmtree(self.path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", help="the Debian release to bootstrap (default %(default)s)")
    parser.add_argument("--keep", type=Path, help="bootstrap into this directory and keep it (for a look inside)")
    parser.add_argument("--print", action="store_true",
                        help="print the setup commands, one per line, and exit (to bake a node image by hand)")
    args = parser.parse_args()
    ray, boto3 = pinned_ray_version(), pinned_boto3_version()
    commands, head_commands = setup_commands(ray, boto3, preinstalled=False)
    if args.print:  # a script: each command as Ray runs it, in its own login shell, stopping at a failure
        print("#!/bin/bash\n# the node setup commands of raylauncher, as Ray's launcher runs them\nset -e")
        print("\n".join(as_ray_runs_it(c) for c in [*commands, *head_commands]))
        return 0
    if shutil.which("debootstrap") is None:
        print("needs debootstrap (apt-get install -y debootstrap), as root", file=sys.stderr)
        return 2
    path = args.keep or Path(tempfile.mkdtemp(prefix="raylauncher-bootstrap-", dir="/var/tmp"))
    root = Root(path)
    steps: list[dict[str, object]] = []
    try:
        print(f"debootstrap {args.suite} (minbase) into {path} ...", file=sys.stderr)
        debootstrap_s = root.create(args.suite)
        print(f"debootstrap: {debootstrap_s:.1f} s", file=sys.stderr)
        for command in [*commands, *head_commands]:
            started = time.monotonic()
            done = root.as_user(as_ray_runs_it(command))
            seconds = time.monotonic() - started
            steps.append({"command": command, "seconds": round(seconds, 1), "exit": done.returncode})
            print(f"[{seconds:6.1f} s] exit {done.returncode}: {command[:100]}", file=sys.stderr)
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
                return 1
        # Ray may run the setup commands again on the same node (and a baked image meets them again):
        # every one must succeed a second time
        rerun_started = time.monotonic()
        for command in [*commands, *head_commands]:
            again = root.as_user(as_ray_runs_it(command))
            if again.returncode != 0:
                print(f"a second run failed (exit {again.returncode}): {command}\n{again.stderr[-2000:]}", file=sys.stderr)
                return 1
        rerun_s = time.monotonic() - rerun_started
        print(f"second run of every command: {rerun_s:.1f} s, all exit 0", file=sys.stderr)
        check = root.as_user(as_ray_runs_it(
            "command -v ray && python -c 'import ray, boto3; print(ray.__version__, boto3.__version__)'"))  # fmt: skip
        found = check.stdout.split()
        ok = check.returncode == 0 and found[-2:] == [ray, boto3] and "raylauncher-venv" in found[0]
        print(f"check: {' '.join(found) or check.stderr.strip()[-500:]}", file=sys.stderr)
        bootstrap_s = sum(float(s["seconds"]) for s in steps)  # type: ignore[arg-type]
        write_result("node_bootstrap", {
            "params": {"suite": args.suite, "variant": "minbase", "ray": ray, "boto3": boto3},
            "debootstrap_s": round(debootstrap_s, 1), "bootstrap_s": round(bootstrap_s, 1), "steps": steps,
            "rerun_s": round(rerun_s, 1), "ray_on_path": found[0] if found else None, "ok": ok,
        })  # fmt: skip
        print(f"node bootstrap on a stock image: {bootstrap_s:.1f} s ({'ok' if ok else 'FAILED'}); "
              f"an image with Ray baked in (node_ami_has_ray) skips it on every node")  # fmt: skip
        return 0 if ok else 1
    finally:
        if args.keep:
            root.unmount()
        else:
            root.remove()


if __name__ == "__main__":
    sys.exit(main())
