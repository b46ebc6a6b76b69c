"""`python -m raylauncher.local.leftovers [--kill]`: list (and with --kill, stop) what this
checkout's local runs left behind: temp dirs of local clusters that are gone (`/tmp/rl-*`
marked as ours), Ray processes of ours (only those carrying our marker
variables with this checkout's path, never anyone else's Ray, nor another checkout's) and
whatever an EC2 stand-in of this checkout made, or one whose owner process is gone (network
namespaces, bridge and veths named by it, its node processes and files; another checkout's
stand-in is listed, not counted, and left alone while its owner runs). Exits 1 if anything of
ours is (still) there.

Processes with the job marker but another checkout's path, or no checkout path at all
(started by code older than the checkout marker), are listed as not ours: not counted, never
killed. Stop those from the checkout that started them (or by pid, knowing whose they are)."""

import argparse
import shutil
import sys

import psutil

from raylauncher.clusters.processes import CHECKOUT_ENV, checkout_id, leftover_processes, marked_processes
from raylauncher.clusters.temp_dirs import leftover_temp_dirs, remove_leftover_temp_dirs


def _standin_leftovers(kill: bool) -> tuple[list[str], list[str]]:
    """(lines for this checkout's stand-ins, lines for other stand-ins: not ours, not counted).
    With `kill`, first removes this checkout's and dead ones (their owner process is gone:
    nobody runs them; `Ec2StandIn.start` removes those too). Live ones of others are left alone."""
    if shutil.which("ip") is None:
        return [], []  # no iproute2: no stand-in can have run here
    from raylauncher.local.ec2_standin import cleanup
    from raylauncher.local.ec2_standin.standin import STATE_ROOT

    ours, dead, theirs = cleanup.scoped_ids(STATE_ROOT)
    if kill:
        for standin_id in sorted(ours | dead):
            cleanup.remove_standin(standin_id, STATE_ROOT)
        ours, dead, theirs = cleanup.scoped_ids(STATE_ROOT)
    mine = [line for i in sorted(ours) for line in cleanup.leftovers(i)]
    others = [f"stand-in {i} (checkout {cleanup.owner_checkout(STATE_ROOT, i) or 'unknown'}) is running"
              for i in sorted(theirs)]
    others += [f"stand-in {i}: its owner is gone (--kill removes it): {line}"
               for i in sorted(dead) for line in cleanup.leftovers(i)]
    return mine, others


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"


def _checkout_of(proc: psutil.Process) -> str:
    try:
        return proc.environ().get(CHECKOUT_ENV, "?")
    except psutil.Error:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill", action="store_true", help="SIGTERM, then SIGKILL, this checkout's leftover "
                        "processes; remove its clusters' leftover temp dirs and what EC2 stand-ins left")  # fmt: skip
    args = parser.parse_args()
    found = marked_processes()
    procs = found.ours
    for proc in procs:
        print(f"left running: {_describe(proc)}")
    for proc in found.other_checkouts:
        print(f"not ours (checkout {_checkout_of(proc)}), left alone: {_describe(proc)}")
    for proc in found.unscoped:
        print(f"not ours (no checkout marker: started by older code), left alone: {_describe(proc)}")
    if args.kill and procs:
        for sig_procs in (procs, leftover_processes()):
            for proc in sig_procs:
                try:
                    proc.terminate() if sig_procs is procs else proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(sig_procs, timeout=5)
        procs = leftover_processes()
    temp_dirs = leftover_temp_dirs(procs)
    for path in temp_dirs:
        print(f"left behind: temp dir {path} of a local cluster that is gone")
    if args.kill and temp_dirs:
        temp_dirs = remove_leftover_temp_dirs(procs)
    standin, others = _standin_leftovers(args.kill)
    for line in standin:
        print(f"left by an EC2 stand-in: {line}")
    for line in others:
        print(f"not ours, left alone: {line}")
    print(f"checkout: {checkout_id()}")
    print("no Ray process of ours left running" if not procs else f"{len(procs)} Ray process(es) of ours left running")
    if found.other_checkouts or found.unscoped:
        print(f"{len(found.other_checkouts) + len(found.unscoped)} marked process(es) not ours (not counted)")
    print("no temp dir of ours left" if not temp_dirs else f"{len(temp_dirs)} temp dir(s) of ours left")
    print("nothing of an EC2 stand-in left" if not standin else f"{len(standin)} thing(s) of an EC2 stand-in left")
    return 1 if procs or temp_dirs or standin else 0


if __name__ == "__main__":
    sys.exit(main())
