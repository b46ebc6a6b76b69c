"""The driver's lease on its job: a heartbeat every few seconds, from a thread of its own, so a
long `ray up` or teardown keeps it too. The watchdog takes over a job whose heartbeat is older
than the lease (DRIVER_LOST); a driver that finds its lease gone stops touching the job and
its cluster: the watchdog tears the cluster down."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from raylauncher.errors import RayLauncherError, TransitionConflict
from raylauncher.store import JobStore
from raylauncher.cluster_records import ClusterRecords

log = logging.getLogger(__name__)


class JobTakenOver(RayLauncherError):
    """The job is no longer this driver's (the watchdog took it over): leave it alone."""


def new_owner_token() -> str:
    return f"driver:{socket.gethostname()[:40]}:{secrets.token_hex(4)}"


class Lease:
    def __init__(self, store: JobStore, job_id: str, owner: str, interval_s: float) -> None:
        self._store = store
        self._job_id = job_id
        self.owner = owner
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.lost = False

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._renew()
            except TransitionConflict:
                log.warning("job %s: lease lost (taken over or finished elsewhere); leaving it alone", self._job_id)
                self.lost = True
                return
            except RayLauncherError:  # the store is unreachable: try again at the next beat
                log.warning("job %s: could not renew the lease", self._job_id, exc_info=True)

    def _renew(self) -> None:
        self._store.renew_lease(self._job_id, self.owner)

    def check(self) -> None:
        """Raise JobTakenOver if the lease was lost (called at the driver's safe points)."""
        if self.lost:
            raise JobTakenOver(f"job {self._job_id} was taken over")

    @contextmanager
    def held(self) -> Iterator[Lease]:
        thread = threading.Thread(target=self._run, name=f"lease-{self._job_id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)


class ClusterLease(Lease):
    """The lease of whoever holds a warm or held cluster (raylauncher/warm.py): the cluster
    record's heartbeat, renewed iff this holder still owns it."""

    def __init__(self, clusters: ClusterRecords, key: str, owner: str, interval_s: float) -> None:
        super().__init__(None, key, owner, interval_s)  # type: ignore[arg-type]
        self._clusters = clusters

    def _renew(self) -> None:
        self._clusters.renew_lease(self._job_id, self.owner)
