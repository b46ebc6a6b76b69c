"""The SSM bastion adapter against moto server (moto records the command; it runs nothing)."""

import pytest
from botocore.stub import Stubber

from raylauncher import aws
from raylauncher.bastion import SSM_DOCUMENT, SsmBastion
from raylauncher.config import Settings
from raylauncher.errors import BastionUnavailable

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
    assert command["InstanceIds"] == [INSTANCE]
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
