"""The SSM bastion adapter against moto server (moto records the command; it runs nothing)."""

import functools
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.stub import Stubber

from lambdas.intake import handler as intake_handler
from raylauncher import aws
from raylauncher.admission import Launcher
from raylauncher.bastion import SSM_DOCUMENT, SsmBastion
from raylauncher.config import Settings, load_pipelines
from raylauncher.errors import BastionUnavailable
from raylauncher.local.poller import SqsPoller
from raylauncher.local.stack import LocalResources
from raylauncher.model import JobStatus, ReasonCode, iso, utc_now
from raylauncher.wiring import build_intake_service, build_store
from tests.integration.fault_rows import intake_row

JOB = "sales-summary-20261125-083000-0a1b2c3d"
INSTANCE = "i-0123456789abcdef0"
COMMAND = "0b1c2d3e-0000-4000-8000-000000000001"


def test_send_command_targets_the_bastion_with_the_job_id_only(settings: Settings) -> None:
    # Given the SSM adapter for one bastion instance
    ssm = aws.client("ssm", settings)
    sent: list[dict] = []  # what went over the wire (moto does not keep every field)
    ssm.meta.events.register("provide-client-params.ssm.SendCommand", lambda params, **_: sent.append(params))
    bastion = SsmBastion(ssm, INSTANCE, "/opt/raylauncher/venv/bin/raylauncher", settings.bucket, "/raylauncher/ssm")
    # When it is asked to run the driver
    command_id = bastion.run_driver(JOB)
    # Then SSM holds one AWS-RunShellScript command on that instance that starts the driver
    (command,) = ssm.list_commands(CommandId=command_id)["Commands"]
    assert command["DocumentName"] == SSM_DOCUMENT
    # (what was sent: moto adds every EC2 instance of its server to a command without targets)
    assert sent[0]["InstanceIds"] == [INSTANCE] and INSTANCE in command["InstanceIds"]
    assert command["Parameters"]["commands"] == [
        "set -eu",
        f"exec /opt/raylauncher/venv/bin/raylauncher driver start {JOB}",
    ]
    assert command["OutputS3BucketName"] == settings.bucket
    assert command["OutputS3KeyPrefix"] == f"jobs/{JOB}/ssm"
    assert sent[0]["CloudWatchOutputConfig"] == {"CloudWatchLogGroupName": "/raylauncher/ssm", "CloudWatchOutputEnabled": True}
    # and the execution timeout only bounds *starting* the driver, which runs detached
    assert command["Parameters"]["executionTimeout"] == ["300"]


@pytest.mark.parametrize("code", ["InvalidInstanceId", "ThrottlingException", "AccessDeniedException"])
def test_ssm_errors_become_bastion_unavailable_with_the_code(settings: Settings, code: str) -> None:
    # Given SSM answers with an error code (stubbed: moto does not fail these)
    ssm = aws.client("ssm", settings)
    stub = Stubber(ssm)
    stub.add_client_error("send_command", service_error_code=code, http_status_code=400)
    # When the driver is requested, Then the domain sees BastionUnavailable carrying that code
    with stub, pytest.raises(BastionUnavailable) as err:
        SsmBastion(ssm, INSTANCE, "/bin/raylauncher", settings.bucket).run_driver(JOB)
    assert err.value.code == code


def test_a_launch_that_succeeded_or_is_unknown_is_no_failure(settings: Settings) -> None:
    # Given a command moto has recorded (moto marks its invocations Success) and one it never saw
    ssm = aws.client("ssm", settings)
    bastion = SsmBastion(ssm, INSTANCE, "/opt/raylauncher/venv/bin/raylauncher", settings.bucket)
    command_id = bastion.run_driver(JOB)
    # When the watchdog asks how they went, Then neither is a failure (the launch grace applies)
    assert bastion.launch_failure(command_id) is None
    assert bastion.launch_failure("00000000-0000-0000-0000-000000000000") is None


@pytest.mark.parametrize("status", ["Failed", "TimedOut", "Cancelled"])
def test_a_launch_whose_command_failed_says_how_with_its_output(settings: Settings, status: str) -> None:
    # Given SSM reports the invocation ended badly (stubbed: moto's commands always succeed)
    ssm = aws.client("ssm", settings)
    bastion = SsmBastion(ssm, INSTANCE, "/opt/raylauncher/venv/bin/raylauncher", settings.bucket)
    with Stubber(ssm) as stub:
        stub.add_response("get_command_invocation", {
            "CommandId": COMMAND, "InstanceId": INSTANCE, "Status": status, "StatusDetails": status,
            "StandardErrorContent": "bash: /opt/raylauncher/venv/bin/raylauncher: No such file or directory",
        }, {"CommandId": COMMAND, "InstanceId": INSTANCE})  # fmt: skip
        # When the watchdog asks
        failure = bastion.launch_failure(COMMAND)
    # Then it gets the status and the output's tail
    assert failure is not None and failure.status.startswith(status)
    assert "No such file or directory" in failure.output_tail


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self._data


def test_ssm_refusing_the_command_is_retried_then_fails_the_job_with_its_code(
    settings: Settings, intake_env: LocalResources, monkeypatch: pytest.MonkeyPatch, fault_row
) -> None:
    # Given the intake launching through SSM, which refuses SendCommand for the bastion as it does
    # for an instance it does not manage (moto accepts any instance id, so SSM's answer is put on
    # the wire in its place: HTTP 400 InvalidInstanceId)
    ssm = aws.client("ssm", settings)
    refused: list[str] = []

    def refuse(request: AWSPreparedRequest, **_: object) -> AWSResponse:
        refused.append(request.url)
        body = json.dumps({"__type": "InvalidInstanceId", "message": f"Instances [[{INSTANCE}]] not in a valid state"})
        return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.1"}, _Body(body.encode()))

    ssm.meta.events.register("before-send.ssm.SendCommand", refuse)
    store = build_store(settings)
    launcher = Launcher(store, SsmBastion(ssm, INSTANCE, "/opt/raylauncher/venv/bin/raylauncher", settings.bucket),
                        load_pipelines(settings.pipelines_file), aws.client("dynamodb", settings),
                        settings.idempotency_table, settings.max_clusters_total)  # fmt: skip
    service = build_intake_service(settings, store, launcher)
    through_ssm = functools.cache(lambda: service)  # the handler's cached service, built with the SSM launcher
    monkeypatch.setattr(intake_handler, "service", through_ssm)
    put = aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="incoming/sales/ssm.csv", Body=b"x")
    # When the file is taken in
    poller = SqsPoller(aws.client("sqs", settings), intake_env.queue_url, intake_env.queue_arn, settings.region,
                       intake_handler.handler)  # fmt: skip
    for _ in range(3):
        poller.poll_once(wait_s=0)
    # Then the first attempt is LAUNCH_FAILED with SSM's code, and the job waits QUEUED for the next
    (job,) = store.list_jobs()
    assert (job.status, job.attempt, job.slot_held, len(refused)) == (JobStatus.QUEUED, 2, False, 1)
    (first,) = job.attempts
    assert (first["reason_code"], first["reason_message"]) == (
        "LAUNCH_FAILED", "could not start the driver on the bastion: SSM SendCommand failed (InvalidInstanceId)")  # fmt: skip
    # When its backoff has passed and queued jobs are launched, and SSM refuses again
    store.mark(job, retry_at=iso(utc_now() - timedelta(seconds=1)))
    launcher.launch_queued()
    # Then the job FAILED(LAUNCH_FAILED) for good, its slot given back, and no command reached SSM
    job = store.get(job.job_id)
    assert (job.status, job.reason_code, job.attempt, len(refused)) == (JobStatus.FAILED, ReasonCode.LAUNCH_FAILED, 2, 2)
    assert "InvalidInstanceId" in (job.reason_message or "") and not job.slot_held
    assert not [c for c in ssm.list_commands()["Commands"] if job.job_id in c["Comment"]]
    row = intake_row(settings, "SSM SendCommand refused (InvalidInstanceId) on every launch",
                     [f"incoming/sales/ssm.csv@{put['VersionId']}"], failed_jobs_keep_inputs=True)  # fmt: skip
    assert (row.terminal_state, row.reason, row.attempts, row.objects_lost, row.objects_processed_twice) == (
        "FAILED", "LAUNCH_FAILED", 2, 0, 0)  # fmt: skip
    fault_row(row)
