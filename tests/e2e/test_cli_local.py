"""The operator CLI end to end against the local system, as while `raylauncher serve` runs:
moto server, the API handler behind the local HTTP API, the local bastion starting real drivers
and real local Ray clusters. The CLI finds the API through serve's state file, and speaks only HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdas.api import handler as api_handler
from raylauncher.cli import exits, main
from raylauncher.local.http_api import LocalApiServer
from raylauncher.local.runtime import LocalSystem, local_system
from raylauncher.local.serve_state import STATE_FILE_ENV, ServeState, write_state

# pytest-xdist: one worker runs these tests (they share one served local system for the module).
pytestmark = pytest.mark.xdist_group("cli-local")

OPENAPI = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
waiting_for_logs = pytest.mark.skipif(
    "/jobs/{job_id}/logs" not in OPENAPI["paths"], reason="waiting for i11-api: GET /jobs/{job_id}/logs not in the API yet"
)
CLUSTER_IN_VIEW = "cluster" in OPENAPI["components"]["schemas"]["JobView"]["properties"]
waiting_for_pipelines = pytest.mark.skipif(
    "/pipelines" not in OPENAPI["paths"], reason="waiting for i11-api: GET /pipelines not in the API yet"
)
JOB_TIMEOUT_S = 240
PROBES = {
    "probe-ok": "import time\nfor i in range(3):\n    print(f'probe: line {i}', flush=True)\n    time.sleep(1)\n",
    "probe-fail": "import sys\nprint('probe: refusing', flush=True)\nsys.exit(1)\n",
    "probe-sleep": "import time\nprint('probe: sleeping', flush=True)\ntime.sleep(300)\n",
}


def write_project(root: Path) -> tuple[Path, Path]:
    project = root / "project"
    blocks = []
    for name, script in PROBES.items():
        (project / "jobs" / name).mkdir(parents=True)
        (project / "jobs" / name / "main.py").write_text(script)
        blocks.append(f"""
  - name: {name}
    trigger: {{prefix: incoming/{name}/}}
    entrypoint: {{script: jobs/{name}/main.py}}
    cluster: {{local_num_cpus: 1}}
    run_timeout_s: 600
    batching_window_s: 1
    max_concurrent_clusters: 1
    retry: {{max_attempts: 1}}
    output_prefix: outputs/{name}/
""")
    pipelines = project / "pipelines.yaml"
    pipelines.write_text("pipelines:" + "".join(blocks))
    return project, pipelines


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """What `raylauncher serve` runs (minus the S3 poller: inputs placed here start no job),
    with its state file where the CLI looks for it."""
    root = tmp_path_factory.mktemp("cli-local")
    project, pipelines = write_project(root)
    with local_system(root / "state", pipelines, project, start_poller=False) as system:
        for name in PROBES:  # the API refuses a run over an empty prefix
            system.s3.put_object(Bucket=system.settings.bucket, Key=f"incoming/{name}/x.csv", Body=b"a\n1\n")
        api_handler.services.cache_clear()
        try:
            with LocalApiServer(api_handler.handler) as server:
                state = root / "serve.json"
                write_state(state, ServeState(api_url=server.base_url, pid=os.getpid(), bucket=system.settings.bucket,
                                              table=system.settings.table, region=system.settings.region,
                                              endpoint_url=system.settings.endpoint_url))  # fmt: skip
                os.environ[STATE_FILE_ENV] = str(state)  # local_system restores the environment on exit
                os.environ.pop("RAYLAUNCHER_STACK", None)
                yield system
        finally:
            api_handler.services.cache_clear()


def cli(capsys: pytest.CaptureFixture[str], *argv: str, **injected: Any) -> tuple[int, str, str]:
    code = main(list(argv), **injected)
    out, err = capsys.readouterr()
    return code, out, err


def show(capsys: pytest.CaptureFixture[str], job_id: str) -> dict[str, Any]:
    code, out, err = cli(capsys, "jobs", "show", job_id, "-o", "json")
    assert code == exits.OK, err
    return json.loads(out)


def wait_for(capsys: pytest.CaptureFixture[str], job_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = show(capsys, job_id)
        if job["status"] in statuses or time.monotonic() > deadline:
            assert job["status"] in statuses, job
            return job
        time.sleep(0.5)


def cli_process(*argv: str) -> subprocess.Popen[str]:
    """The console script in a process of its own (stdout and stderr are pipes: not a terminal)."""
    return subprocess.Popen([sys.executable, "-m", "raylauncher", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})  # fmt: skip


def test_submit_wait_follows_a_job_to_success_then_list_and_show_it(
    served: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the local system running (the CLI finds it through serve's state file)
    # When the operator submits a run and waits, from a shell whose output is not a terminal
    proc = cli_process("submit", "probe-ok", "--wait")
    out, err = proc.communicate(timeout=JOB_TIMEOUT_S)
    # Then it exits 0, prints the job id and its end on stdout
    assert proc.returncode == exits.OK, err
    job_id, status = out.split()
    assert status == "SUCCEEDED"
    # and on stderr one line per state change (no progress animation, no escape codes)
    lines = [line for line in err.splitlines() if f" {job_id} " in line]
    states = [line.split()[2] for line in lines]
    assert states[-1] == "SUCCEEDED" and "RUNNING" in states
    assert all(a != b for a, b in zip(lines, lines[1:])), "a line repeats although nothing changed"
    assert "\x1b[" not in err
    # When it lists jobs, as JSON and as a table
    code, listed, _ = cli(capsys, "jobs", "list", "--pipeline", "probe-ok", "-o", "json")
    assert code == exits.OK and job_id in [j["job_id"] for j in json.loads(listed)["jobs"]]
    code, table, _ = cli(capsys, "jobs", "list", "--status", "succeeded")
    assert code == exits.OK and job_id in table and "SUCCEEDED" in table
    # and shows it: the record, the timeline with every phase, where the log is
    code, detail, _ = cli(capsys, "jobs", "show", job_id)
    assert code == exits.OK
    for phase in ("QUEUED", "LAUNCHING", "PROVISIONING", "SUBMITTED", "RUNNING", "TEARING_DOWN", "SUCCEEDED"):
        assert phase in detail
    assert "Timeline" in detail and f"s3://{served.settings.bucket}/jobs/{job_id}/logs/" in detail
    assert "█" in detail  # the per-phase bars


@waiting_for_logs
def test_jobs_logs_prints_the_ray_jobs_log(served: LocalSystem, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "submit", "probe-ok", "--wait")
    job_id = out.split()[0]
    assert code == exits.OK
    code, log, _ = cli(capsys, "jobs", "logs", job_id)
    assert code == exits.OK and "probe: line 2" in log
    code, again, _ = cli(capsys, "jobs", "logs", job_id, "--follow", "-o", "json")
    assert code == exits.OK and json.loads(again)["complete"] and "probe: line 0" in json.loads(again)["content"]


def test_a_failed_job_exits_10_with_its_reason(served: LocalSystem, capsys: pytest.CaptureFixture[str]) -> None:
    # When a run whose entrypoint exits 1 is submitted with --wait (JSON: the final job)
    code, out, _ = cli(capsys, "submit", "probe-fail", "--wait", "-o", "json")
    # Then the exit code says FAILED, and the job says why
    job = json.loads(out)
    assert (code, job["status"], job["reason_code"]) == (exits.JOB_OUTCOMES["FAILED"], "FAILED", "RAY_JOB_FAILED")


def jobs_api_status(dashboard_url: str, token: str | None) -> int:
    """GET the cluster's Jobs API (what `ray job list` calls), with the token as a Bearer header or without."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(dashboard_url.rstrip("/") + "/api/jobs/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_cancel_a_running_job_ends_its_wait_with_12_and_dashboard_and_token_while_it_ran(
    served: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a long job submitted and followed by another shell
    proc = cli_process("submit", "probe-sleep", "--wait")
    assert proc.stderr is not None
    job_id = proc.stderr.readline().split()[0]
    wait_for(capsys, job_id, {"RUNNING"})
    # When the operator opens its dashboard (locally: the local cluster's URL; stderr says the
    # cluster asks for its Ray token and how to get it); waiting for i11-api (JobView.cluster)
    if CLUSTER_IN_VIEW:
        code, url, hint = cli(capsys, "dashboard", job_id)
        url = url.strip()
        assert code == exits.OK and url.startswith("http://127.0.0.1:")
        assert f"raylauncher cluster-token {job_id} --target local" in hint
        # and asks for the token as the hint says: printed alone; the cluster's Jobs API accepts
        # it and refuses a call without it (or with another)
        code, out, err = cli(capsys, "cluster-token", job_id, "--target", "local")
        token = out.strip()
        assert code == exits.OK and out == token + "\n" and len(token) == 64, err
        assert jobs_api_status(url, token) == 200
        assert jobs_api_status(url, None) == 401
        assert jobs_api_status(url, "0" * 64) in (401, 403)
    # and cancels it with the old alias (through the API: serve is running)
    code, out, _ = cli(capsys, "cancel", job_id)
    assert code == exits.OK and "cancel requested" in out
    # Then the waiting shell ends with the CANCELLED exit code, and the dashboard is refused now
    _, err = proc.communicate(timeout=JOB_TIMEOUT_S)
    assert proc.returncode == exits.JOB_OUTCOMES["CANCELLED"], err
    code, out, err = cli(capsys, "dashboard", job_id)
    assert code == exits.ERROR and "CANCELLED: it has no running cluster" in err
    # and its token is gone with its cluster (deleted at teardown): 3
    code, out, err = cli(capsys, "cluster-token", job_id, "--target", "local", "--attempt", "1")
    assert (code, out) == (exits.NOT_FOUND, "") and "deleted at teardown" in err


@waiting_for_pipelines
def test_pipelines_list_and_show(served: LocalSystem, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "pipelines", "list")
    assert code == exits.OK and all(name in out for name in PROBES)
    code, out, _ = cli(capsys, "pipelines", "show", "probe-ok", "-o", "json")
    assert code == exits.OK and json.loads(out)["name"] == "probe-ok"


def test_doctor_on_the_local_system(served: LocalSystem, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "doctor", "-o", "json")
    checks = {c["name"]: c["outcome"] for c in json.loads(out)}
    assert code == exits.OK
    assert checks == {"local system": "ok", "api": "ok", "session-manager-plugin": "skip", "ray pins": "ok"}
