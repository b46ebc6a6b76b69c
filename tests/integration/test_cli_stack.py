"""The operator CLI against a "deployed" stack simulated on moto: a CloudFormation stack whose
outputs point at a local API that checks SigV4 the way API Gateway's IAM authorization does
(tests/integration/sigv4_gateway.py), in front of the real API handler on moto."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials
from botocore.stub import Stubber

from lambdas.api import handler as api_handler
from raylauncher import aws
from raylauncher.cli import exits, main
from raylauncher.cli.http import sign
from raylauncher.cli.stack_checks import VPC_ENDPOINT_SERVICES
from raylauncher.cluster_tokens import new_token, token_parameter
from raylauncher.local.http_api import LocalApiServer
from raylauncher.local.stack import FAKE_CREDENTIALS
from raylauncher.model import JobStatus
from tests.integration.conftest import ApiClient
from tests.integration.sigv4_gateway import SigV4Gateway

OPENAPI = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
JOB_VIEW_FIELDS = set(OPENAPI["components"]["schemas"]["JobView"]["properties"])
#: Reads i11-api adds to the API; the tests that need them run once it is merged.
waiting_for_cluster_view = pytest.mark.skipif(
    "cluster" not in JOB_VIEW_FIELDS, reason="waiting for i11-api: JobView.cluster (head_ip, nodes) not in the API yet"
)
waiting_for_pipelines = pytest.mark.skipif(
    "/pipelines" not in OPENAPI["paths"], reason="waiting for i11-api: GET /pipelines not in the API yet"
)
PIPELINE = "sales-summary"


@dataclass
class DeployedStack:
    name: str
    api_url: str
    gateway: SigV4Gateway
    api: ApiClient
    bastion_id: str


def any_image(settings: Any) -> str:
    return str(aws.client("ec2", settings).describe_images(Owners=["amazon"], MaxResults=1)["Images"][0]["ImageId"])


def stack_template(name: str, region: str, image_id: str, outputs: dict[str, Any], endpoints: tuple[str, ...]) -> dict[str, Any]:
    """What `cdk deploy` leaves as far as the CLI looks: the outputs, the bastion instance in a
    VPC, and that VPC's endpoints (gateway ones for S3/DynamoDB, interface ones for the rest)."""
    resources: dict[str, Any] = {
        "Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{name}-marker"}},
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.9.0.0/16"}},
        "RouteTable": {"Type": "AWS::EC2::RouteTable", "Properties": {"VpcId": {"Ref": "Vpc"}}},
        "Subnet": {"Type": "AWS::EC2::Subnet", "Properties": {"VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.9.1.0/24"}},
        "Bastion": {"Type": "AWS::EC2::Instance",
                    "Properties": {"ImageId": image_id, "InstanceType": "t3.medium", "SubnetId": {"Ref": "Subnet"}}},
    }  # fmt: skip
    for service in endpoints:
        gateway = service in ("s3", "dynamodb")
        resources[f"Endpoint{service.title()}"] = {"Type": "AWS::EC2::VPCEndpoint", "Properties": {
            "VpcId": {"Ref": "Vpc"}, "ServiceName": f"com.amazonaws.{region}.{service}",
            "VpcEndpointType": "Gateway" if gateway else "Interface",
            **({"RouteTableIds": [{"Ref": "RouteTable"}]} if gateway else {"SubnetIds": [{"Ref": "Subnet"}]}),
        }}  # fmt: skip
    return {"Resources": resources,
            "Outputs": {**{k: {"Value": v} for k, v in outputs.items()}, "BastionInstanceId": {"Value": {"Ref": "Bastion"}}}}


@pytest.fixture
def stack(seeded_api: ApiClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[DeployedStack]:
    """The API behind a SigV4-checking gateway on 127.0.0.1, and a CloudFormation stack on moto
    whose outputs name it (as `cdk deploy` leaves them)."""
    settings = seeded_api.settings
    credentials = Credentials(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    gateway = SigV4Gateway(api_handler.handler, credentials, settings.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL", str(settings.endpoint_url))  # the CLI's boto clients find moto
    monkeypatch.setenv("RAYLAUNCHER_SERVE_STATE", str(tmp_path / "no-serve.json"))  # no local system running
    with LocalApiServer(gateway) as server:
        api_url = f"{server.base_url}/v1/"
        name = f"RayLauncher-{uuid.uuid4().hex[:8]}"
        outputs = {"ApiUrl": api_url, "DataBucket": settings.bucket, "JobTable": settings.table,
                   "OperatorRoleArn": "arn:aws:iam::123456789012:role/operators"}  # fmt: skip
        template = stack_template(name, settings.region, any_image(settings), outputs, VPC_ENDPOINT_SERVICES)
        cloudformation = aws.client("cloudformation", settings)
        cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(template))
        [bastion_id] = [o["OutputValue"] for o in cloudformation.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]
                        if o["OutputKey"] == "BastionInstanceId"]  # fmt: skip
        yield DeployedStack(name, api_url, gateway, seeded_api, bastion_id)


def cli(capsys: pytest.CaptureFixture[str], *argv: str, **injected: Any) -> tuple[int, str, str]:
    code = main(list(argv), **injected)
    out, err = capsys.readouterr()
    return code, out, err


def submit(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = cli(capsys, "--stack", stack.name, "submit", PIPELINE)
    assert code == exits.OK, err
    return out.strip()


def test_signed_requests_pass_the_gateway_for_every_command(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a deployed stack found by name, and credentials from the standard chain (env here)
    # When the operator submits, lists, shows and cancels
    job_id = submit(stack, capsys)
    code, out, _ = cli(capsys, "jobs", "list", "--stack", stack.name, "-o", "json")
    assert code == exits.OK and [j["job_id"] for j in json.loads(out)["jobs"]] == [job_id]
    code, out, _ = cli(capsys, "jobs", "show", job_id, "--stack", stack.name, "-o", "json")
    assert code == exits.OK and json.loads(out)["status"] == JobStatus.LAUNCHING
    code, out, _ = cli(capsys, "jobs", "cancel", job_id, "--stack", stack.name)
    # Then every request was signed and accepted, none refused
    assert code == exits.OK and out.startswith(f"{job_id} CANCELLED")
    assert stack.gateway.refused == []
    assert stack.gateway.accepted == [("POST", "/jobs"), ("GET", "/jobs"), ("GET", f"/jobs/{job_id}"),
                                      ("POST", f"/jobs/{job_id}/cancel")]  # fmt: skip
    assert stack.api.store.get(job_id).status == JobStatus.CANCELLED


def test_query_parameters_and_idempotency_keys_are_signed_too(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a submission with an Idempotency-Key (a header) and a params body
    argv = ["--stack", stack.name, "submit", PIPELINE, "--param", "input_prefix=incoming/sales/2026/",
            "--idempotency-key", "nightly-2026-01-01", "-o", "json"]  # fmt: skip
    code, out, _ = cli(capsys, *argv)
    first = json.loads(out)
    # When it is sent again, and jobs are listed with filters (a query string)
    code2, out2, err2 = cli(capsys, *argv)
    code3, out3, _ = cli(capsys, "--stack", stack.name, "jobs", "list", "--status", "launching", "--pipeline", PIPELINE,
                         "--since", "1h", "--limit", "5", "-o", "json")  # fmt: skip
    # Then both pass the gateway; the replay is the same job; the filters reached the API
    assert (code, code2, code3) == (exits.OK, exits.OK, exits.OK)
    assert json.loads(out2)["job_id"] == first["job_id"] and "replayed" in err2
    assert first["params"] == {"input_prefix": "incoming/sales/2026/"}
    assert [j["job_id"] for j in json.loads(out3)["jobs"]] == [first["job_id"]]
    assert stack.gateway.refused == []


def raw_call(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_unsigned_tampered_and_wrongly_signed_requests_are_refused(stack: DeployedStack) -> None:
    url = stack.api_url + "jobs"
    body = json.dumps({"pipeline": PIPELINE, "params": {}}).encode()
    good = Credentials(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    wrong = Credentials(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], "not-the-secret")
    base = {"Content-Type": "application/json"}
    signed = sign("POST", url, base, body, good, "us-east-1")
    # Given: no signature; the wrong secret; a signed body changed on the way; a signed
    # header changed; another region; and, to show the gateway lets good ones through, one good
    cases = {
        "unsigned": raw_call(url, "POST", body, base),
        "wrong secret": raw_call(url, "POST", body, sign("POST", url, base, body, wrong, "us-east-1")),
        "body changed": raw_call(url, "POST", body.replace(b"{}", b'{"input_prefix": "incoming/sales/2025/"}'), signed),
        "header changed": raw_call(url, "POST", body, {**signed, "Content-Type": "text/plain"}),
        "other region": raw_call(url, "POST", body, sign("POST", url, base, body, good, "eu-west-1")),
        "query added": raw_call(url + "?limit=1", "GET", None, sign("GET", url, {}, b"", good, "us-east-1")),
        "good": raw_call(url, "POST", body, signed),
    }
    # Then every tampered or unsigned request is refused with 403 before the API ran
    assert cases == {"unsigned": 403, "wrong secret": 403, "body changed": 403, "header changed": 403,
                     "other region": 403, "query added": 403, "good": 202}  # fmt: skip
    assert len(stack.gateway.refused) == 6 and stack.gateway.accepted == [("POST", "/jobs")]


def test_a_refused_signature_exits_1_with_the_gateways_message(
    stack: DeployedStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given credentials the API does not accept
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "someone-elses-secret")
    # When the operator lists jobs
    code, out, err = cli(capsys, "--stack", stack.name, "jobs", "list")
    # Then the CLI exits 1 and says what API Gateway said, on stderr
    assert code == exits.ERROR and out == ""
    assert "HTTP_403" in err and "signature" in err


def test_exit_codes_for_unknown_stack_job_and_pipeline(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    # A stack that does not exist: a usage error naming it
    code, _, err = cli(capsys, "--stack", "NoSuchStack", "jobs", "list")
    assert code == exits.USAGE and "NoSuchStack" in err
    # A job that does not exist: 3
    code, _, err = cli(capsys, "--stack", stack.name, "jobs", "show", "sales-summary-20260101-000000-deadbeef")
    assert code == exits.NOT_FOUND and "JOB_NOT_FOUND" in err
    # A pipeline that does not exist: the API's 422, exit 1 with its code
    code, _, err = cli(capsys, "--stack", stack.name, "submit", "no-such-pipeline")
    assert code == exits.ERROR and "UNKNOWN_PIPELINE" in err


def test_no_target_at_all_says_how_to_get_one(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv("RAYLAUNCHER_SERVE_STATE", str(tmp_path / "none.json"))
    monkeypatch.delenv("RAYLAUNCHER_STACK", raising=False)
    code, _, err = cli(capsys, "jobs", "list")
    assert code == exits.USAGE and "raylauncher serve" in err and "--stack" in err


# ---------------------------------------------------------------- dashboard


def running_job(stack: DeployedStack, capsys: pytest.CaptureFixture[str], head_ip: str | None = "10.0.1.23") -> str:
    """A job whose driver brought its cluster up and whose Ray job runs (as the driver records it)."""
    job_id = submit(stack, capsys)
    store = stack.api.store
    job = store.transition(store.get(job_id), JobStatus.PROVISIONING)
    cluster = {"backend": "ec2", "name": f"rl-{job_id}", **({"head_ip": head_ip} if head_ip else {})}
    job = store.transition(job, JobStatus.SUBMITTED, cluster=cluster)
    store.transition(job, JobStatus.RUNNING, ray_status="RUNNING")
    return job_id


def test_dashboard_refuses_a_job_without_a_running_cluster(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job still LAUNCHING, and one already CANCELLED
    launching = submit(stack, capsys)
    cancelled = submit(stack, capsys)
    assert cli(capsys, "--stack", stack.name, "jobs", "cancel", cancelled)[0] == exits.OK
    ran: list[list[str]] = []
    for job_id, status in ((launching, "LAUNCHING"), (cancelled, "CANCELLED")):
        # When the operator asks for its dashboard
        code, out, err = cli(capsys, "--stack", stack.name, "dashboard", job_id, run=ran.append, which=lambda _: "/bin/x")
        # Then it is refused with why, and no session is started
        assert code == exits.ERROR and out == ""
        assert f"is {status}: it has no running cluster" in err
    assert ran == []


@waiting_for_cluster_view
def test_dashboard_starts_port_forwarding_to_the_head_through_the_bastion(
    stack: DeployedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a RUNNING job whose head is 10.0.1.23, the AWS CLI and the plugin installed
    job_id = running_job(stack, capsys)
    ran: list[list[str]] = []
    # When the operator opens its dashboard on local port 18265
    code, out, _ = cli(capsys, "--stack", stack.name, "dashboard", job_id, "--local-port", "18265",
                       run=lambda cmd: ran.append(cmd) or 0, which=lambda tool: f"/usr/bin/{tool}")  # fmt: skip
    # Then it ran exactly the SSM port-forwarding session through the bastion, and printed it
    expected = ["aws", "ssm", "start-session", "--region", "us-east-1", "--target", stack.bastion_id,
                "--document-name", "AWS-StartPortForwardingSessionToRemoteHost",
                "--parameters", "host=10.0.1.23,portNumber=8265,localPortNumber=18265"]  # fmt: skip
    assert code == exits.OK and ran == [expected]
    assert "http://127.0.0.1:18265" in out and " ".join(expected) in out


@waiting_for_cluster_view
def test_dashboard_refuses_without_the_plugin_or_a_head_ip(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[list[str]] = []
    running = running_job(stack, capsys)
    # Given no session-manager-plugin on PATH: refused with the install hint
    code, _, err = cli(capsys, "--stack", stack.name, "dashboard", running, run=ran.append,
                       which=lambda tool: None if tool == "session-manager-plugin" else "/usr/bin/aws")  # fmt: skip
    assert code == exits.ERROR and "session-manager-plugin not found" in err and "install" in err
    # Given a running job whose head IP is not recorded yet: refused, try again
    no_ip = running_job(stack, capsys, head_ip=None)
    code, _, err = cli(capsys, "--stack", stack.name, "dashboard", no_ip, run=ran.append, which=lambda t: "/x")
    assert code == exits.ERROR and "head IP is not known yet" in err
    assert ran == []


# ---------------------------------------------------------------- doctor and pipelines


def online_ssm(stack: DeployedStack, ping: str = "Online", bastion_id: str | None = None) -> Any:
    """moto has no DescribeInstanceInformation: a stubbed SSM client answering for the bastion."""
    bastion_id = bastion_id or stack.bastion_id
    client = aws.client("ssm", stack.api.settings)
    stubber = Stubber(client)
    stubber.add_response("describe_instance_information",
                         {"InstanceInformationList": [{"InstanceId": bastion_id, "PingStatus": ping,
                                                       "AgentVersion": "3.3"}]},
                         {"Filters": [{"Key": "InstanceIds", "Values": [bastion_id]}]})  # fmt: skip
    stubber.activate()
    return client


def plenty(code: str) -> float:
    return 10_000.0


def test_doctor_checks_one_line_each(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a healthy stack with quota to spare, but no session-manager-plugin on this machine
    code, out, _ = cli(capsys, "--stack", stack.name, "doctor", "-o", "json", ssm_client=online_ssm(stack),
                       which=lambda tool: None, quota=plenty)  # fmt: skip
    checks = {c["name"]: c for c in json.loads(out)}
    # Then each check has its line: the plugin is a warning (only dashboard needs it), nothing fails
    assert list(checks) == ["aws credentials", "stack", "api", "bastion", "release", "vcpu quota standard on-demand",
                            "bastion install", "vpc endpoints", "ebs encryption", "session-manager-plugin",
                            "ray pins"]  # fmt: skip
    assert {n: c["outcome"] for n, c in checks.items()} == {
        "aws credentials": "ok", "stack": "ok", "api": "ok", "bastion": "ok", "release": "ok",
        "vcpu quota standard on-demand": "ok",
        "bastion install": "ok", "vpc endpoints": "ok", "ebs encryption": "ok", "session-manager-plugin": "warn",
        "ray pins": "ok",
    }  # fmt: skip
    assert code == exits.OK
    assert stack.gateway.refused == []
    # When the bastion is offline, the same as a table: exit 1, the line says so
    code, out, _ = cli(capsys, "--stack", stack.name, "doctor", ssm_client=online_ssm(stack, "ConnectionLost"),
                       which=lambda tool: "/usr/bin/x", quota=plenty)  # fmt: skip
    assert code == exits.ERROR
    assert any(line.startswith("fail") and "ConnectionLost" in line for line in out.splitlines())
    assert len(out.splitlines()) == 11
    assert stack.api.settings.release in checks["release"]["detail"]


def test_doctor_fails_when_one_cluster_exceeds_the_vcpu_quota_and_warns_below_full_concurrency(
    stack: DeployedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the deployed sales-summary pipeline: a m6i.xlarge head (4 vCPUs), 4-8 m6i.2xlarge workers (8)
    def doctor(quota: float) -> dict[str, Any]:
        code, out, _ = cli(capsys, "--stack", stack.name, "doctor", "-o", "json", ssm_client=online_ssm(stack),
                           which=lambda tool: "/usr/bin/x", quota=lambda code: quota)  # fmt: skip
        [line] = [c for c in json.loads(out) if c["name"] == "vcpu quota standard on-demand"]
        return {"exit": code, **line}

    # (and the bastion, a t3.medium of 2 vCPUs in the same quota, runs all the time)
    # When a quota of 37 vCPUs is below one cluster at min_workers with the bastion (4 + 4 x 8 + 2 = 38)
    small = doctor(37)
    # Then doctor fails and names the quota code to raise, what one cluster needs and which pipeline
    assert (small["exit"], small["outcome"]) == (exits.ERROR, "fail")
    assert "38" in small["detail"] and "sales-summary" in small["detail"] and "L-1216C47A" in small["detail"]
    # When one cluster fits but not every pipeline's clusters at max_workers at once
    middle = doctor(40)
    assert (middle["exit"], middle["outcome"]) == (exits.OK, "warn")


def test_doctor_fails_when_the_vpc_lacks_an_endpoint(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a stack deployed into a VPC of the user's that has no CloudFormation endpoint
    settings = stack.api.settings
    cloudformation = aws.client("cloudformation", settings)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cloudformation.describe_stacks(StackName=stack.name)["Stacks"][0]["Outputs"]}
    outputs.pop("BastionInstanceId")
    name = f"{stack.name}-byovpc"
    endpoints = tuple(s for s in VPC_ENDPOINT_SERVICES if s != "cloudformation")
    cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(stack_template(
        name, settings.region, any_image(settings), outputs, endpoints)))  # fmt: skip
    [bastion] = [o["OutputValue"] for o in cloudformation.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]
                 if o["OutputKey"] == "BastionInstanceId"]  # fmt: skip
    # When doctor checks it
    code, out, _ = cli(capsys, "--stack", name, "doctor", "-o", "json", ssm_client=online_ssm(stack, bastion_id=bastion),
                       which=lambda tool: "/x", quota=plenty)  # fmt: skip
    # Then the endpoints line fails (the subnet has no default route either) and names the missing one
    [line] = [c for c in json.loads(out) if c["name"] == "vpc endpoints"]
    assert line["outcome"] == "fail" and "cloudformation" in line["detail"] and "sts" not in line["detail"]
    assert code == exits.ERROR


@waiting_for_pipelines
def test_pipelines_list_and_show(stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--stack", stack.name, "pipelines", "list", "-o", "json")
    body = json.loads(out)
    names = [p["name"] for p in body.get("pipelines", body)]
    assert code == exits.OK and PIPELINE in names
    code, out, _ = cli(capsys, "--stack", stack.name, "pipelines", "show", PIPELINE, "-o", "json")
    assert code == exits.OK and json.loads(out)["name"] == PIPELINE
    code, _, err = cli(capsys, "--stack", stack.name, "pipelines", "show", "no-such-pipeline")
    assert code == exits.NOT_FOUND


# ---------------------------------------------------------------- cluster-token


def put_token(stack: DeployedStack, job_id: str, run_id: str, token: str) -> None:
    """What the driver does before the cluster starts: the attempt's token, a SecureString."""
    aws.client("ssm", stack.api.settings).put_parameter(Name=token_parameter(job_id, run_id), Value=token,
                                                        Type="SecureString", Overwrite=True)  # fmt: skip


def test_cluster_token_reads_the_running_attempts_secure_string_through_the_stack(
    stack: DeployedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a RUNNING job whose cluster's token is in SSM (credentials allowed to read it)
    job_id = running_job(stack, capsys)
    token = new_token()
    put_token(stack, job_id, job_id, token)
    # When the token is asked for on the stack
    code, out, err = cli(capsys, "--stack", stack.name, "cluster-token", job_id)
    # Then stdout is the token alone (and nothing else anywhere has it); the job was read over the API
    assert (code, out) == (exits.OK, token + "\n")
    assert token not in err
    assert stack.gateway.accepted[-1] == ("GET", f"/jobs/{job_id}") and stack.gateway.refused == []
    code, out, _ = cli(capsys, "--stack", stack.name, "cluster-token", job_id, "-o", "json")
    assert json.loads(out) == {"job_id": job_id, "run_id": job_id, "token": token}
    # Given its token deleted (as at teardown): 3, saying so
    aws.client("ssm", stack.api.settings).delete_parameter(Name=token_parameter(job_id, job_id))
    code, out, err = cli(capsys, "--stack", stack.name, "cluster-token", job_id)
    assert (code, out) == (exits.NOT_FOUND, "") and "deleted at teardown" in err
    # Given a job that ended (cancelled): 3 as well
    cancelled = submit(stack, capsys)
    assert cli(capsys, "--stack", stack.name, "jobs", "cancel", cancelled)[0] == exits.OK
    code, _, err = cli(capsys, "--stack", stack.name, "cluster-token", cancelled)
    assert code == exits.NOT_FOUND and "is CANCELLED" in err


def test_cluster_token_with_no_target_reads_the_highest_attempt_as_on_the_bastion(
    stack: DeployedStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no target (no serve, no stack named: on the bastion, with its credentials and region),
    # and the tokens of a job's attempts 1 and 2 (attempt 1's teardown did not delete it)
    monkeypatch.delenv("RAYLAUNCHER_STACK", raising=False)
    job_id = f"sales-summary-20260101-000000-{uuid.uuid4().hex[:8]}"
    first, second = new_token(), new_token()
    put_token(stack, job_id, job_id, first)
    put_token(stack, job_id, f"{job_id}-a2", second)
    # When the token is asked for: the highest attempt's, with no API call
    code, out, _ = cli(capsys, "cluster-token", job_id, "-o", "json")
    assert code == exits.OK and json.loads(out) == {"job_id": job_id, "run_id": f"{job_id}-a2", "token": second}
    code, out, _ = cli(capsys, "cluster-token", job_id, "--attempt", "1")
    assert (code, out) == (exits.OK, first + "\n")
    assert stack.gateway.accepted == []
    # Given no token left for the job: 3
    ssm = aws.client("ssm", stack.api.settings)
    ssm.delete_parameters(Names=[token_parameter(job_id, job_id), token_parameter(job_id, f"{job_id}-a2")])
    code, out, err = cli(capsys, "cluster-token", job_id)
    assert (code, out) == (exits.NOT_FOUND, "") and f"no Ray token for any attempt of {job_id}" in err


def test_doctor_wants_the_spot_role_only_where_a_pipeline_runs_spot_workers(stack: DeployedStack) -> None:
    from raylauncher.cli.stack_checks import SPOT_ROLE, stack_checks
    from raylauncher.cli.targets import aws_session

    # Given the deployed pipelines, one of them with spot workers, in an account without EC2's Spot role
    settings = stack.api.settings
    pipelines = stack.api.call("GET", "/pipelines").body["pipelines"]
    spot = [{**p, "cluster": {**p["cluster"], "spot_workers": True}} for p in pipelines]

    def spot_line(pipelines: list[dict[str, Any]]) -> dict[str, str] | None:
        checks = stack_checks(aws_session(settings.region), settings.region, stack.name, stack.bastion_id, pipelines,
                              quota=plenty)  # fmt: skip
        return next(({"outcome": c.outcome, "detail": c.detail} for c in checks if c.name == "spot role"), None)

    # Then on-demand pipelines need no line; spot ones fail and say how to create the role
    assert spot_line(pipelines) is None
    missing = spot_line(spot)
    assert missing is not None and missing["outcome"] == "fail" and "create-service-linked-role" in missing["detail"]
    # When the role exists, Then it is fine
    aws.client("iam", settings).create_role(RoleName=SPOT_ROLE, Path="/aws-service-role/spot.amazonaws.com/",
                                            AssumeRolePolicyDocument="{}")  # fmt: skip
    assert spot_line(spot) == {"outcome": "ok", "detail": f"{SPOT_ROLE} exists"}
