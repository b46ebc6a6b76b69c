"""The per-job EC2 cluster launcher config: rendered from the template, checked offline by Ray's own
prepare_config/validate_config, and carrying the walkthrough's cluster without its mistakes."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from raylauncher.clusters import ec2_config
from raylauncher.clusters.ec2_config import (
    HEAD_TYPE,
    RAY_CLUSTER_TAG,
    WORKER_TYPE,
    STOCK_IMAGE_BOOTSTRAP,
    cluster_name,
    pinned_ray_version,
    render_cluster_config,
    validate_with_ray,
    write_cluster_config,
)
from raylauncher.config import (
    ClusterProfile,
    Ec2Deployment,
    Pipeline,
    load_ec2_deployment,
    load_pipelines,
    parse_pipelines,
)
from raylauncher.errors import ConfigError, InvalidJobId
from raylauncher.model import Job

PROJECT_DIR = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
EXPIRES = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
RAY = importlib.metadata.version("ray")
TAG_KEYS = ["raylauncher:job-id", "raylauncher:pipeline", "raylauncher:trigger", "raylauncher:expires-at"]
COMMAND_FIELDS = [
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
]


@pytest.fixture(scope="module")
def sample() -> Pipeline:
    return load_pipelines(PROJECT_DIR / "pipelines.yaml").get("sales-summary")


@pytest.fixture(scope="module")
def deployment() -> Ec2Deployment:
    return load_ec2_deployment(PROJECT_DIR / "examples" / "ec2-deployment.json")


def with_profile(pipeline: Pipeline, **changes: Any) -> Pipeline:
    """The pipeline with a validated variant of its cluster profile."""
    profile = ClusterProfile(**{**pipeline.cluster.model_dump(), **changes})
    return pipeline.model_copy(update={"cluster": profile})


def render(pipeline: Pipeline, deployment: Ec2Deployment, job: Job | None = None) -> dict[str, Any]:
    job = job or Job.new(pipeline.name, "s3", NOW)
    return render_cluster_config(job, pipeline, deployment, ray_version=RAY, expires_at=EXPIRES)


def walk(value: Any) -> Iterator[Any]:
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for child in children:
        yield from walk(child)


def tags_of(node_config: dict[str, Any], kind: str) -> dict[str, str]:
    (spec,) = [s for s in node_config["TagSpecifications"] if s["ResourceType"] == kind]
    return {t["Key"]: t["Value"] for t in spec["Tags"]}


def test_example_deployment_loads(deployment: Ec2Deployment) -> None:
    # Given the shipped example deployment file, Then it is the walkthrough's region with valid-looking ids
    assert deployment.region == "ap-northeast-2"
    assert deployment.subnet_ids and deployment.security_group_ids
    assert not deployment.ray_preinstalled


def test_pinned_ray_version_is_the_installed_pin() -> None:
    # Given the one Ray pin in pyproject.toml (bastion, head and workers share it)
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["optional-dependencies"]["cluster"] if d.startswith("ray[")]
    # Then the installed Ray is that pin, and it is what the nodes are told to install
    assert pinned_ray_version() == RAY == pin.split("==")[1]


def test_sample_profile_renders_the_walkthrough_cluster(sample: Pipeline, deployment: Ec2Deployment) -> None:
    # Given the sample pipeline and the example deployment
    job = Job.new(sample.name, "s3", NOW)
    # When its cluster config is rendered and checked by Ray
    config = render(sample, deployment, job)
    prepared = validate_with_ray(config)
    # Then it is the walkthrough's cluster: same region, private IPs, terminate on down
    assert config["cluster_name"] == f"rl-{job.job_id}"
    assert config["provider"] == {
        "type": "aws",
        "region": "ap-northeast-2",
        "use_internal_ips": True,
        "cache_stopped_nodes": False,
    }
    head = config["available_node_types"][HEAD_TYPE]
    worker = config["available_node_types"][WORKER_TYPE]
    assert config["head_node_type"] == HEAD_TYPE
    assert head["node_config"]["InstanceType"] == "m6i.xlarge"
    assert head["resources"] == {"CPU": 0}
    assert worker["node_config"]["InstanceType"] == "m6i.2xlarge"
    assert worker["resources"] == {"CPU": 8}
    assert (worker["min_workers"], worker["max_workers"]) == (4, 8)
    # And without the walkthrough's mistakes: a global max_workers, worker security groups set
    assert config["max_workers"] == 8
    assert worker["node_config"]["SecurityGroupIds"] == ["sg-0123456789abcdef0"]
    # And on-demand workers, the exact installed Ray and a pinned boto3 on every node (the head's
    # autoscaler and the job's exact-version reads need it)
    assert "InstanceMarketOptions" not in worker["node_config"]
    assert config["setup_commands"] == [
        *STOCK_IMAGE_BOOTSTRAP,
        f"pip install 'ray[default,data]=={RAY}'",
        f"pip install 'boto3=={importlib.metadata.version('boto3')}'",
    ]
    assert config["head_setup_commands"] == []
    # And Ray's preparation kept what we said (no default replaced or added to it)
    assert prepared["max_workers"] == 8
    assert prepared["available_node_types"][WORKER_TYPE]["resources"] == {"CPU": 8}
    assert prepared["worker_setup_commands"] == config["setup_commands"]


VARIANTS = {
    "sample": ({}, {}),
    "spot-workers": ({"spot_workers": True}, {}),
    "ray-preinstalled": ({}, {"ray_preinstalled": True}),
    "min0-max2": ({"min_workers": 0, "max_workers": 2}, {}),
    "head-cpus-2": ({"head_cpus": 2, "disk_gib": 200, "idle_timeout_minutes": 15}, {}),
    "other-instances": (
        {"head_instance_type": "m6i.large", "worker_instance_type": "c7g.4xlarge", "worker_cpus": 16},
        {},
    ),
}


@pytest.mark.parametrize(("profile_changes", "deployment_changes"), VARIANTS.values(), ids=VARIANTS.keys())
def test_every_profile_passes_rays_validation(
    sample: Pipeline, deployment: Ec2Deployment, profile_changes: dict[str, Any], deployment_changes: dict[str, Any]
) -> None:
    # Given a variant of the sample profile (and deployment)
    pipeline = with_profile(sample, **profile_changes)
    deployment = Ec2Deployment(**{**deployment.model_dump(), **deployment_changes})
    profile = pipeline.cluster
    # When its config is rendered and checked by Ray
    config = render(pipeline, deployment)
    prepared = validate_with_ray(config)
    # Then every value was filled in (no template null left) and the profile's numbers are Ray's
    assert None not in list(walk(config))
    assert prepared["max_workers"] == profile.max_workers
    assert prepared["max_workers"] >= prepared["available_node_types"][WORKER_TYPE]["min_workers"]
    assert prepared["idle_timeout_minutes"] == profile.idle_timeout_minutes
    assert prepared["provider"]["region"] == "ap-northeast-2"
    assert prepared["provider"]["use_internal_ips"] is True
    assert prepared["provider"]["cache_stopped_nodes"] is False
    head = prepared["available_node_types"][HEAD_TYPE]
    worker = prepared["available_node_types"][WORKER_TYPE]
    assert (head["min_workers"], head["max_workers"]) == (0, 0)
    assert head["resources"] == {"CPU": profile.head_cpus}
    assert worker["resources"] == {"CPU": profile.worker_cpus}
    assert (worker["min_workers"], worker["max_workers"]) == (profile.min_workers, profile.max_workers)
    assert head["node_config"]["InstanceType"] == profile.head_instance_type
    assert worker["node_config"]["InstanceType"] == profile.worker_instance_type
    # And every node type is locked down the same way, and tagged for the reaper
    for node_type in (head, worker):
        node_config = node_type["node_config"]
        assert node_config["ImageId"] == deployment.ami_id
        assert node_config["SubnetIds"] == list(deployment.subnet_ids)
        assert node_config["SecurityGroupIds"] == list(deployment.security_group_ids)
        assert node_config["IamInstanceProfile"] == {"Arn": deployment.node_instance_profile_arn}
        assert node_config["MetadataOptions"] == {"HttpTokens": "required"}
        (disk,) = node_config["BlockDeviceMappings"]
        assert disk["DeviceName"] == "/dev/sda1"
        assert disk["Ebs"] == {
            "VolumeSize": profile.disk_gib,
            "VolumeType": "gp3",
            "Encrypted": True,
            "DeleteOnTermination": True,
        }
        for kind in ("instance", "volume"):
            tags = tags_of(node_config, kind)
            # (the volume also gets Ray's cluster tag, which Ray adds to the instance itself:
            # the launcher's IAM policy requires it on every resource RunInstances creates)
            assert list(tags) == TAG_KEYS + ([RAY_CLUSTER_TAG] if kind == "volume" else [])
            assert tags["raylauncher:pipeline"] == "sales-summary"
            assert tags["raylauncher:trigger"] == "s3"
            assert tags["raylauncher:expires-at"] == "2026-11-25T10:30:00.000Z"
    # And only workers go on spot, and only when the profile asks
    assert "InstanceMarketOptions" not in head["node_config"]
    assert ("InstanceMarketOptions" in worker["node_config"]) is profile.spot_workers
    if profile.spot_workers:
        assert worker["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    # And what nodes run (after Ray merged its defaults) installs nothing unpinned, Ray at the exact version
    node_commands = prepared["head_setup_commands"] + prepared["worker_setup_commands"]
    installs = [c for c in node_commands if "pip install" in c]
    assert all(re.fullmatch(r"pip install '[a-z0-9\[\],_-]+==\d+\.\d+\.\d+'", c) for c in installs), installs
    if deployment.ray_preinstalled:
        assert installs == []
        assert prepared["worker_setup_commands"] == [
            f"python -c \"import ray; assert ray.__version__ == '{RAY}', ray.__version__\"",
            'python -c "import boto3"',
        ]
    else:
        assert f"pip install 'ray[default,data]=={RAY}'" in prepared["worker_setup_commands"]
        assert f"pip install 'ray[default,data]=={RAY}'" in prepared["head_setup_commands"]


def test_no_ray_default_is_left_to_merge_in(sample: Pipeline, deployment: Ec2Deployment) -> None:
    # Given Ray's AWS defaults (their setup commands install a nightly Ray and an unpinned boto3)
    from ray.autoscaler._private.providers import _get_default_config

    defaults = _get_default_config({"type": "aws"})
    # When our config is rendered, Then it sets every top-level field the defaults have
    config = render(sample, deployment)
    assert set(defaults) <= set(config)
    # And after Ray's preparation none of the defaults' install commands is left anywhere
    prepared = validate_with_ray(config)
    default_installs = set(defaults["setup_commands"] + defaults["head_setup_commands"])
    assert len(default_installs) == 3
    assert not default_installs & {c for field in COMMAND_FIELDS for c in prepared[field]}


def test_start_commands_are_the_launchers_usual_ones_in_token_mode(sample: Pipeline, deployment: Ec2Deployment) -> None:
    # Given a rendered config, Then nodes start Ray the usual way (these run on the nodes, not here)
    config = render(sample, deployment)
    job_id = config["cluster_name"].removeprefix("rl-")
    for field, start in (("head_start_ray_commands", ec2_config.HEAD_START),
                         ("worker_start_ray_commands", ec2_config.WORKER_START)):  # fmt: skip
        (command,) = config[field]  # no `ray stop`: it would stop every Ray on the machine
        # And Ray starts in token mode with the token its node reads from the cluster's parameter
        assert command.startswith("ulimit -n 65536; RAY_AUTH_TOKEN=") and command.endswith(
            "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN; " + start
        )
        assert f"/raylauncher/ray-auth/{job_id}/{job_id}" in command and deployment.region in command
    assert "--head" in ec2_config.HEAD_START and "--dashboard-host=0.0.0.0" in ec2_config.HEAD_START
    assert "--address=$RAY_HEAD_IP:6379" in ec2_config.WORKER_START


@pytest.mark.parametrize("fetch_works", [True, False])
def test_a_node_starts_ray_with_the_fetched_token_or_not_at_all(
    sample: Pipeline, deployment: Ec2Deployment, tmp_path: Path, fetch_works: bool
) -> None:
    # Given the rendered head start command, run by bash with stand-ins for the node's `python`
    # (the SSM read: prints a token, or fails as without permission) and `ray` (records its env)
    config = render(sample, deployment)
    command, job_id = config["head_start_ray_commands"][0], config["cluster_name"].removeprefix("rl-")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        "#!/bin/sh\n" + ('echo "$3 $4" >&2; printf tok-123' if fetch_works else "echo AccessDenied >&2; exit 1") + "\n"
    )
    (bin_dir / "ray").write_text(f'#!/bin/sh\necho "$RAY_AUTH_MODE $RAY_AUTH_TOKEN $*" > {tmp_path}/ray.out\n')
    for tool in ("python", "ray"):
        (bin_dir / tool).chmod(0o755)
    # When the node runs it
    done = subprocess.run(["bash", "-c", command], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                          capture_output=True, text=True, check=False)  # fmt: skip
    # Then Ray started in token mode with the token, the parameter of this attempt was read ...
    if fetch_works:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "ray.out").read_text().startswith("token tok-123 start --head")
        assert done.stderr.splitlines()[-1] == f"/raylauncher/ray-auth/{job_id}/{job_id} {deployment.region}"
    else:
        # ... or, without the token, the command failed and no Ray started (no open node)
        assert done.returncode == 1 and not (tmp_path / "ray.out").exists()


def test_cluster_name_is_unique_per_job(sample: Pipeline, deployment: Ec2Deployment) -> None:
    # Given two jobs of the same pipeline created in the same second
    first, second = Job.new(sample.name, "s3", NOW), Job.new(sample.name, "s3", NOW)
    # When their configs are rendered, Then their clusters have different names, each named after its job
    names = {render(sample, deployment, job)["cluster_name"] for job in (first, second)}
    assert names == {f"rl-{first.job_id}", f"rl-{second.job_id}"}
    # And a malformed job id never becomes a cluster name
    with pytest.raises(InvalidJobId):
        cluster_name("sales; reboot")


WALKTHROUGH = """
cluster_name: sales-summary
provider:
  type: aws
  region: ap-northeast-2
  use_internal_ips: true
  cache_stopped_nodes: false
auth:
  ssh_user: ubuntu
available_node_types:
  ray.head.default:
    resources: {CPU: 0}
    node_config:
      InstanceType: m6i.xlarge
      SubnetIds: [subnet-0123456789abcdef0]
      SecurityGroupIds: [sg-0123456789abcdef0]
  ray.worker.default:
    min_workers: 4
    max_workers: 8
    resources: {CPU: 8}
    node_config:
      InstanceType: m6i.2xlarge
      SubnetIds: [subnet-0123456789abcdef0]
      SecurityGroupIds: []
head_node_type: ray.head.default
"""


def test_walkthrough_config_is_rejected_naming_its_mistakes() -> None:
    # Given the walkthrough's config: no global max_workers (Ray's default is 2) with min_workers 4
    walkthrough = yaml.safe_load(WALKTHROUGH)
    # When Ray validates it, Then the missing max_workers is named
    with pytest.raises(ConfigError, match=r"global `max_workers` is smaller than the sum of `min_workers`"):
        validate_with_ray(walkthrough)
    # Given that fixed, When validated again, Then the empty worker security group list is named
    walkthrough["max_workers"] = 8
    with pytest.raises(ConfigError, match=r"available_node_types\.ray\.worker\.default\.node_config\.SecurityGroupIds"):
        validate_with_ray(walkthrough)


def test_stopping_instead_of_terminating_is_rejected(sample: Pipeline, deployment: Ec2Deployment) -> None:
    # Given a rendered config that would stop nodes on `ray down`, Then validation names the field
    config = render(sample, deployment)
    config["provider"]["cache_stopped_nodes"] = True
    with pytest.raises(ConfigError, match=r"provider\.cache_stopped_nodes"):
        validate_with_ray(config)


@pytest.mark.parametrize(
    ("break_it", "named"),
    [
        (
            lambda c: c["available_node_types"][WORKER_TYPE].pop("resources"),
            r"at available_node_types\.ray\.worker\.default: 'resources' is a required",
        ),
        (
            lambda c: c["available_node_types"][WORKER_TYPE].update(min_workers="four"),
            r"at available_node_types\.ray\.worker\.default\.min_workers: 'four'",
        ),
        (
            lambda c: c["available_node_types"][HEAD_TYPE]["resources"].update(CPU=-1),
            r"at available_node_types\.ray\.head\.default\.resources\.CPU: -1",
        ),
        (
            lambda c: c.update(head_node_type="ray.head.other"),
            r"`head_node_type` must be one of `available_node_types`",
        ),
        (lambda c: c.update(unknown_field=1), r"at <top level>: Additional properties .*'unknown_field'"),
        (lambda c: c.pop("provider"), r"missing field 'provider'"),
    ],
    ids=["no-resources", "min-workers-text", "negative-cpu", "unknown-head-type", "extra-field", "no-provider"],
)
def test_ray_validation_errors_name_the_field(
    sample: Pipeline, deployment: Ec2Deployment, break_it: Any, named: str
) -> None:
    # Given a rendered config broken in one place
    config = render(sample, deployment)
    break_it(config)
    # When Ray validates it, Then the ConfigError names what is wrong
    with pytest.raises(ConfigError, match=named):
        validate_with_ray(config)


def test_invalid_deployment_names_the_field(tmp_path: Path) -> None:
    # Given a deployment with a malformed subnet id
    data = {**json.loads((PROJECT_DIR / "examples" / "ec2-deployment.json").read_text()), "subnet_ids": ["subnet-XYZ"]}
    # When it is built directly, Then pydantic names subnet_ids
    with pytest.raises(ValidationError) as caught:
        Ec2Deployment(**data)
    assert [e["loc"] for e in caught.value.errors()] == [("subnet_ids",)]
    # When it is loaded from a file, Then the ConfigError names the field too
    path = tmp_path / "ec2-deployment.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"subnet_ids: .*subnet-0123456789abcdef0"):
        load_ec2_deployment(path)
    # And a bad AMI id is named the same way
    with pytest.raises(ValidationError, match=r"ami_id"):
        Ec2Deployment(**{**data, "subnet_ids": ["subnet-0123456789abcdef0"], "ami_id": "ami-; reboot"})


def test_invalid_profile_names_the_field() -> None:
    # Given pipelines whose cluster profile is wrong in one field each
    base = {
        "name": "sales-summary",
        "trigger": {"prefix": "incoming/sales/"},
        "entrypoint": {"script": "jobs/sales_summary/main.py"},
        "output_prefix": "outputs/sales-summary/",
    }
    # Then loading names the field's path
    with pytest.raises(ConfigError, match=r"pipelines\.0\.cluster\.worker_instance_type"):
        parse_pipelines({"pipelines": [{**base, "cluster": {"worker_instance_type": "m6i.2xlarge; reboot"}}]})
    with pytest.raises(ConfigError, match=r"pipelines\.0\.cluster: .*min_workers must not exceed max_workers"):
        parse_pipelines({"pipelines": [{**base, "cluster": {"min_workers": 9, "max_workers": 8}}]})


@pytest.mark.parametrize("bad", ["2.60", "2.60.0\n", "2.60.0; curl x | sh", "latest", "2.60.0rc1", "'2.60.0'", ""])
def test_bad_ray_version_is_refused(sample: Pipeline, deployment: Ec2Deployment, bad: str) -> None:
    # Given a version string that is not a plain release (it would reach a node's shell)
    job = Job.new(sample.name, "s3", NOW)
    # Then rendering refuses it, naming it
    with pytest.raises(ValueError, match="ray_version"):
        render_cluster_config(job, sample, deployment, ray_version=bad, expires_at=EXPIRES)
    with pytest.raises(ValueError, match="boto3_version"):
        render_cluster_config(job, sample, deployment, ray_version=RAY, expires_at=EXPIRES, boto3_version=bad)


def test_other_bad_arguments_are_refused(sample: Pipeline, deployment: Ec2Deployment) -> None:
    # Given a valid job, When one other argument is wrong, Then rendering refuses it, saying which
    job = Job.new(sample.name, "s3", NOW)
    # A naive expiry time (it would be read as local time)
    with pytest.raises(ValueError, match="timezone-aware"):
        render_cluster_config(job, sample, deployment, ray_version=RAY, expires_at=datetime(2026, 11, 25, 10, 30))
    # A job rendered with another pipeline's settings
    other = Job.new("other-pipeline", "s3", NOW)
    with pytest.raises(ValueError, match="belongs to pipeline 'other-pipeline'"):
        render_cluster_config(other, sample, deployment, ray_version=RAY, expires_at=EXPIRES)
    # An SSH user that is not a plain name (it reaches ssh's command line)
    odd_user = Ec2Deployment(**{**deployment.model_dump(), "ssh_user": "ubuntu@evil -oProxyCommand=x"})
    with pytest.raises(ValueError, match="ssh_user"):
        render_cluster_config(job, sample, odd_user, ray_version=RAY, expires_at=EXPIRES)


def test_written_yaml_round_trips_with_mode_0600(sample: Pipeline, deployment: Ec2Deployment, tmp_path: Path) -> None:
    # Given a rendered config and a file left over with a looser mode
    config = render(sample, deployment)
    path = tmp_path / "cluster.yaml"
    path.write_text("old")
    path.chmod(0o644)
    # When it is written
    assert write_cluster_config(config, path) == path
    # Then the file is the same dict, owner-only, with no YAML anchors/aliases
    text = path.read_text()
    assert yaml.safe_load(text) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not re.search(r"[&*]id\d+", text)
    # And the file Ray would read passes Ray's validation
    validate_with_ray(yaml.safe_load(text))


def test_hostile_trigger_only_ever_becomes_a_tag_value(
    sample: Pipeline, deployment: Ec2Deployment, tmp_path: Path
) -> None:
    # Given a job whose trigger tries to smuggle a YAML list item / command in (the model
    # refuses such a trigger; model_copy skips validation, as a corrupted record might)
    hostile = "s3\n- rm -rf /"
    with pytest.raises(ValueError):
        Job.new(sample.name, hostile, NOW)  # type: ignore[arg-type]
    benign = Job.new(sample.name, "s3", NOW)
    job = benign.model_copy(update={"trigger": hostile})
    # When its config is rendered, written and read back as Ray would
    path = write_cluster_config(render(sample, deployment, job), tmp_path / "cluster.yaml")
    config = yaml.safe_load(path.read_text())
    prepared = validate_with_ray(config)
    # Then the value is exactly one tag value on every instance and volume
    for node_type in (HEAD_TYPE, WORKER_TYPE):
        node_config = config["available_node_types"][node_type]["node_config"]
        for kind in ("instance", "volume"):
            assert tags_of(node_config, kind)["raylauncher:trigger"] == hostile
    assert [s for s in walk(config) if isinstance(s, str) and "rm -rf" in s] == [hostile] * 4
    # And every command any node runs is the same as for a benign job
    benign_prepared = validate_with_ray(render(sample, deployment, benign))
    for field in COMMAND_FIELDS:
        assert prepared[field] == benign_prepared[field]


def test_module_does_not_import_ray() -> None:
    # Given a fresh interpreter, When the module is imported, Then Ray is not (the Lambdas share the package)
    code = "import sys, raylauncher.clusters.ec2_config; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_DIR, timeout=60)


def test_every_resource_run_instances_creates_carries_the_cluster_tag_the_iam_policy_requires(
    sample: Pipeline, deployment: Ec2Deployment
) -> None:
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    job = Job.new(sample.name, "s3", NOW)
    config = render(sample, deployment, job)
    for node_type in (HEAD_TYPE, WORKER_TYPE):
        node_config = config["available_node_types"][node_type]["node_config"]
        # Given the tag specs Ray's AWS provider sends with RunInstances: its own instance tags
        # (ray-cluster-name first), merged with our node config's by Ray's own code
        specs = [{"ResourceType": "instance", "Tags": [{"Key": RAY_CLUSTER_TAG, "Value": config["cluster_name"]}]}]
        AWSNodeProvider._merge_tag_specs(specs, copy.deepcopy(node_config["TagSpecifications"]))
        # Then every resource type created (instance and root volume) carries our cluster's tag,
        # as cdk/cluster_access.py's RunInstances condition (aws:RequestTag/ray-cluster-name) demands
        assert sorted(s["ResourceType"] for s in specs) == ["instance", "volume"]
        for spec in specs:
            assert {"Key": RAY_CLUSTER_TAG, "Value": cluster_name(job.job_id)} in spec["Tags"], spec["ResourceType"]


def test_deployment_overrides_are_merged_in_and_still_validated(sample: Pipeline, deployment: Ec2Deployment) -> None:
    # Given a deployment that names an existing key pair and key file (what the EC2 stand-in does)
    with_key = deployment.model_copy(update={"cluster_config_overrides": {
        "auth": {"ssh_private_key": "/keys/k.pem"},
        "available_node_types": {"ray.head.default": {"node_config": {"KeyName": "k"}}},
    }})  # fmt: skip
    # When the config is rendered
    config = render(sample, with_key)
    # Then the overrides are merged into the rendered config, and the rest is untouched
    assert config["auth"] == {"ssh_user": deployment.ssh_user, "ssh_private_key": "/keys/k.pem"}
    head = config["available_node_types"]["ray.head.default"]["node_config"]
    assert head["KeyName"] == "k" and head["SubnetIds"] == list(deployment.subnet_ids)
    assert "KeyName" not in config["available_node_types"]["ray.worker.default"]["node_config"]
    ec2_config.validate_with_ray(config)
    # And an override that breaks a product rule is still refused by the validation
    stopping = deployment.model_copy(update={"cluster_config_overrides": {"provider": {"cache_stopped_nodes": True}}})
    with pytest.raises(ConfigError, match="provider.cache_stopped_nodes"):
        ec2_config.validate_with_ray(render(sample, stopping))
