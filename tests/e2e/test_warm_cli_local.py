"""A held cluster through the operator CLI, as while `raylauncher serve` runs: `jobs show` shows
the hold, `dashboard` and `cluster-token` work on the held cluster, `jobs release` ends it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from lambdas.api import handler as api_handler
from raylauncher.cli import exits
from raylauncher.clusters.processes import leftover_processes
from raylauncher.local.http_api import LocalApiServer
from raylauncher.local.runtime import LocalSystem, local_system
from raylauncher.local.serve_state import STATE_FILE_ENV, ServeState, write_state
from tests.e2e.test_cli_local import JOB_TIMEOUT_S, cli, jobs_api_status, show, wait_for

# pytest-xdist: one worker runs these tests (they share one served local system for the module).
pytestmark = pytest.mark.xdist_group("warm-cli-local")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    root = tmp_path_factory.mktemp("warm-cli")
    project = root / "project"
    (project / "jobs" / "fails").mkdir(parents=True)
    (project / "jobs" / "fails" / "main.py").write_text("import sys\nprint('fails: on purpose')\nsys.exit(1)\n")
    pipelines = project / "pipelines.yaml"
    pipelines.write_text("""pipelines:
  - name: probe-held
    trigger: {prefix: incoming/probe-held/}
    entrypoint: {script: jobs/fails/main.py}
    cluster: {local_num_cpus: 1}
    batching_window_s: 1
    retry: {max_attempts: 1}
    keep_failed_cluster_seconds: 600
    output_prefix: outputs/probe-held/
""")
    with local_system(root / "state", pipelines, project, start_poller=False) as system:
        system.s3.put_object(Bucket=system.settings.bucket, Key="incoming/probe-held/x.csv", Body=b"a\n1\n")
        api_handler.services.cache_clear()
        try:
            with LocalApiServer(api_handler.handler) as server:
                state = root / "serve.json"
                write_state(state, ServeState(api_url=server.base_url, pid=os.getpid(), bucket=system.settings.bucket,
                                              table=system.settings.table, region=system.settings.region,
                                              endpoint_url=system.settings.endpoint_url))  # fmt: skip
                os.environ[STATE_FILE_ENV] = str(state)
                os.environ.pop("RAYLAUNCHER_STACK", None)
                yield system
        finally:
            api_handler.services.cache_clear()


def test_a_held_cluster_is_shown_opened_and_released_from_the_cli(
    served: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job that failed for its own reason in a pipeline that holds such clusters
    code, out, err = cli(capsys, "submit", "probe-held", "-o", "json")
    assert code == exits.OK, err
    job_id = json.loads(out)["job_id"]
    job = wait_for(capsys, job_id, {"FAILED"})
    deadline = time.monotonic() + 30
    while (job.get("kept_cluster") or {}).get("status") != "HELD" and time.monotonic() < deadline:
        job = show(capsys, job_id)
    assert job["kept"] == "held" and job["kept_cluster"]["status"] == "HELD", job
    # Then `jobs show` says so, with the command that ends the hold
    code, out, _ = cli(capsys, "jobs", "show", job_id)
    assert code == exits.OK and "cluster kept held" in out and f"raylauncher jobs release {job_id}" in out
    # And the dashboard works on it, with its token
    code, url, hint = cli(capsys, "dashboard", job_id)
    url = url.strip()
    assert code == exits.OK and url.startswith("http://127.0.0.1:"), hint
    code, token, err = cli(capsys, "cluster-token", job_id, "--target", "local")
    assert code == exits.OK, err
    assert jobs_api_status(url, token.strip()) == 200 and jobs_api_status(url, None) == 401
    # When the operator releases it
    code, out, err = cli(capsys, "jobs", "release", job_id)
    assert code == exits.OK and "hold released" in out, err
    # Then it is torn down at once, and the dashboard is refused
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while show(capsys, job_id)["kept_cluster"]["status"] != "TORN_DOWN":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    job = show(capsys, job_id)
    assert job["kept_seconds"] > 0 and job["kept_cluster"]["held_seconds"] > 0
    code, _, err = cli(capsys, "dashboard", job_id)
    assert code == exits.ERROR
    # And releasing again is refused (nothing is held)
    code, _, err = cli(capsys, "jobs", "release", job_id)
    assert code == exits.ERROR and "STATE_CONFLICT" in err


@pytest.fixture(autouse=True)
def _no_cluster_left_behind() -> Iterator[None]:
    yield
    time.sleep(0.5)
    left = leftover_processes()
    for proc in left:
        proc.kill()
    assert left == [], "a test left a local Ray cluster running"
