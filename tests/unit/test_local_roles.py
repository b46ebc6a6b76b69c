"""Local mode signs each role's AWS calls with a key id of its own (so moto's call log can tell
the roles apart for the IAM contract); on AWS the role's own credentials are used, untouched."""

from __future__ import annotations

import pytest

from raylauncher import aws
from raylauncher.config import Settings
from raylauncher.local.ec2_standin.deltas import PROFILE_ROLES, role_keys
from raylauncher.local.stack import FAKE_CREDENTIALS


def settings(endpoint_url: str | None) -> Settings:
    return Settings(table="jobs", bucket="data", pipelines_file="pipelines.yaml", bastion="local",
                    endpoint_url=endpoint_url)  # fmt: skip


def access_key_of(client: object) -> str:
    return client._request_signer._credentials.access_key  # type: ignore[attr-defined]


def test_each_role_signs_with_its_own_key_id_in_local_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given local mode's process credentials (the bastion's: the driver, `ray up`/`ray down`)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    local = settings("http://127.0.0.1:5000")
    # Then a plain client is the bastion's, the watchdog's client and the nodes' metadata service their own
    assert access_key_of(aws.client("ec2", local)) == "local-bastion-role"
    assert access_key_of(aws.client("ec2", local, local_role="watchdog")) == "local-watchdog-role"
    [node_profile] = PROFILE_ROLES
    assert role_keys(node_profile)["AccessKeyId"] == "local-node-role"
    assert len(set(aws.LOCAL_ACCESS_KEY_IDS.values())) == len(aws.LOCAL_ACCESS_KEY_IDS)


def test_on_aws_the_local_role_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given credentials from the environment, as a Lambda's execution role provides them
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAEXECUTIONROLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    # Then a client asking for the watchdog's local key still signs with the role's credentials
    assert access_key_of(aws.client("ec2", settings(None), local_role="watchdog")) == "ASIAEXECUTIONROLE"


def test_clients_share_a_session_per_credential_environment_and_a_change_takes_effect(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    # Given credentials in the environment and no credentials file
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFIRST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    first, again = aws.client("s3", settings(None)), aws.client("dynamodb", settings(None))
    # Then two clients made under them share one session (its credentials, resolved once)
    assert access_key_of(first) == access_key_of(again) == "AKIAFIRST"
    assert first._request_signer._credentials is again._request_signer._credentials  # type: ignore[attr-defined]
    # When the environment's credentials change, or a credentials file appears
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECOND")
    # Then the next client signs with the new ones
    assert access_key_of(aws.client("s3", settings(None))) == "AKIASECOND"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = AKIAFROMFILE\naws_secret_access_key = s\n")  # type: ignore[operator]
    assert access_key_of(aws.client("s3", settings(None))) == "AKIAFROMFILE"
    # And every call still makes its own client: event hooks registered on one stay on it
    assert aws.client("s3", settings(None)) is not aws.client("s3", settings(None))
