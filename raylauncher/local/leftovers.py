"""`python -m raylauncher.local.leftovers`: exit 1 if a Ray process of ours is still running."""

import sys

from raylauncher.clusters.processes import leftover_processes


def main() -> int:
    procs = leftover_processes()
    for proc in procs:
        print(f"left running: pid {proc.pid}: {' '.join(proc.info['cmdline'] or [])[:200]}")
    print("no Ray process of ours left running" if not procs else f"{len(procs)} Ray process(es) of ours left running")
    return 1 if procs else 0


if __name__ == "__main__":
    sys.exit(main())
