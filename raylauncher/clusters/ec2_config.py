"""A job's Ray cluster launcher config for EC2, and its offline validation with Ray's own checks.

The base is templates/cluster.yaml (plain YAML). Per-job values are filled into the parsed dict,
so no value is ever parsed as YAML; the only values that reach a node's shell are the two
package versions, each checked against a strict pattern first, and the name of the cluster's
token parameter and the region (cluster_tokens.fetch_token_shell: checked and quoted). Ray is imported only by
`validate_with_ray`, and neither that nor rendering calls AWS.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from raylauncher.cluster_tokens import fetch_token_shell
from raylauncher.config import Ec2Deployment, Pipeline
from raylauncher.errors import ConfigError
from raylauncher.errors import InvalidJobId
from raylauncher.model import RUN_ID_PATTERN, Job, iso
from raylauncher.tags import CLUSTER_NAME_PREFIX, EXPIRES_AT_TAG, RAY_CLUSTER_TAG, TAG_PREFIX

TEMPLATE = Path(__file__).with_name("templates") / "cluster.yaml"
HEAD_TYPE = "ray.head.default"
WORKER_TYPE = "ray.worker.default"
ROOT_DEVICE = "/dev/sda1"  # the root device of Ubuntu AMIs

_VERSION = re.compile(r"\d+\.\d+\.\d+")
_SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def cluster_name(run_id: str) -> str:
    """The Ray cluster name of a job attempt (`Job.run_id`): one cluster per attempt, found
    again by this name."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidJobId(run_id)
    return CLUSTER_NAME_PREFIX + run_id


def pinned_ray_version() -> str:
    """The Ray installed with the launcher (pyproject pins it): bastion, head and workers share it."""
    return importlib.metadata.version("ray")


def pinned_boto3_version() -> str:
    """The boto3 installed with the launcher; the head's autoscaler gets the same one."""
    return importlib.metadata.version("boto3")


def _checked_version(name: str, value: str) -> str:
    if not _VERSION.fullmatch(value):
        raise ValueError(f"{name} {value!r} must be a plain release like 2.60.0")
    return value


def _tags(job: Job, pipeline: Pipeline, expires_at: datetime) -> list[dict[str, str]]:
    values = {
        "job-id": job.job_id,
        "pipeline": pipeline.name,
        "trigger": job.trigger,
        EXPIRES_AT_TAG.removeprefix(TAG_PREFIX): iso(expires_at),
    }
    return [{"Key": TAG_PREFIX + key, "Value": value} for key, value in values.items()]


def _node_config(
    instance_type: str, deployment: Ec2Deployment, disk_gib: int, tags: list[dict[str, str]], cluster: str, *, spot: bool
) -> dict[str, Any]:
    """Ray's AWS provider adds `ray-cluster-name` to the instance's tags only; the volume gets
    it here, because the launcher's IAM policy lets RunInstances create only resources that
    carry it (see cdk/cluster_access.py)."""
    volume_tags = [*tags, {"Key": RAY_CLUSTER_TAG, "Value": cluster}]
    # Fresh lists and dicts on every call: shared objects would become YAML anchors and aliases.
    node_config: dict[str, Any] = {
        "InstanceType": instance_type,
        "ImageId": deployment.ami_id,
        "SubnetIds": list(deployment.subnet_ids),
        "SecurityGroupIds": list(deployment.security_group_ids),
        "IamInstanceProfile": {"Arn": deployment.node_instance_profile_arn},
        "MetadataOptions": {"HttpTokens": "required"},
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {"VolumeSize": disk_gib, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True},
            }
        ],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": copy.deepcopy(tags)},
            {"ResourceType": "volume", "Tags": copy.deepcopy(volume_tags)},
        ],
    }
    if spot:
        node_config["InstanceMarketOptions"] = {"MarketType": "spot"}
    return node_config


#: Where a stock image gets the pinned Ray: a venv of the SSH user's (PEP 668 images refuse a
#: pip install into the system Python), first on PATH of every later command: Ray runs each node
#: command as `bash --login -c -i 'source ~/.bashrc; export ... && (CMD)'` (its command runner's
#: `_with_interactive`), and the line goes on top of ~/.bashrc, before the image's
#: "not interactive: return" guard. Every command may run again (idempotent).
NODE_VENV = "$HOME/raylauncher-venv"
_APT = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq"

#: A stock image (Ubuntu 22.04 is the stack's default node AMI) at first boot: cloud-init is
#: still running (and with it apt and unattended-upgrades, which hold the dpkg and lists locks),
#: and there is python3 without venv or pip. Wait for cloud-init, then install python3-venv
#: only (no recommends), retrying while another apt holds a lock, and make the venv.
STOCK_IMAGE_BOOTSTRAP = (
    "if command -v cloud-init >/dev/null; then sudo cloud-init status --wait >/dev/null || true; fi",
    f"for i in $(seq 60); do {_APT} update && {_APT} install -y --no-install-recommends python3-venv && break; "
    '[ "$i" = 60 ] && exit 1; sleep 5; done',
    f'test -x "{NODE_VENV}/bin/python" || python3 -m venv "{NODE_VENV}"',
    "grep -qs raylauncher-venv ~/.bashrc || { { echo 'export PATH=\"$HOME/raylauncher-venv/bin:$PATH\"'; "
    "cat ~/.bashrc 2>/dev/null || true; } > ~/.bashrc.raylauncher && mv ~/.bashrc.raylauncher ~/.bashrc; }",
)


def setup_commands(ray_version: str, boto3_version: str, *, preinstalled: bool) -> tuple[list[str], list[str]]:
    """(setup_commands for every node, head_setup_commands): install or check the pinned packages.
    boto3 on every node: the head's autoscaler launches workers with it, and a job's read tasks
    (on any node) read exact S3 object versions with it (pyarrow's S3 has no version id).
    `make check-bootstrap` runs the stock-image commands for real in a fresh Debian root."""
    if preinstalled:
        check = f"python -c \"import ray; assert ray.__version__ == '{ray_version}', ray.__version__\""
        return [check, 'python -c "import boto3"'], []
    return [
        *STOCK_IMAGE_BOOTSTRAP,
        f"pip install 'ray[default,data]=={ray_version}'",
        f"pip install 'boto3=={boto3_version}'",
    ], []


HEAD_START = (
    "ray start --head --port=6379 --object-manager-port=8076 --autoscaling-config=~/ray_bootstrap_config.yaml "
    "--dashboard-host=0.0.0.0 --disable-usage-stats"
)
WORKER_START = "ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076 --disable-usage-stats"


def ray_start_commands(job: Job, region: str) -> tuple[list[str], list[str]]:
    """(head_start_ray_commands, worker_start_ray_commands): each node reads the cluster's token
    from SSM (its role may) and starts Ray in token mode with it; a node that cannot read it
    fails its start command, so `ray up` (or the worker's launch) fails instead of starting an
    open node."""
    fetch = fetch_token_shell(job, region)
    with_token = f'ulimit -n 65536; RAY_AUTH_TOKEN="$({fetch})" || exit 1; export RAY_AUTH_MODE=token RAY_AUTH_TOKEN; '
    # No `ray stop` first: it stops every Ray on the machine, and each node is a fresh instance
    # of this one cluster (cache_stopped_nodes: false), with nothing of ours to clear.
    return [with_token + HEAD_START], [with_token + WORKER_START]


def render_cluster_config(
    job: Job,
    pipeline: Pipeline,
    deployment: Ec2Deployment,
    *,
    ray_version: str,
    expires_at: datetime,
    boto3_version: str | None = None,
) -> dict[str, Any]:
    """The launcher config of `job`'s cluster (a new dict; `write_cluster_config` saves it).

    `expires_at` (timezone-aware) is tagged on every instance and volume for the reaper;
    `boto3_version` defaults to the one installed here. Raises ValueError on a bad argument.
    """
    import yaml

    if job.pipeline != pipeline.name:
        raise ValueError(f"job {job.job_id} belongs to pipeline {job.pipeline!r}, not {pipeline.name!r}")
    if expires_at.utcoffset() is None:
        raise ValueError("expires_at must be timezone-aware")
    if not _SSH_USER.fullmatch(deployment.ssh_user):
        raise ValueError(f"ssh_user {deployment.ssh_user!r} is not a plain user name")
    ray_version = _checked_version("ray_version", ray_version)
    boto3_version = _checked_version("boto3_version", pinned_boto3_version() if boto3_version is None else boto3_version)
    profile = pipeline.cluster
    tags = _tags(job, pipeline, expires_at)

    config: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    config["cluster_name"] = cluster_name(job.run_id)
    config["max_workers"] = profile.max_workers
    config["idle_timeout_minutes"] = profile.idle_timeout_minutes
    config["provider"]["region"] = deployment.region
    config["auth"]["ssh_user"] = deployment.ssh_user
    # Explicit resources: `ray up` would otherwise need EC2's answer (DescribeInstanceTypes) to
    # pass validation, and a head with CPU 0 runs no tasks.
    head = config["available_node_types"][HEAD_TYPE]
    head["resources"] = {"CPU": profile.head_cpus}
    name = config["cluster_name"]
    head["node_config"] = _node_config(profile.head_instance_type, deployment, profile.disk_gib, tags, name, spot=False)
    worker = config["available_node_types"][WORKER_TYPE]
    worker["min_workers"] = profile.min_workers
    worker["max_workers"] = profile.max_workers
    worker["resources"] = {"CPU": profile.worker_cpus}
    worker["node_config"] = _node_config(
        profile.worker_instance_type, deployment, profile.disk_gib, tags, name, spot=profile.spot_workers
    )
    config["head_start_ray_commands"], config["worker_start_ray_commands"] = ray_start_commands(job, deployment.region)
    config["setup_commands"], config["head_setup_commands"] = setup_commands(
        ray_version, boto3_version, preinstalled=deployment.ray_preinstalled
    )
    return merge_overrides(config, deployment.cluster_config_overrides)


def merge_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`config` with `overrides` deep-merged in (mappings merge, anything else replaces)."""
    merged = copy.deepcopy(config)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def write_cluster_config(config: dict[str, Any], path: Path) -> Path:
    """Write `config` as YAML, readable by its owner only (mode 0600, also when `path` existed)."""
    import yaml

    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
    return path


def _check_product_rules(config: dict[str, Any]) -> None:
    """What Ray accepts but an ephemeral cluster in a private subnet must not have."""
    if config["provider"].get("cache_stopped_nodes", True) is not False:
        raise ConfigError(
            "invalid cluster config at provider.cache_stopped_nodes: must be false (terminate, never stop)"
        )
    for name, node_type in config["available_node_types"].items():
        for key in ("SubnetIds", "SecurityGroupIds"):
            if not node_type["node_config"].get(key):
                raise ConfigError(
                    f"invalid cluster config at available_node_types.{name}.node_config.{key}: must list at "
                    "least one id (left out, Ray picks or creates its own; empty, EC2 uses the VPC default)"
                )


def validate_with_ray(config: dict[str, Any]) -> dict[str, Any]:
    """Run Ray's own offline checks (those `ray up` runs before calling AWS), then the product's.

    Returns the config as Ray prepared it (its AWS defaults merged in, setup commands merged
    per node kind). Raises ConfigError naming the bad field. Starts no Ray process, calls no AWS.
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        where = ".".join(str(part) for part in err.absolute_path) or "<top level>"
        raise ConfigError(f"invalid cluster config at {where}: {err.message}") from None
    except KeyError as err:
        raise ConfigError(f"invalid cluster config: missing field {err.args[0]!r}") from None
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
        raise ConfigError(f"invalid cluster config: {err}") from None
    _check_product_rules(prepared)
    return prepared
