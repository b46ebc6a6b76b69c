"""The SSM bastion adapter against moto server (moto records the command; it runs nothing)."""

import pytest
from botocore.stub import Stubber

from raylauncher import aws
from raylauncher.bastion import SSM_DOCUMENT, SsmBastion
from raylauncher.config import Settings
from raylauncher.errors import BastionUnavailable

JOB = "sales-summary-20261125-083000-0a1b2c3d"
INSTANCE = "i-0123456789abcdef0"


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
