"""`python -m raylauncher.local.leftovers [--kill]`: list (and with --kill, stop) local Ray
processes of ours — only those carrying our marker variable, never anyone else's Ray.
Exits 1 if any is (still) running."""

import argparse
import sys

import psutil

from raylauncher.clusters.processes import leftover_processes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill", action="store_true", help="SIGTERM, then SIGKILL, our leftover processes")
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
    print("no Ray process of ours left running" if not procs else f"{len(procs)} Ray process(es) of ours left running")
    return 1 if procs else 0


if __name__ == "__main__":
    sys.exit(main())
