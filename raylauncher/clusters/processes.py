"""Process groups we start and must be able to end: by session, never by name.

Everything we launch (`ray start`, `ray up`, `ray down`) runs in a new session whose id is
its pid, with marker variables in its environment (`marker_env`): the job id and this
checkout. Stopping means: SIGTERM every process of that session (plus any that carries the
job's marker and this checkout's but left the session), a short wait, SIGKILL the rest, and
report what is still alive. Never `ray stop`: it stops every Ray on the machine.

Reading the markers: a process's environment is read from `/proc/<pid>/environ` (psutil),
which shows the memory block the process was started with. Ray renames its processes with
setproctitle (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`, `ray-dashboard-*Head-0`), and
setproctitle overwrites that block with the title unless `SPT_NOENV` is set: those processes
then show an empty environment, the marker included (seen with ray 2.60). `marker_env` sets
`SPT_NOENV=1` so every process keeps its markers readable; for processes started without it,
the leftovers scan also counts every process of a session whose leader is ours.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import psutil

from raylauncher import PROJECT_DIR

log = logging.getLogger(__name__)

#: Set in the environment of every process we launch (value: the job id).
MARKER_ENV = "RAYLAUNCHER_LOCAL_CLUSTER"
#: Set next to MARKER_ENV (value: the checkout the launching code runs from).
CHECKOUT_ENV = "RAYLAUNCHER_CHECKOUT"
#: This checkout (the unscoped value of CHECKOUT_ENV).
CHECKOUT = str(PROJECT_DIR)
#: Narrows "ours" to one run inside this checkout (a test worker: `gw0`), so that runs side by
#: side never count, list or stop each other's processes. Unset: the whole checkout, every
#: scope included (what `make check-no-ray` looks at after the test run).
SCOPE_ENV = "RAYLAUNCHER_SCOPE"
_SCOPE_SEPARATOR = "#"
#: Ray's setproctitle leaves /proc/<pid>/environ alone when this is set (titles then fit in
#: the original command line's space, which Ray's long command lines leave plenty of).
_KEEP_ENVIRON = {"SPT_NOENV": "1"}
STDERR_TAIL_CHARS = 2000


def checkout_id() -> str:
    """What this process's launches carry in CHECKOUT_ENV: the checkout, and its scope if one
    is set (read each time: a test session sets it before it starts anything)."""
    scope = os.environ.get(SCOPE_ENV, "")
    return f"{CHECKOUT}{_SCOPE_SEPARATOR}{scope}" if scope else CHECKOUT


def is_ours(checkout: str | None) -> bool:
    """Whether a CHECKOUT_ENV value belongs to this process's checkout and scope. Unscoped, any
    scope of this checkout is ours too."""
    if checkout is None:
        return False
    mine = checkout_id()
    return checkout == mine or (mine == CHECKOUT and checkout.startswith(CHECKOUT + _SCOPE_SEPARATOR))


def marker_env(job_id: str) -> dict[str, str]:
    """The variables every process we launch carries: which job, which checkout (and scope),
    and the switch that keeps them readable after Ray renames a process."""
    return {MARKER_ENV: job_id, CHECKOUT_ENV: checkout_id(), **_KEEP_ENVIRON}


@dataclass(frozen=True)
class Marks:
    """What a process's environment says about it."""

    job: str | None = None
    checkout: str | None = None

    @property
    def ours(self) -> bool:
        return self.job is not None and is_ours(self.checkout)


def _marks_of(proc: psutil.Process) -> Marks | None:
    """None when the process is gone."""
    try:
        env = proc.environ()
    except psutil.AccessDenied:  # another user's process: unknown, never assumed ours
        return Marks()
    except psutil.Error:  # gone, or a zombie
        return None
    return Marks(env.get(MARKER_ENV), env.get(CHECKOUT_ENV))


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
        if (in_session or (marker is not None and _carries(proc, marker))) and _live(proc):
            found.append(proc)
    return found


def _carries(proc: psutil.Process, marker: str) -> bool:
    marks = _marks_of(proc)
    return marks is not None and marks.ours and marks.job == marker


@dataclass
class MarkedProcesses:
    """Live processes that carry our job marker, by whose they are."""

    ours: list[psutil.Process] = field(default_factory=list)  # this checkout's
    other_checkouts: list[psutil.Process] = field(default_factory=list)  # another checkout's: not ours
    unscoped: list[psutil.Process] = field(default_factory=list)  # no checkout marker (older code): not ours


def marked_processes() -> MarkedProcesses:
    """Every live process carrying MARKER_ENV, sorted by checkout. A process whose markers
    cannot be seen (renamed by Ray without SPT_NOENV, or unreadable) counts as ours when it is
    in a session whose leader is ours: we start every cluster and launcher call as a session."""
    found = MarkedProcesses()
    unmarked: list[tuple[psutil.Process, int]] = []
    our_sessions: set[int] = set()
    for proc in psutil.process_iter():
        marks = _marks_of(proc)
        if marks is None or not _live(proc):
            continue
        if marks.ours:
            found.ours.append(proc)
            our_sessions.add(proc.pid)  # a session's id is its leader's pid
        elif marks.job is not None:
            (found.other_checkouts if marks.checkout else found.unscoped).append(proc)
        elif marks.checkout is None:
            try:
                unmarked.append((proc, os.getsid(proc.pid)))
            except OSError:
                continue
    found.ours += [proc for proc, sid in unmarked if sid in our_sessions and sid != proc.pid]
    return found


def leftover_processes() -> list[psutil.Process]:
    """Live processes of any cluster or launcher call of this checkout (see marked_processes)."""
    return marked_processes().ours


def stop_processes(session_id: int, marker: str | None, grace_s: float) -> list[psutil.Process]:
    """SIGTERM, wait up to `grace_s`, SIGKILL, and a last sweep for late forks.
    Returns the processes still alive afterwards (empty when all are gone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        procs = processes_of(session_id, marker)
        if not procs:
            return []
        if sig == signal.SIGKILL:
            log.warning("session %d: %d process(es) still running %.0f s after SIGTERM, sending SIGKILL: %s",
                        session_id, len(procs), grace_s, ", ".join(_describe(p) for p in procs))  # fmt: skip
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=grace_s)
    return processes_of(session_id, marker)


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {proc.name()}"
    except psutil.Error:
        return str(proc.pid)


def stop_marked(marker: str, grace_s: float, session_id: int | None = None) -> list[psutil.Process]:
    """Stop a cluster whose launching process is gone (its driver died): every session that a
    process carrying `marker` belongs to (and `session_id`, if known), plus every process
    carrying the marker. Returns what survived."""
    sessions = {session_id} if session_id else set()
    for proc in psutil.process_iter():
        if _carries(proc, marker) and _live(proc):
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
            list(argv), env={**env, **marker_env(marker)}, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
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
