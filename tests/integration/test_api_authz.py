"""Per-pipeline authorization over real HTTP on 127.0.0.1: the local API (raylauncher/local/
http_api.py) in front of the deployed API handler, naming each SigV4-signed request's caller by
moto server's STS as API Gateway's IAM authorization would; IAM users and a role made in moto's
IAM. The pipeline lists alice and the role `deployer`; mallory is not on it. (moto's IAM is
shared by the session's tests: each test's names end in a suffix of its own.)"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials

from lambdas.api import handler as api_handler
from raylauncher import aws
from raylauncher.cli import exits, main
from raylauncher.cli.http import sign
from raylauncher.config import PipelinesConfig, Settings, load_pipelines, pipelines_json
from raylauncher.local.http_api import LocalApiServer
from raylauncher.local.identities import StsIdentities
from raylauncher.local.serve_state import STATE_FILE_ENV, ServeState, write_state
from raylauncher.model import JobStatus
from tests.conftest import PROJECT_DIR, launcher_calls
from tests.integration.conftest import ApiClient

ACCOUNT = "123456789012"  # moto's default account
PIPELINE = "sales-summary"
SUBMIT = {"pipeline": PIPELINE, "params": {"input_prefix": "incoming/sales/2026/"}}


@dataclass(frozen=True)
class Names:
    alice: str
    mallory: str
    deployer: str

    def arn(self, user: str) -> str:
        return f"arn:aws:iam::{ACCOUNT}:user/{user}"


@pytest.fixture
def names() -> Names:
    suffix = uuid.uuid4().hex[:8]
    return Names(f"alice-{suffix}", f"mallory-{suffix}", f"deployer-{suffix}")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, names: Names) -> Settings:
    """The shipped pipelines, with `allowed_principals` on sales-summary: alice, and the role
    deployer by the pattern for a role with a path (its sessions' ARNs do not carry the path)."""
    allowed = [names.arn(names.alice), f"arn:aws:iam::{ACCOUNT}:role/*{names.deployer}"]
    shipped = load_pipelines(PROJECT_DIR / "pipelines.yaml")
    listed = shipped.get(PIPELINE).model_dump() | {"allowed_principals": allowed}
    path = tmp_path / "pipelines.json"
    path.write_text(pipelines_json(PipelinesConfig.model_validate({"pipelines": [listed]})), encoding="utf-8")
    return settings.model_copy(update={"pipelines_file": str(path)})


@dataclass
class Principals:
    alice: Credentials
    mallory: Credentials
    deployer_session: Credentials  # AssumeRole of /team/deployer (a role with a path)


@pytest.fixture
def principals(seeded_api: ApiClient, names: Names) -> Principals:
    iam = aws.client("iam", seeded_api.settings)
    keys = {}
    for name in (names.alice, names.mallory):
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        keys[name] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    role = iam.create_role(RoleName=names.deployer, Path="/team/", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"}],
    }))["Role"]  # fmt: skip
    session = aws.client("sts", seeded_api.settings).assume_role(RoleArn=role["Arn"], RoleSessionName="ci-run")
    creds = session["Credentials"]
    return Principals(keys[names.alice], keys[names.mallory],
                      Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]))  # fmt: skip


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def error(self) -> dict[str, Any]:
        return self.body["error"]


@dataclass
class LocalApi:
    url: str
    api: ApiClient

    def call(self, method: str, path: str, body: Any = None, as_: Credentials | None = None,
             headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
        """One request over HTTP, SigV4-signed as the CLI signs it (unsigned without `as_`)."""
        url = self.url + path
        data = json.dumps(body).encode() if body is not None else b""
        sent = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
        if as_ is not None:
            sent = sign(method, url, sent, data, as_, self.api.settings.region)
        request = urllib.request.Request(url, data=data if body is not None else None, headers=sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as err:
            return Reply(err.code, json.loads(err.read()))

    def idempotency_records(self) -> int:
        table = self.api.settings.idempotency_table
        return aws.client("dynamodb", self.api.settings).scan(TableName=table, Select="COUNT")["Count"]


@pytest.fixture
def local_api(seeded_api: ApiClient) -> Iterator[LocalApi]:
    """The local API as `raylauncher serve` runs it: callers named by moto's STS."""
    settings = seeded_api.settings
    with LocalApiServer(api_handler.handler, identities=StsIdentities(str(settings.endpoint_url), settings.region)) as server:
        yield LocalApi(server.base_url, seeded_api)


def assert_forbidden(reply: Reply, field: str, *fragments: str) -> None:
    assert reply.status == 403, reply.body
    assert (reply.error["code"], reply.error["field"]) == ("FORBIDDEN", field)
    for fragment in fragments:
        assert fragment in reply.error["message"], reply.error["message"]


def test_a_principal_not_on_the_list_is_refused_403_and_nothing_is_written(
    local_api: LocalApi, principals: Principals, names: Names
) -> None:
    # Given sales-summary lists alice (and the role deployer), and mallory's own IAM user
    # When mallory starts a run, with an Idempotency-Key
    reply = local_api.call("POST", "/jobs", SUBMIT, as_=principals.mallory, headers={"Idempotency-Key": "run-1"})
    # Then 403 names her, the pipeline and the list to change
    assert_forbidden(reply, "pipeline", names.arn(names.mallory), f"pipeline '{PIPELINE}'",
                     "allowed_principals", "pipelines.yaml")  # fmt: skip
    # and nothing was written: no job, no manifest, no driver started, no idempotency record
    store, settings = local_api.api.store, local_api.api.settings
    assert store.list_jobs() == [] and launcher_calls(settings) == [] and local_api.idempotency_records() == 0
    assert aws.client("s3", settings).list_objects_v2(Bucket=settings.bucket, Prefix="jobs/").get("KeyCount", 0) == 0
    # When alice sends the same request with the same key
    accepted = local_api.call("POST", "/jobs", SUBMIT, as_=principals.alice, headers={"Idempotency-Key": "run-1"})
    # Then it is accepted (202): mallory's refusal did not use the key up
    assert accepted.status == 202, accepted.body
    assert [j.job_id for j in store.list_jobs()] == [accepted.body["job_id"]]
    assert launcher_calls(settings) == [f"driver start {accepted.body['job_id']}"]


def test_a_principal_on_the_list_is_accepted_202(local_api: LocalApi, principals: Principals) -> None:
    # Given alice is on sales-summary's list, When she starts a run (no key)
    reply = local_api.call("POST", "/jobs", SUBMIT, as_=principals.alice)
    # Then 202 and the job
    assert reply.status == 202, reply.body
    assert (reply.body["pipeline"], reply.body["trigger"], reply.body["status"]) == (PIPELINE, "api", "LAUNCHING")


def test_a_session_of_a_listed_role_is_accepted(local_api: LocalApi, principals: Principals) -> None:
    # Given the role /team/deployer is listed as role/*deployer, and AssumeRole credentials of it
    # (moto's STS names them arn:aws:sts::ACCT:assumed-role/deployer-…/ci-run, as AWS does)
    # When the session starts a run, Then 202
    reply = local_api.call("POST", "/jobs", SUBMIT, as_=principals.deployer_session)
    assert reply.status == 202, reply.body


def test_an_unsigned_request_has_no_identity_and_is_refused(local_api: LocalApi, principals: Principals) -> None:
    # Given a request without a signature (locally it reaches the API; on AWS IAM refuses it first)
    reply = local_api.call("POST", "/jobs", SUBMIT)
    # Then the pipeline with a list refuses it, saying it carried no identity
    assert_forbidden(reply, "pipeline", "without an IAM identity")
    assert local_api.api.store.list_jobs() == []


def test_cancel_is_governed_by_the_same_list_and_reads_are_not(
    local_api: LocalApi, principals: Principals, names: Names
) -> None:
    # Given a job alice started
    job_id = local_api.call("POST", "/jobs", SUBMIT, as_=principals.alice).body["job_id"]
    # When mallory cancels it, Then 403 naming the job, and the job is untouched
    refused = local_api.call("POST", f"/jobs/{job_id}/cancel", as_=principals.mallory)
    assert_forbidden(refused, "job_id", f"cancel job {job_id}", names.arn(names.mallory))
    job = local_api.api.store.get(job_id)
    assert job.status == JobStatus.LAUNCHING and not job.cancel_requested
    # and she may still read it and list jobs (reads: IAM alone decides)
    assert local_api.call("GET", f"/jobs/{job_id}", as_=principals.mallory).status == 200
    assert local_api.call("GET", "/jobs", as_=principals.mallory).status == 200
    # When alice cancels it, Then it is cancelled
    cancelled = local_api.call("POST", f"/jobs/{job_id}/cancel", as_=principals.alice)
    assert (cancelled.status, cancelled.body["status"]) == (200, "CANCELLED")


def test_the_cli_signs_local_requests_with_the_process_credentials(
    local_api: LocalApi, principals: Principals, names: Names, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Given `raylauncher serve`'s state file pointing at the local API
    settings = local_api.api.settings
    state = tmp_path / "serve.json"
    write_state(state, ServeState(api_url=local_api.url, pid=os.getpid(), bucket=settings.bucket,
                                  table=settings.table, region=settings.region))  # fmt: skip
    monkeypatch.setenv(STATE_FILE_ENV, str(state))
    monkeypatch.delenv("RAYLAUNCHER_STACK", raising=False)
    runs = {}
    for name in ("mallory", "alice"):
        creds: Credentials = getattr(principals, name)
        # When the CLI submits with that user's credentials in its environment (--target local)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds.secret_key)
        code = main(["--target", "local", "submit", PIPELINE])
        runs[name] = (code, *capsys.readouterr())
    # Then mallory's run is refused with the API's code and message; alice's starts a job
    code, out, err = runs["mallory"]
    assert code == exits.ERROR and out == "" and "FORBIDDEN" in err and names.arn(names.mallory) in err
    code, out, err = runs["alice"]
    assert code == exits.OK, err
    assert [j.job_id for j in local_api.api.store.list_jobs()] == [out.strip()]
