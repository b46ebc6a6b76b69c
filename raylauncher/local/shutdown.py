"""Ending what a local system started: every unfinished job is cancelled and awaited while the
watchdog sweeps (a job whose driver is gone is taken over), then whatever is left is taken over
at once — its cluster torn down. `raylauncher serve` does it on Ctrl-C/SIGTERM, and
`local_system` on exit (a test or demo that failed half-way leaves no cluster running)."""

from __future__ import annotations

import sys
import time

from raylauncher.control import request_cancel
from raylauncher.errors import RayLauncherError
from raylauncher.local.runtime import LocalSystem, wait_for_jobs
from raylauncher.model import utc_now
from raylauncher.warm import LIVE
from raylauncher.watchdog import Watchdog

SHUTDOWN_TIMEOUT_S = 120
TAKEOVER_TRIES = 10
WATCHDOG_EVERY_S = 5


def stop_unfinished_jobs(system: LocalSystem, watchdog: Watchdog, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
    """Cancel every job not yet terminal and wait for them to end, sweeping meanwhile (lost
    drivers are taken over); then take over what is left. True if every job ended."""
    unfinished = [j for j in system.store.list_jobs() if not j.is_terminal]
    if not unfinished:
        stop_kept_clusters(system, watchdog)
        return True
    print(f"cancelling {len(unfinished)} unfinished job(s) and waiting for their clusters to go…")
    for job in unfinished:
        try:
            request_cancel(system.store, job.job_id)
        except RayLauncherError as err:
            print(f"  could not cancel {job.job_id}: {err}", file=sys.stderr)
    deadline = time.monotonic() + timeout_s
    jobs = system.store.list_jobs()
    try:
        while time.monotonic() < deadline and not all(j.is_terminal for j in jobs):
            sweep(watchdog)
            jobs = wait_for_jobs(system.store, lambda js: all(j.is_terminal for j in js), WATCHDOG_EVERY_S)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting, but the clusters still go
        print("not waiting any longer: tearing the clusters down now", file=sys.stderr)
        jobs = system.store.list_jobs()
    for job in (j for j in jobs if not j.is_terminal):
        print(f"  {job.job_id} has not ended: the watchdog takes it over", file=sys.stderr)
        try:
            watchdog.take_over(job)
        except RayLauncherError as err:
            print(f"  could not take over {job.job_id}: {err}", file=sys.stderr)
    stop_kept_clusters(system, watchdog)
    left = [j.job_id for j in system.store.list_jobs() if not j.is_terminal]
    if left:
        print(f"still not finished: {', '.join(left)}", file=sys.stderr)
    else:
        print("every job has ended")
    return not left


def stop_kept_clusters(system: LocalSystem, watchdog: Watchdog) -> None:
    """Warm and held clusters (raylauncher/warm.py) outlive their jobs: the watchdog takes each
    over from its holder and tears it down (the holder finds it is no longer its own)."""
    try:
        kept = system.store.clusters.live()
    except RayLauncherError as err:
        print(f"could not list the kept clusters: {err}", file=sys.stderr)
        return
    for record in kept:
        print(f"  tearing down kept cluster {record.name} ({record.status})")
        for _ in range(TAKEOVER_TRIES):  # a takeover loses to a holder renewing meanwhile: read again
            try:
                if watchdog.tear_down_cluster(record, utc_now(), "the local system is stopping") is not None:
                    break
                time.sleep(0.2)
                record = system.store.clusters.get(record.key)
            except RayLauncherError as err:
                print(f"  could not tear down {record.name}: {err}", file=sys.stderr)
                break
            if record.status not in LIVE:
                break
        else:
            print(f"  could not take {record.name} from its holder", file=sys.stderr)


def sweep(watchdog: Watchdog) -> None:
    try:
        watchdog.sweep()
    except RayLauncherError as err:  # logged; the next sweep tries again
        print(f"watchdog sweep failed: {err}", file=sys.stderr)
