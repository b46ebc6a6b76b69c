"""The stack deploys what local mode runs: the same table schemas, notification filters,
settings, schedules, API routes and code — and it is cdk-nag and cfn-lint clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cdk.intake
import cdk.storage
import raylauncher.local.stack as local_stack
from cdk.assets import PIPELINES_JSON, stage_lambda_code
from cdk.intake import cloudformation_notification
from raylauncher.cli.stack_checks import VPC_ENDPOINT_SERVICES
from raylauncher.config import Settings, load_pipelines, pipelines_json
from raylauncher.notifications import queue_notification_configuration
from raylauncher.schedules import schedule_input
from raylauncher.store import IDEMPOTENCY_TABLE, JOB_TABLE
from tests.infrastructure.conftest import OFFLINE_AMIS, PROJECT_DIR, Synthesized, render, synthesize

# pytest-xdist: one worker runs these tests (they share the synthesized stacks are made once per worker).
pytestmark = pytest.mark.xdist_group("cdk-synth")

PIPELINES = load_pipelines(PROJECT_DIR / "pipelines.yaml")


def test_tables_are_built_from_the_schema_objects_local_mode_creates(default_stack: Synthesized) -> None:
    s = default_stack
    # Given the schema objects: the CDK and the local bootstrap import the very same ones
    assert cdk.storage.JOB_TABLE is JOB_TABLE is local_stack.JOB_TABLE
    assert cdk.storage.IDEMPOTENCY_TABLE is IDEMPOTENCY_TABLE is local_stack.IDEMPOTENCY_TABLE
    for table, schema in ((s.stack.storage.job_table, JOB_TABLE), (s.stack.storage.idempotency_table, IDEMPOTENCY_TABLE)):
        props = s.resource(table)["Properties"]
        local = schema.create_table_kwargs("any")
        # Then the deployed table has the local table's key, attributes and billing mode
        assert props["KeySchema"] == local["KeySchema"]
        assert props["AttributeDefinitions"] == local["AttributeDefinitions"]
        assert props["BillingMode"] == local["BillingMode"]
        assert props.get("GlobalSecondaryIndexes", []) == local.get("GlobalSecondaryIndexes", [])
        # And TTL on the schema's attribute, point-in-time recovery, encryption at rest
        assert props["TimeToLiveSpecification"] == {"AttributeName": schema.ttl_attribute, "Enabled": True}
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert props["SSESpecification"] == {"SSEEnabled": True}


def test_bucket_notifications_are_the_object_local_mode_puts_on_its_bucket(default_stack: Synthesized) -> None:
    s = default_stack
    assert cdk.intake.queue_notification_configuration is queue_notification_configuration
    assert local_stack.queue_notification_configuration is queue_notification_configuration
    queue_arn = s.resolve(s.stack.intake.queue.queue_arn)
    bucket = s.resource(s.stack.storage.bucket)
    # Then the deployed configuration is the local one (queue ARN resolved), in CloudFormation's names
    expected = cloudformation_notification(queue_notification_configuration(PIPELINES, queue_arn))
    assert bucket["Properties"]["NotificationConfiguration"] == expected
    rules = expected["QueueConfigurations"][0]["Filter"]["S3Key"]["Rules"]
    assert rules == [{"Name": "prefix", "Value": "incoming/sales/"}, {"Name": "suffix", "Value": ".csv"}]
    # And the bucket waits for the queue policy that lets S3 send (else the PUT is refused)
    policy_id = s.logical_id(s.stack.intake.queue.node.find_child("Policy"))
    assert policy_id in bucket["DependsOn"]


def test_intake_reads_the_queue_with_the_pipeline_batching_and_partial_failures(default_stack: Synthesized) -> None:
    s = default_stack
    [mapping] = s.resources("AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["MaximumBatchingWindowInSeconds"] == max(p.batching_window_s for p in PIPELINES.pipelines)
    assert props["BatchSize"] == max(p.max_objects_per_job for p in PIPELINES.pipelines)
    queue = s.resource(s.stack.intake.queue)["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 3
    assert queue["SqsManagedSseEnabled"] is True


def test_lambda_settings_are_the_settings_local_mode_reads(default_stack: Synthesized) -> None:
    s = default_stack
    for fn in s.resources("AWS::Lambda::Function").values():
        env = fn["Properties"]["Environment"]["Variables"]
        ours = {k: v for k, v in env.items() if k.startswith("RAYLAUNCHER_")}
        # Given the deployed values with CloudFormation references replaced by plausible values
        concrete = {k: (v if isinstance(v, str) else "deployed-value") for k, v in ours.items()}
        concrete["RAYLAUNCHER_BASTION_INSTANCE_ID"] = "i-0123456789abcdef0"
        # Then Settings (what every entry point reads) accepts them, on AWS adapters
        settings = Settings.from_env({**concrete, "AWS_REGION": "eu-west-1"})
        assert (settings.bastion, settings.cluster_backend, settings.endpoint_url) == ("ssm", "ec2", None)
        assert settings.pipelines_file == f"/var/task/{PIPELINES_JSON}"
        assert env["POWERTOOLS_SERVICE_NAME"].startswith("raylauncher-")
        assert not [k for k in env if k.startswith("AWS_")]  # the runtime's own


def bastion_parameter(s: Synthesized, name: str) -> str:
    return render(s.resource(s.stack.bastion.parameters[name])["Properties"]["Value"])


def bastion_user_data(s: Synthesized) -> str:
    return render(s.resource(s.stack.bastion.instance)["Properties"]["UserData"]["Fn::Base64"])


def test_bastion_driver_settings_are_the_settings_local_mode_reads(default_stack: Synthesized) -> None:
    s = default_stack
    # Given the driver settings the stack publishes for the bastion
    env = dict(line.split("=", 1) for line in bastion_parameter(s, "env").splitlines())
    # Then they parse as Settings, on the bastion's own adapters (it runs drivers locally)
    settings = Settings.from_env(env)
    assert (settings.bastion, settings.cluster_backend, settings.detach) == ("local", "ec2", "systemd")
    assert settings.ec2_deployment_file == "/etc/raylauncher/ec2-deployment.json"
    # And the bastion and every Lambda know one release, the one they stamp on the jobs they make
    releases = {fn["Properties"]["Environment"]["Variables"]["RAYLAUNCHER_RELEASE"]
                for fn in s.resources("AWS::Lambda::Function").values()}  # fmt: skip
    assert releases == {settings.release} != {None}
    # And the bundle parameter names the CDK asset (what the installer does with all three is
    # run for real in test_bastion_install.py)
    assert bastion_parameter(s, "bundle").startswith("s3://")


def test_a_code_or_config_change_does_not_touch_the_bastion_instance(default_stack: Synthesized) -> None:
    s = default_stack
    instance = s.resource(s.stack.bastion.instance)
    user_data = json.dumps(instance["Properties"]["UserData"])
    # Then the user data names no asset hash, no node image and no table: those live in parameters
    asset_hashes = [a["source"]["path"].removeprefix("asset.") for a in json.loads(
        (s.outdir / "RayLauncher.assets.json").read_text())["files"].values() if "path" in a["source"]]  # fmt: skip
    assert asset_hashes and not [h for h in asset_hashes if h.split(".")[0] in user_data]
    assert "ubuntu" not in user_data and "JobTable" not in user_data
    # And the image is resolved at launch (a new Amazon Linux release does not replace it)
    assert instance["Properties"]["ImageId"].startswith("resolve:ssm:/aws/service/ami-amazon-linux-latest/")


def test_existing_vpc_without_egress_creates_no_network_and_uses_the_given_images(existing_vpc_stack: Synthesized) -> None:
    s = existing_vpc_stack
    for kind in ("AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::NatGateway", "AWS::EC2::InternetGateway"):
        assert s.resources(kind) == {}, kind
    [instance] = s.resources("AWS::EC2::Instance").values()
    assert instance["Properties"]["ImageId"] == OFFLINE_AMIS["bastion_ami_id"]
    deployment = json.loads(bastion_parameter(s, "ec2_deployment"))
    assert deployment["ami_id"] == OFFLINE_AMIS["node_ami_id"] and deployment["ray_preinstalled"] is True
    assert deployment["subnet_ids"] == ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]
    script = bastion_user_data(s)
    assert "pip install --no-index --no-deps --no-build-isolation /opt/raylauncher/app" in script
    assert "dnf install" not in script


def test_schedules_come_from_the_pipeline_config_plus_the_watchdog(default_stack: Synthesized) -> None:
    s = default_stack
    schedules = {v["Properties"]["Description"]: v["Properties"] for v in s.resources("AWS::Scheduler::Schedule").values()}
    expected = [(p, sch) for p in PIPELINES.pipelines for sch in p.schedules]
    assert len(schedules) == len(expected) + 1
    for pipeline, sch in expected:
        props = schedules[f"pipeline {pipeline.name}: schedule {sch.name}"]
        assert props["ScheduleExpression"] == sch.expression
        assert props["ScheduleExpressionTimezone"] == sch.timezone
        assert json.loads(props["Target"]["Input"]) == schedule_input(pipeline.name, sch.name)
    assert schedules["raylauncher watchdog sweep"]["ScheduleExpression"] == "rate(1 minute)"


def test_api_routes_are_the_openapi_documents(default_stack: Synthesized) -> None:
    s = default_stack
    openapi = json.loads((PROJECT_DIR / "docs" / "openapi.json").read_text())
    documented = {(path, method.upper()) for path, ops in openapi["paths"].items() for method in ops}
    resources = s.resources("AWS::ApiGateway::Resource")

    def path_of(ref: dict) -> str:
        if "Ref" not in ref:  # the root resource
            return ""
        props = resources[ref["Ref"]]["Properties"]
        return path_of(props["ParentId"]) + "/" + props["PathPart"]

    deployed = {(path_of(m["Properties"]["ResourceId"]), m["Properties"]["HttpMethod"])
                for m in s.resources("AWS::ApiGateway::Method").values()}  # fmt: skip
    assert deployed == documented


def test_outputs_name_what_a_user_needs(default_stack: Synthesized) -> None:
    assert set(default_stack.template_json["Outputs"]) >= {
        "DataBucket", "JobTable", "IntakeQueueUrl", "ApiUrl", "BastionInstanceId"}


def endpoint_service(name: Any) -> str:
    """com.amazonaws.<region>.<service> as synthesized (a string, or an Fn::Join around the region)."""
    if isinstance(name, dict):
        name = "".join(p if isinstance(p, str) else "<region>" for p in name["Fn::Join"][1])
    return str(name).rsplit(".", 1)[-1]


def test_the_stack_creates_the_vpc_endpoints_doctor_checks_for(default_stack: Synthesized) -> None:
    # Given the VPC endpoints the stack creates
    created = sorted(endpoint_service(r["Properties"]["ServiceName"]) for r in default_stack.template_json["Resources"].values()
                     if r["Type"] == "AWS::EC2::VPCEndpoint")  # fmt: skip
    # Then `raylauncher doctor --stack` looks for exactly those in a VPC of the user's
    assert created == sorted(VPC_ENDPOINT_SERVICES)


def test_cdk_nag_aws_solutions_passes_and_every_suppression_has_a_reason(
    default_stack: Synthesized, existing_vpc_stack: Synthesized
) -> None:
    for s in (default_stack, existing_vpc_stack):
        [report] = [r for r in s.validation_report()["pluginReports"] if r["pluginName"] == "AwsSolutions"]
        assert report["conclusion"] == "success" and report["violations"] == []
        assert report["suppressedViolations"]
        for suppressed in report["suppressedViolations"]:
            assert len(suppressed["reason"].split()) >= 5, suppressed["acknowledgedId"]


def test_cfn_lint_reports_no_errors(default_stack: Synthesized, existing_vpc_stack: Synthesized) -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    for s in (default_stack, existing_vpc_stack):
        template = s.outdir / "RayLauncher.template.json"
        done = subprocess.run([str(cfn_lint), "--format", "json", str(template)], capture_output=True, text=True, check=False)
        findings = json.loads(done.stdout or "[]")
        errors = [f for f in findings if f["Level"] == "Error"]
        assert errors == [], errors
        assert done.returncode & 2 == 0  # cfn-lint's exit code: bit 2 means errors


def test_lambda_asset_holds_our_code_and_the_pipelines_and_imports_nothing_heavy(tmp_path: Path) -> None:
    staged = stage_lambda_code(PROJECT_DIR, PIPELINES)
    assert (staged / PIPELINES_JSON).read_text() == pipelines_json(PIPELINES)
    assert not (staged / "raylauncher" / "clusters").exists() and not (staged / "jobs").exists()
    # When each handler is imported from the asset alone, with Ray, pyarrow, pandas and PyYAML unimportable
    code = (
        "import sys\n"
        "for name in ('ray', 'pyarrow', 'pandas', 'yaml'): sys.modules[name] = None\n"
        "import lambdas.api.handler, lambdas.intake.handler, lambdas.schedule.handler, lambdas.watchdog.handler\n"
        "import lambdas.job_metrics.handler\n"
        "import raylauncher\n"
        f"assert raylauncher.__file__.startswith({str(staged)!r}), raylauncher.__file__\n"
        "from raylauncher.config import load_pipelines\n"
        f"load_pipelines({str(staged / PIPELINES_JSON)!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=staged, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(staged)})  # fmt: skip
    # Then they import, from the asset
    assert done.returncode == 0, done.stderr


def run_synth(tmp_path: Path, context: dict) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path / "out")}
    return subprocess.run([sys.executable, "app.py"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                          check=False, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("pipelines_yaml", "context", "path"),
    [
        ("pipelines:\n  - name: bad\n    trigger: {prefix: /abs/}\n    entrypoint: {script: jobs/x/main.py}\n"
         "    output_prefix: out/\n", {}, "pipelines.0.trigger.prefix"),
        (None, {"vpc": {"vpc_id": "vpc-0a1b2c3d4e5f60718", "cidr": "10.0.0.0/16", "availability_zones": ["a"],
                        "private_subnet_ids": ["not-a-subnet"], "private_route_table_ids": ["rtb-0aaaaaaaaaaaaaaa1"]}},
         "context.raylauncher.vpc.private_subnet_ids"),
        (None, {"egress": "none"}, "context.raylauncher: egress: 'none' needs node_ami_id"),
        (None, {"node_ami_has_ray": True}, "context.raylauncher: node_ami_has_ray needs node_ami_id"),
        ("pipelines:\n  - name: bad\n    trigger: {prefix: in/}\n    entrypoint: {script: jobs/x/main.py}\n"
         "    output_prefix: out/\n    allowed_principals: ['arn:aws:iam::1234:user/alice']\n", {},
         "pipelines.0.allowed_principals.0"),
    ],
)  # fmt: skip
def test_a_bad_config_fails_synth_with_the_path_of_the_bad_field(
    tmp_path: Path, pipelines_yaml: str | None, context: dict, path: str
) -> None:
    # Given a bad pipeline file or a bad deployment setting, as `cdk synth -c` would pass it
    raylauncher = dict(context)
    if pipelines_yaml:
        bad = tmp_path / "pipelines.yaml"
        bad.write_text(pipelines_yaml)
        raylauncher["pipelines_file"] = str(bad)
    # When the app is synthesized
    done = run_synth(tmp_path, {"raylauncher": raylauncher})
    # Then it fails naming the field, without a traceback, and writes no template
    assert done.returncode != 0
    assert path in done.stderr.replace("\n  ", " "), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "RayLauncher.template.json").exists()


def test_allowed_principals_pass_synth_and_ship_with_the_api_lambda(tmp_path: Path) -> None:
    # Given the shipped pipelines with an allowed_principals list on sales-summary
    allowed = ["arn:aws:iam::123456789012:role/*operators", "arn:aws:iam::*:user/alice"]
    listed = tmp_path / "pipelines.yaml"
    listed.write_text((PROJECT_DIR / "pipelines.yaml").read_text() + f"    allowed_principals: {json.dumps(allowed)}\n")
    # When the app is synthesized
    done = run_synth(tmp_path, {"raylauncher": {"pipelines_file": str(listed)}})
    # Then it succeeds, and the Lambda code asset carries the list in the pipelines the API reads
    assert done.returncode == 0, done.stderr
    shipped = [json.loads(p.read_text()) for p in (tmp_path / "out").glob(f"asset.*/{PIPELINES_JSON}")]
    assert shipped and all(c["pipelines"][0]["allowed_principals"] == allowed for c in shipped)


def test_synth_pinned_to_an_account_and_region_as_the_cdk_cli_does(tmp_path: Path, monkeypatch) -> None:
    # Given the environment the CDK CLI sets from the caller's profile
    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "123456789012")
    monkeypatch.setenv("CDK_DEFAULT_REGION", "eu-west-1")
    # When the app is synthesized (cdk-nag raises on any unacknowledged finding)
    s = synthesize(tmp_path)
    # Then it is pinned there, and cdk-nag still passes
    assert (s.stack.account, s.stack.region) == ("123456789012", "eu-west-1")
    [report] = [r for r in s.validation_report()["pluginReports"] if r["pluginName"] == "AwsSolutions"]
    assert report["conclusion"] == "success"


def test_data_survives_a_delete_but_a_failed_first_create_leaves_nothing_that_blocks_the_next(
    default_stack: Synthesized,
) -> None:
    # Given the stack's stateful resources: the fixed-name data bucket, its access-log bucket, the tables
    stateful = {**default_stack.resources("AWS::S3::Bucket"), **default_stack.resources("AWS::DynamoDB::Table")}
    assert len(stateful) >= 4
    # Then each is kept on delete and on replacement, but not when the stack's first create rolls
    # back (RETAIN would leave the fixed-name bucket behind: every later deploy then fails
    # "already exists")
    policies = {k: (v.get("DeletionPolicy"), v.get("UpdateReplacePolicy")) for k, v in stateful.items()}
    assert policies == dict.fromkeys(stateful, ("RetainExceptOnCreate", "Retain"))
