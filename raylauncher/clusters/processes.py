"""Process groups we start and must be able to end: by session, never by name.

Everything we launch (`ray start`, `ray up`, `ray down`) runs in a new session whose id is
its pid, with a marker variable in its environment. Stopping means: SIGTERM every process of
that session (plus any that carries the marker but left the session), a short wait, SIGKILL
the rest, and report what is still alive. Never `ray stop`: it stops every Ray on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil

#: Set in the environment of every process we launch (value: the job id).
MARKER_ENV = "RAYLAUNCHER_LOCAL_CLUSTER"
STDERR_TAIL_CHARS = 2000


def _marker_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(MARKER_ENV)
    except psutil.Error:
        return None


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def processes_of(session_id: int, marker: str | None = None) -> list[psutil.Process]:
    """Live processes of the session, plus any that carries `marker` but left the session
    (Ray runs a job's entrypoint under setsid)."""
    found = []
    for proc in psutil.process_iter():
        try:
            in_session = os.getsid(proc.pid) == session_id
        except OSError:
            continue
        if (in_session or (marker is not None and _marker_of(proc) == marker)) and _live(proc):
            found.append(proc)
    return found


def leftover_processes() -> list[psutil.Process]:
    """Live processes of any cluster or launcher call of ours, by the inherited marker."""
    return [p for p in psutil.process_iter() if _marker_of(p) is not None and _live(p)]


def stop_processes(session_id: int, marker: str | None, grace_s: float) -> list[psutil.Process]:
    """SIGTERM, wait up to `grace_s`, SIGKILL, and a last sweep for late forks.
    Returns the processes still alive afterwards (empty when all are gone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        procs = processes_of(session_id, marker)
        if not procs:
            return []
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=grace_s)
    return processes_of(session_id, marker)


def stop_marked(marker: str, grace_s: float, session_id: int | None = None) -> list[psutil.Process]:
    """Stop a cluster whose launching process is gone (its driver died): every session that a
    process carrying `marker` belongs to (and `session_id`, if known), plus every process
    carrying the marker. Returns what survived."""
    sessions = {session_id} if session_id else set()
    for proc in psutil.process_iter():
        if _marker_of(proc) == marker and _live(proc):
            try:
                sessions.add(os.getsid(proc.pid))
            except OSError:
                continue
    sessions.discard(os.getsid(0))  # never our own session
    survivors: list[psutil.Process] = []
    for sid in sessions or {-1}:  # -1: no session known; the marker alone still applies
        survivors += stop_processes(sid, marker, grace_s)
    return survivors


@dataclass(frozen=True)
class CliResult:
    returncode: int | None  # None when we killed it
    stdout: str
    stderr_tail: str
    timed_out: bool = False
    interrupted: bool = False  # stopped because `should_stop()` said so

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (self.timed_out or self.interrupted)

    def describe(self) -> str:
        what = "timed out" if self.timed_out else "was interrupted" if self.interrupted else f"exited {self.returncode}"
        return f"{what}: {self.stderr_tail or '(no output)'}"


def run_cli(
    argv: Sequence[str],
    timeout_s: float,
    env: Mapping[str, str],
    marker: str,
    should_stop: Callable[[], bool] = lambda: False,
    grace_s: float = 5.0,
    poll_s: float = 0.5,
) -> CliResult:
    """Run a launcher command in its own session under a deadline; on timeout or when
    `should_stop()` turns true, stop its whole session (ssh and rsync children included)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            list(argv), env={**env, MARKER_ENV: marker}, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + max(timeout_s, 0)
        timed_out = interrupted = False
        try:
            while proc.poll() is None:
                if time.monotonic() >= deadline:
                    timed_out = True
                elif should_stop():
                    interrupted = True
                if timed_out or interrupted:
                    break
                time.sleep(poll_s)
        finally:
            # Whatever ended the wait (done, deadline, cancel, a signal, an error): nothing of
            # this call may outlive it — `ray up` racing a `ray down` would leave a cluster.
            stop_processes(proc.pid, None, grace_s)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
        stdout = out.read().decode(errors="replace")
    tail = (stderr or stdout.strip())[-STDERR_TAIL_CHARS:]
    return CliResult(None if (timed_out or interrupted) else proc.returncode, stdout, tail, timed_out, interrupted)
