"""Each instance of the EC2 stand-in answers its own instance metadata service, as EC2 does, and
its processes get no AWS_* variables: botocore run inside the node's network namespace with an
empty environment finds region and credentials only there (what a real node's boto3, the head's
autoscaler and the job do). No Ray: one instance started through moto's RunInstances."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from raylauncher.aws import LOCAL_ACCESS_KEY_IDS
from raylauncher.local.ec2_standin import unavailable
from raylauncher.local.ec2_standin.network import namespace_pids
from raylauncher.local.ec2_standin.standin import Ec2StandIn
from raylauncher.local.stack import MotoServer

if reason := unavailable():
    pytest.skip(f"EC2 stand-in cannot run here: {reason}", allow_module_level=True)

PROJECT_DIR = Path(__file__).resolve().parents[2]
REGION = "ap-northeast-2"

#: Run inside a node's network namespace with an empty environment: what botocore finds.
PROBE = r"""
import json, urllib.error, urllib.request
import botocore.session
from botocore.utils import IMDSRegionProvider

session = botocore.session.get_session()
credentials = session.get_credentials()
out = {
    "method": credentials.method if credentials else None,
    "access_key": credentials.access_key if credentials else None,
    "region": IMDSRegionProvider(session).provide(),
}
base = "http://169.254.169.254/latest/"
def status(request):
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
out["get_without_token"] = status(base + "meta-data/instance-id")[0]
out["put_without_ttl"] = status(urllib.request.Request(base + "api/token", method="PUT"))[0]
code, token = status(urllib.request.Request(base + "api/token", method="PUT",
                                            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}))
with_token = lambda path: status(urllib.request.Request(base + path, headers={"X-aws-ec2-metadata-token": token}))
out["instance_id"] = with_token("meta-data/instance-id")[1]
out["tags"] = with_token("meta-data/tags/instance/Name")
out["bad_token"] = status(urllib.request.Request(base + "meta-data/instance-id",
                                                 headers={"X-aws-ec2-metadata-token": "forged"}))[0]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def standin() -> Iterator[Ec2StandIn]:
    with MotoServer() as moto, Ec2StandIn(moto.endpoint_url, REGION, PROJECT_DIR) as running:
        yield running


def run_instance(standin: Ec2StandIn, **options: Any) -> str:
    deployment = standin.deployment
    assert deployment is not None
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=standin.moto_endpoint_url,
                       aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    [instance] = ec2.run_instances(
        ImageId=deployment.ami_id, InstanceType="m5.large", MinCount=1, MaxCount=1,
        SubnetId=deployment.subnet_ids[0], IamInstanceProfile={"Arn": deployment.node_instance_profile_arn},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "imds-probe"}]}],
        **options,
    )["Instances"]  # fmt: skip
    return str(instance["InstanceId"])


def node_of(standin: Ec2StandIn, instance_id: str, timeout_s: float = 30) -> Any:
    assert standin.materializer is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        standin.materializer.wake()
        node = standin.materializer.nodes.get(instance_id)
        if node is not None:
            return node
        time.sleep(0.1)
    raise AssertionError(f"{instance_id} never became a node")


def probe(node: Any) -> dict[str, Any]:
    """PROBE as the node's SSH user runs it: its own home (its ~/.aws/config), no other variable."""
    done = subprocess.run(["ip", "netns", "exec", node.netns, "env", "-i", "PATH=/usr/bin:/bin",
                           f"HOME={node.directory / 'home'}", sys.executable, "-c", PROBE],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_node_gets_region_and_its_roles_credentials_only_from_its_metadata_service(standin: Ec2StandIn) -> None:
    # Given an instance launched as the cluster.yaml launches nodes (IMDSv2 required, tags in metadata)
    instance_id = run_instance(
        standin, MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "InstanceMetadataTags": "enabled"}
    )
    node = node_of(standin, instance_id)
    # When botocore runs inside its namespace with no AWS_* variable at all
    seen = probe(node)
    # Then it finds the node role's keys through the metadata service, and the region there
    assert seen["method"] == "iam-role"
    assert seen["access_key"] == LOCAL_ACCESS_KEY_IDS["nodes"]
    assert seen["region"] == REGION
    # And the service is IMDSv2 as EC2 runs it: no token or a forged one 401, a token needs a TTL
    assert seen["get_without_token"] == 401
    assert seen["bad_token"] == 401
    assert seen["put_without_ttl"] == 400
    assert seen["instance_id"] == instance_id
    assert seen["tags"] == [200, "imds-probe"]


def test_each_node_answers_for_itself_and_tags_stay_hidden_unless_enabled(standin: Ec2StandIn) -> None:
    # Given two instances, neither with tags in its metadata
    first, second = (run_instance(standin, MetadataOptions={"HttpTokens": "required"}) for _ in range(2))
    nodes = [node_of(standin, first), node_of(standin, second)]
    # When each asks its own metadata service
    seen = [probe(node) for node in nodes]
    # Then each hears its own instance id, and no tags (EC2's default)
    assert [s["instance_id"] for s in seen] == [first, second]
    assert all(s["tags"][0] == 404 for s in seen)


def environ_of(pid: int) -> list[bytes] | None:
    """A process's environment, or None if it ended meanwhile (a short-lived command of the node)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (ProcessLookupError, FileNotFoundError):
        return None


def test_the_node_environment_and_login_profile_carry_no_aws_variables(standin: Ec2StandIn) -> None:
    # Given a node as the stand-in boots it
    node = node_of(standin, run_instance(standin, MetadataOptions={"HttpTokens": "required"}))
    deadline = time.monotonic() + 30
    while not node.sshd_listening() and time.monotonic() < deadline:  # booted: init and sshd running
        time.sleep(0.1)
    # When we read what its processes, its SSH user's login shell and AWS config file hold
    environments = [env for pid in namespace_pids(node.netns) if (env := environ_of(pid)) is not None]
    profile = (node.directory / "home" / ".bash_profile").read_text()
    config = (node.directory / "home" / ".aws" / "config").read_text()
    # Then no AWS_* variable is set anywhere; the AWS config names only the endpoint (and SDK retries)
    assert len(environments) >= 2 and all(not v.startswith(b"AWS_") for env in environments for v in env)
    assert "AWS_" not in profile
    assert "region" not in config and "aws_access_key_id" not in config
    assert f"endpoint_url = {standin.endpoint_for_nodes}" in config
