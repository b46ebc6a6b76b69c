"""Ray token rules that need no AWS: names, the node's fetch command, when a token is deleted,
and what the driver makes of a cluster that refuses its token."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from raylauncher.cluster_tokens import auth_headers, down_then_revoke, fetch_token_shell, token_parameter
from raylauncher.clusters.base import jobs_api_answers
from raylauncher.errors import ProvisioningFailed, TeardownFailed
from raylauncher.model import Job
from raylauncher.teardown import ClusterTeardown
from tests.doubles import MemoryClusterTokens

JOB = Job.new("sales-summary", "api")


def test_a_token_parameter_is_named_after_the_job_and_one_of_its_attempts() -> None:
    # Given a job id, Then its attempts' parameters live under the job's path
    assert token_parameter(JOB.job_id, JOB.job_id) == f"/raylauncher/ray-auth/{JOB.job_id}/{JOB.job_id}"
    assert token_parameter(JOB.job_id, f"{JOB.job_id}-a2").endswith(f"/{JOB.job_id}-a2")
    # And a run id that only starts like the job id, or is no run id at all, is refused
    for job_id, run in ((JOB.job_id, JOB.job_id + "x"), ("abc", "abcd"), (JOB.job_id, "../x"), ("a/b", "a/b")):
        with pytest.raises(ValueError):
            token_parameter(job_id, run)


def test_the_nodes_fetch_command_names_the_parameter_and_region_only_and_refuses_odd_regions() -> None:
    command = fetch_token_shell(JOB, "eu-west-3")
    assert token_parameter(JOB.job_id, JOB.run_id) in command and "eu-west-3" in command
    for region in ("eu-west-3; rm -rf /", "$(id)", "EU-WEST-3", ""):
        with pytest.raises(ValueError):
            fetch_token_shell(JOB, region)


class _Teardown(ClusterTeardown):
    def __init__(self, tokens: MemoryClusterTokens, fails: bool) -> None:
        super().__init__(tokens)
        self.fails = fails

    def _teardown(self, job: Job) -> None:
        if self.fails:
            raise TeardownFailed("instances still alive: i-1", 3)


@pytest.mark.parametrize("fails", [False, True])
def test_a_token_is_deleted_when_its_cluster_is_verified_gone_and_kept_while_it_may_be_up(fails: bool) -> None:
    # Given a cluster's stored token
    tokens = MemoryClusterTokens()
    tokens.issue(JOB)
    teardown = _Teardown(tokens, fails)
    # When its teardown succeeds, or fails (the cluster may still be up)
    if fails:
        with pytest.raises(TeardownFailed):
            teardown.teardown(JOB)
    else:
        teardown.teardown(JOB)
    # Then the token is deleted only in the first case
    assert tokens.revoked == ([] if fails else [JOB.run_id])
    assert (JOB.run_id in tokens.tokens) is fails


def test_a_failing_token_delete_leaves_the_teardowns_outcome_alone() -> None:
    class Stuck(MemoryClusterTokens):
        def revoke(self, job: Job) -> None:
            from raylauncher.cluster_tokens import TokenUnavailable

            raise TokenUnavailable(job.run_id, "deleted", "ThrottlingException")

    # Given a token store that cannot delete, When the cluster goes down, Then the teardown's
    # result stands (the watchdog's sweep deletes the token later)
    assert down_then_revoke(Stuck(), JOB, lambda: 1) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_a_cluster_refusing_the_drivers_token_fails_provisioning_at_once(status: int) -> None:
    # Given a Jobs API on 127.0.0.1 that refuses the token
    class Refusing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # When the driver asks whether it answers, Then provisioning fails saying why (not a wait)
        with pytest.raises(ProvisioningFailed, match=f"refused the driver's Ray token \\(HTTP {status}\\)"):
            jobs_api_answers(f"http://127.0.0.1:{server.server_port}", auth_headers("x"))
    finally:
        server.shutdown()
        server.server_close()
