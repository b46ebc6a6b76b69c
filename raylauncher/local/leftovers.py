"""`python -m raylauncher.local.leftovers [--kill]`: list (and with --kill, stop) what our local
runs left behind: Ray processes of ours (only those carrying our marker variable, never anyone
else's Ray) and whatever an EC2 stand-in made (network namespaces, bridge and veths named by
it, its node processes and files). Exits 1 if anything is (still) there."""

import argparse
import shutil
import sys

import psutil

from raylauncher.clusters.processes import leftover_processes


def _standin_leftovers(kill: bool) -> list[str]:
    if shutil.which("ip") is None:
        return []  # no iproute2: no stand-in can have run here
    from raylauncher.local.ec2_standin import cleanup
    from raylauncher.local.ec2_standin.standin import STATE_ROOT

    if kill:
        cleanup.remove_all(STATE_ROOT)
    return cleanup.leftovers()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill", action="store_true", help="SIGTERM, then SIGKILL, our leftover processes; "
                        "remove what EC2 stand-ins left")  # fmt: skip
    args = parser.parse_args()
    procs = leftover_processes()
    for proc in procs:
        try:
            print(f"left running: pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
        except psutil.Error:
            print(f"left running: pid {proc.pid}")
    if args.kill and procs:
        for sig_procs in (procs, leftover_processes()):
            for proc in sig_procs:
                try:
                    proc.terminate() if sig_procs is procs else proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(sig_procs, timeout=5)
        procs = leftover_processes()
    standin = _standin_leftovers(args.kill)
    for line in standin:
        print(f"left by an EC2 stand-in: {line}")
    print("no Ray process of ours left running" if not procs else f"{len(procs)} Ray process(es) of ours left running")
    print("nothing of an EC2 stand-in left" if not standin else f"{len(standin)} thing(s) of an EC2 stand-in left")
    return 1 if procs or standin else 0


if __name__ == "__main__":
    sys.exit(main())
