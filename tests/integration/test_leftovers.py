"""The leftovers check (`python -m raylauncher.local.leftovers`, `make check-no-ray`) on real
processes: only this checkout's processes are counted or killed, and processes Ray renamed
(which can wipe their environment block) are still found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.doubles import MemoryClusterTokens
from raylauncher.clusters.local import LocalRayBackend
from raylauncher.clusters.processes import (
    CHECKOUT_ENV,
    MARKER_ENV,
    checkout_id,
    leftover_processes,
    marked_processes,
    marker_env,
    processes_of,
)
from raylauncher.clusters.temp_dirs import leftover_temp_dirs, make_temp_dir, our_temp_dirs, remove_temp_dirs
from raylauncher.config import parse_pipelines
from raylauncher.model import Job

Spawn = Callable[..., subprocess.Popen[bytes]]
OTHER_CHECKOUT = "/somewhere/else/raylauncher"


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a process in a session of its own with the given extra environment; kill every
    process of the sessions started here afterwards (by session id: only ours)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv or ["sleep", "600"], env={"PATH": os.environ["PATH"], **env},
                                start_new_session=True, stdin=subprocess.DEVNULL)  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        for member in processes_of(proc.pid):
            member.kill()
        proc.kill()
        proc.wait(timeout=10)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftovers_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # No iproute2 on the CLI's PATH: the EC2 stand-in part (machine-wide state other runs may
    # be using right now) stays out of these tests; the Ray part is what they are about.
    env = {**os.environ, "PATH": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "raylauncher.local.leftovers", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def wait_until(check: Callable[[], bool], timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_another_checkouts_processes_are_neither_counted_nor_killed(spawn: Spawn) -> None:
    # Given a process of ours, one of another checkout and one started by code older than the
    # checkout marker (job marker only), all alive
    ours = spawn(marker_env("job-ours"))
    theirs = spawn({MARKER_ENV: "job-theirs", CHECKOUT_ENV: OTHER_CHECKOUT})
    unscoped = spawn({MARKER_ENV: "job-old"})
    assert wait_until(lambda: all(alive(p.pid) for p in (ours, theirs, unscoped)))

    # When the check runs, Then only ours is counted: exit 1, theirs listed as not ours
    found = marked_processes()
    assert ours.pid in {p.pid for p in found.ours}
    assert theirs.pid in {p.pid for p in found.other_checkouts}
    assert unscoped.pid in {p.pid for p in found.unscoped}
    assert {theirs.pid, unscoped.pid}.isdisjoint(p.pid for p in leftover_processes())
    check = leftovers_cli()
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"left running: pid {ours.pid}: sleep 600" in check.stdout
    assert f"not ours (checkout {OTHER_CHECKOUT}), left alone: pid {theirs.pid}: sleep 600" in check.stdout
    assert f"not ours (no checkout marker: started by older code), left alone: pid {unscoped.pid}" in check.stdout
    assert f"checkout: {checkout_id()}" in check.stdout

    # When --kill runs, Then ours is gone, the others still run, and the check passes
    killed = leftovers_cli("--kill")
    assert not alive(ours.pid)
    assert alive(theirs.pid) and alive(unscoped.pid)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "no Ray process of ours left running" in killed.stdout
    again = leftovers_cli()
    assert again.returncode == 0 and "no Ray process of ours left running" in again.stdout


def test_stopping_a_job_leaves_another_checkouts_same_job_id_alone(spawn: Spawn) -> None:
    # Given two checkouts running the same test job id, each in a session of its own
    ours = spawn(marker_env("test-job"))
    theirs = spawn({**marker_env("test-job"), CHECKOUT_ENV: OTHER_CHECKOUT})
    # When our teardown looks for the job's processes outside our session (by marker)
    found = {p.pid for p in processes_of(ours.pid, "test-job")}
    # Then it finds ours only
    assert ours.pid in found and theirs.pid not in found


def test_temp_dirs_of_clusters_that_are_gone_are_leftovers_and_only_ours(spawn: Spawn, tmp_path: Path) -> None:
    # Given the temp dir of a cluster of ours whose processes are gone, the temp dir of a cluster
    # of ours that still runs (a process of ours names it), and one of another checkout
    gone = make_temp_dir("job-gone")
    running = make_temp_dir("job-running")
    spawn(marker_env("job-running"), ["sh", "-c", f"sleep 600; : --temp-dir={running}"])
    other = make_temp_dir("job-theirs")
    (other / "raylauncher-owner.json").write_text(json.dumps({"checkout": OTHER_CHECKOUT, "run_id": "job-theirs"}))
    try:
        assert wait_until(lambda: any(str(running) in " ".join(p.cmdline()) for p in leftover_processes()))
        # When the leftovers are listed, Then the gone cluster's dir alone is a leftover dir
        assert leftover_temp_dirs(leftover_processes()) == [gone]
        check = leftovers_cli()
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"left behind: temp dir {gone} of a local cluster that is gone" in check.stdout
        assert str(other) not in check.stdout
        # When --kill runs (it also stops the running one: a leftover process of ours), Then both
        # of ours are gone, the other checkout's dir is still there, and the check passes
        killed = leftovers_cli("--kill")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert not gone.exists() and not running.exists() and other.exists()
        assert "no temp dir of ours left" in killed.stdout
    finally:
        for path in (gone, running, other):
            shutil.rmtree(path, ignore_errors=True)


def test_the_temp_dirs_of_one_attempt_are_removed_by_run_id_and_no_other() -> None:
    # Given two attempts' temp dirs
    first, second = make_temp_dir("job-a-1"), make_temp_dir("job-a-2")
    try:
        # When the first attempt's are removed (its cluster is verified gone)
        assert remove_temp_dirs("job-a-1") == []
        # Then the second attempt's is still there
        assert not first.exists() and second.exists() and our_temp_dirs("job-a-2") == [second]
    finally:
        shutil.rmtree(second, ignore_errors=True)


RENAME = "import ray._raylet, time; ray._raylet.setproctitle('ray::DashboardAgent'); time.sleep(600)"


def test_a_process_ray_renamed_keeps_its_markers_readable(spawn: Spawn) -> None:
    # Given a process started with our markers that Ray's setproctitle renames, as Ray does
    # with its agents and dashboard heads
    proc = spawn(marker_env("job-renamed"), [sys.executable, "-c", RENAME])
    assert wait_until(lambda: psutil.Process(proc.pid).cmdline()[:1] == ["ray::DashboardAgent"])
    # When its environment is read from outside, Then the markers are there (SPT_NOENV)
    env = psutil.Process(proc.pid).environ()
    assert (env.get(MARKER_ENV), env.get(CHECKOUT_ENV)) == ("job-renamed", checkout_id())
    assert proc.pid in {p.pid for p in leftover_processes()}


def test_a_renamed_process_with_a_wiped_environment_is_found_by_its_session(spawn: Spawn) -> None:
    # Given a session led by a process of ours whose child Ray renamed without SPT_NOENV (how
    # older code started clusters): the child's environment reads as empty
    env = {k: v for k, v in marker_env("job-wiped").items() if k != "SPT_NOENV"}
    leader = spawn(env, ["sh", "-c", f'{sys.executable} -c "{RENAME}" & wait'])

    def renamed_child() -> list[psutil.Process]:
        return [c for c in psutil.Process(leader.pid).children() if c.cmdline()[:1] == ["ray::DashboardAgent"]]

    assert wait_until(lambda: bool(renamed_child()))
    child = renamed_child()[0]
    assert MARKER_ENV not in child.environ()  # what psutil (and /proc/<pid>/environ) show
    # When the leftovers are listed, Then the child counts as ours, through its session
    assert {leader.pid, child.pid} <= {p.pid for p in leftover_processes()}


def test_every_process_of_a_real_local_cluster_carries_the_markers(tmp_path: Path) -> None:
    # Given a real local Ray cluster with its dashboard, started the way jobs get theirs
    config = parse_pipelines(
        {"pipelines": [{"name": "probe", "trigger": {"prefix": "in/"}, "entrypoint": {"script": "jobs/x.py"},
                        "cluster": {"local_num_cpus": 1}, "output_prefix": "out/"}]}
    )  # fmt: skip
    backend = LocalRayBackend(tmp_path, os.environ, job_env={}, tokens=MemoryClusterTokens())
    job = Job.new("probe", "api")
    handle = backend.up(job, config.pipelines[0], 120, lambda: False)
    try:
        session = int(handle.details["session_id"])

        def agents_up() -> bool:
            titles = {(p.cmdline() or [""])[0] for p in processes_of(session)}
            return {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= titles

        assert wait_until(agents_up, 60), "Ray's agents did not start"
        # When each process's environment is read from outside, Then every one, the renamed
        # agents and dashboard heads included, carries this job's and this checkout's markers
        unmarked = []
        for proc in processes_of(session):
            env = proc.environ()
            if (env.get(MARKER_ENV), env.get(CHECKOUT_ENV)) != (job.job_id, checkout_id()):
                unmarked.append(" ".join(proc.cmdline())[:80])
        assert unmarked == []
        assert {p.pid for p in processes_of(session)} <= {p.pid for p in leftover_processes()}
    finally:
        # Then teardown by session and job marker leaves nothing of ours
        assert backend.down(job) == 1
    assert processes_of(session, job.job_id) == []
