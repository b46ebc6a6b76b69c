"""The whole system in one stack: network, storage, job events, bastion + cluster access, intake,
HTTP API, schedules, watchdog and alerts. Each capability is one construct in its own file; this file wires them
and is the one place that turns deployed resources into `Settings` (the same environment
variables local mode uses)."""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import Aws, CfnOutput, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.alerts import Alerts
from cdk.api import HttpApi
from cdk.assets import PIPELINES_JSON, stage_bastion_bundle, stage_lambda_code
from cdk.bastion import Bastion, FixedLinuxImage
from cdk.cluster_access import (
    NAG_EC2_ARN,
    NodeRole,
    allow_launching,
    allow_tokens,
    ec2_arn,
    image_statement,
    launcher_statements,
    ray_up_statements,
)
from cdk.config import DeploymentConfig
from cdk.events import JobEvents
from cdk.functions import LambdaFactory, service_name
from cdk.intake import Intake
from cdk.nag import acknowledge
from cdk.network import Network
from cdk.operators import Operators
from cdk.schedules import Schedules
from cdk.storage import JOB_PREFIX, Storage
from raylauncher.bastion import SSM_DOCUMENT
from raylauncher.releases import release_id
from raylauncher.tags import CLUSTER_NAME_PREFIX, RAY_CLUSTER_TAG
from raylauncher.config import (
    BASTION_APP_DIR,
    BASTION_EC2_DEPLOYMENT_FILE,
    BASTION_LAUNCHER,
    Ec2Deployment,
    PipelinesConfig,
    Settings,
)

#: Canonical's public SSM parameter for stock Ubuntu 22.04 (python3 + apt; see ec2_config).
UBUNTU_NODE_AMI_PARAMETER = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
#: The account that publishes the images behind UBUNTU_NODE_AMI_PARAMETER (Canonical, in the
#: commercial partition; GovCloud and China publish under other accounts: pin `node_ami_id` there).
CANONICAL_OWNER = "099720109477"
LAMBDA_TASK_ROOT = "/var/task"


def lambda_environment(settings: Settings) -> dict[str, str]:
    """Settings as Lambda environment variables (AWS_REGION is the runtime's own)."""
    return {k: v for k, v in settings.to_env().items() if not k.startswith("AWS_")}


class RayLauncherStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        pipelines: PipelinesConfig,
        project_dir: Path,
        **kwargs: object,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        defaults = Settings.model_fields
        dashboard_port = int(defaults["dashboard_port"].default)
        retention = logs.RetentionDays[config.log_retention]

        network = Network(self, "Network", config=config, dashboard_port=dashboard_port)
        storage = Storage(self, "Storage", logs_expire_days=config.logs_expire_days)
        job_events = JobEvents(self, "JobEvents")
        tables = (storage.job_table, storage.idempotency_table)
        ssm_output = logs.LogGroup(self, "DriverCommandLogs", retention=retention)

        # Cluster nodes and who may launch them.
        node = NodeRole(self, "Nodes", storage=storage, pipelines=pipelines)
        node_image_id = (
            FixedLinuxImage(config.node_ami_id) if config.node_ami_id
            else ec2.MachineImage.from_ssm_parameter(UBUNTU_NODE_AMI_PARAMETER)
        ).get_image(self).image_id  # fmt: skip
        subnet_ids = network.private_subnet_ids
        image = image_statement(image_id=config.node_ami_id) if config.node_ami_id else image_statement(owner=CANONICAL_OWNER)
        launching = launcher_statements(node_role=node.role, subnet_ids=subnet_ids,
                                        cluster_sg_id=network.cluster_sg.security_group_id, image=image)  # fmt: skip
        node.allow_launching(launching)

        # The bastion: the driver's settings name the same resources the Lambdas use.
        shared = {"table": storage.job_table.table_name, "idempotency_table": storage.idempotency_table.table_name,
                  "bucket": storage.bucket_name, "region": Aws.REGION, "max_clusters_total": config.max_clusters_total,
                  "event_bus": job_events.bus.event_bus_name}  # fmt: skip
        driver_settings = Settings(
            **shared, pipelines_file=f"{BASTION_APP_DIR}/{PIPELINES_JSON}", bastion="local",
            launcher_bin=BASTION_LAUNCHER, cluster_backend="ec2", detach="systemd",
            ec2_deployment_file=BASTION_EC2_DEPLOYMENT_FILE,
        )  # fmt: skip
        deployment = Ec2Deployment.model_construct(  # tokens: checked on the bastion when the driver loads it
            region=Aws.REGION, subnet_ids=tuple(subnet_ids), security_group_ids=(network.cluster_sg.security_group_id,),
            node_instance_profile_arn=node.profile.instance_profile_arn, ami_id=node_image_id,
            ssh_user=config.node_ssh_user, ray_preinstalled=config.nodes_have_ray,
        )  # fmt: skip
        # The release: the bundle, the driver's settings and the EC2 deployment as synthesized
        # (deploy-time values as the references the template holds); every job is stamped with it.
        bundle_dir = stage_bastion_bundle(project_dir, pipelines)
        release = release_id(bundle_dir, sorted(p.name for p in bundle_dir.iterdir()), {
            "driver": self.resolve(driver_settings.to_env()), "ec2": self.resolve(deployment.model_dump(mode="json"))})
        driver_settings = driver_settings.model_copy(update={"release": release})
        bastion = Bastion(
            self, "Bastion", network=network, config=config,
            bundle_dir=bundle_dir, driver_env=driver_settings.to_env(),
            ec2_deployment_json=deployment.model_dump_json(indent=1),
        )  # fmt: skip
        allow_launching(bastion.role, [*launching, *ray_up_statements()])
        allow_tokens(bastion.role, bastion, "bastion")  # each cluster's Ray token: made, read, deleted
        job_events.allow_publishing(bastion.role)  # the driver's transitions
        for table in tables:
            table.grant_read_write_data(bastion.role)
        # Manifests, Ray logs and SSM output under jobs/; each job's summary under its outputs.
        storage.allow_read(bastion.role, [JOB_PREFIX, *sorted({p.output_prefix for p in pipelines.pipelines})])
        storage.allow_write(bastion.role, [JOB_PREFIX])
        # Run Command output: the SSM agent checks the bucket's encryption and the log group first.
        ssm_output.grant_write(bastion.role)
        bastion.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["logs:DescribeLogGroups", "logs:DescribeLogStreams"],
            resources=[f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:*"]))  # fmt: skip
        bastion.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetEncryptionConfiguration"], resources=[storage.bucket_arn]))  # fmt: skip
        acknowledge(bastion.role, "IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:*]",
                    "the SSM agent lists log groups (DescribeLogGroups has no per-group scoping) before it streams output")

        # The Lambdas: one factory, one environment.
        lambda_settings = Settings(
            **shared, pipelines_file=f"{LAMBDA_TASK_ROOT}/{PIPELINES_JSON}", bastion="ssm",
            bastion_instance_id=bastion.instance.instance_id, ssm_log_group=ssm_output.log_group_name,
            launcher_bin=BASTION_LAUNCHER, cluster_backend="ec2", release=release,
        )  # fmt: skip
        functions = LambdaFactory(
            self, "Functions", code_dir=stage_lambda_code(project_dir, pipelines), vpc=network.vpc,
            subnets=network.private_subnets, security_group=network.lambda_sg,
            environment=lambda_environment(lambda_settings), log_retention=retention,
        )  # fmt: skip
        intake = Intake(self, "Intake", bucket=storage.bucket, bucket_arn=storage.bucket_arn, pipelines=pipelines,
                        functions=functions)  # fmt: skip
        api = HttpApi(
            self, "Http", openapi=json.loads((project_dir / "docs" / "openapi.json").read_text()),
            functions=functions, throttle_rate=config.api_throttle_rate, throttle_burst=config.api_throttle_burst,
            log_retention=retention,
        )  # fmt: skip
        schedule_fn = functions.function(self, "ScheduleHandler", handler_package="schedule",
                                         description="EventBridge Scheduler firing -> one job per scheduled time")  # fmt: skip
        watchdog_fn = functions.function(self, "WatchdogHandler", handler_package="watchdog", timeout=Duration.seconds(120),
                                         description="sweep: fail unclaimed launches, launch queued jobs, report")  # fmt: skip
        Schedules(self, "Schedules", pipelines=pipelines, schedule_function=schedule_fn,
                  watchdog_function=watchdog_fn, watchdog_rate_minutes=config.watchdog_rate_minutes)  # fmt: skip
        # The reaper (raylauncher/reaper.py): find our clusters' nodes, terminate only those.
        watchdog_fn.add_to_role_policy(iam.PolicyStatement(actions=["ec2:DescribeInstances"], resources=["*"]))
        watchdog_fn.add_to_role_policy(iam.PolicyStatement(
            actions=["ec2:TerminateInstances"],
            resources=[ec2_arn("instance/*")],
            conditions={"StringLike": {f"aws:ResourceTag/{RAY_CLUSTER_TAG}": f"{CLUSTER_NAME_PREFIX}*"}},
        ))  # fmt: skip
        acknowledge(watchdog_fn, f"IAM5[Resource::{NAG_EC2_ARN}instance/*]",
                    "the reaper terminates only instances tagged ray-cluster-name=rl-* (the statement's condition)")
        # The takeover teardown deletes the lost driver's Ray token (ClusterTeardown.teardown); the
        # sweep lists token parameters (names and dates, no values) to delete orphaned ones.
        allow_tokens(watchdog_fn, watchdog_fn, "watchdog")
        watchdog_fn.add_to_role_policy(iam.PolicyStatement(
            sid="ListTokenParameters", actions=["ssm:DescribeParameters"], resources=["*"]))  # fmt: skip
        # (DescribeParameters has no resource-level permissions: acknowledged in cdk/functions.py)
        # A LAUNCHING job whose SSM command already failed is ended at once (Bastion.launch_failure).
        watchdog_fn.add_to_role_policy(iam.PolicyStatement(actions=["ssm:GetCommandInvocation"], resources=["*"]))
        # (no resource-level permissions: acknowledged with the others in cdk/functions.py)
        job_metrics_fn = job_events.add_metrics(functions)
        self.alerts = Alerts(self, "Alerts", dead_letters=intake.dlq, watchdog=watchdog_fn,
                             watchdog_service=service_name("watchdog"), period_minutes=config.watchdog_rate_minutes,
                             job_metrics=job_metrics_fn, job_metrics_service=service_name("job_metrics"))  # fmt: skip

        send_command = iam.PolicyStatement(
            sid="RunTheDriverOnTheBastionOnly", actions=["ssm:SendCommand"],
            resources=[ec2_arn(f"instance/{bastion.instance.instance_id}"),
                       f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}::document/{SSM_DOCUMENT}"],
        )  # fmt: skip
        trigger_prefixes = sorted({p.trigger.prefix for p in pipelines.pipelines})
        self.functions: dict[str, lambda_.Function] = {
            "intake": intake.function, "api": api.function, "schedule": schedule_fn, "watchdog": watchdog_fn,
        }  # fmt: skip
        for fn in self.functions.values():
            job_events.allow_publishing(fn)  # every job they record or move is announced
            for table in tables:
                table.grant_read_write_data(fn)
            storage.allow_list(fn.role, trigger_prefixes)  # an s3_prefix param lists the objects under it
            storage.allow_write(fn.role, [JOB_PREFIX])  # manifests
            fn.add_to_role_policy(send_command)
        storage.allow_read(api.function.role, [JOB_PREFIX])  # GET /jobs/{id}: manifest; GET /jobs/{id}/logs: the log

        self.operators = Operators(self, "Operators", api=api.api, bastion=bastion.instance)
        self.storage, self.network, self.bastion, self.intake, self.api, self.nodes = storage, network, bastion, intake, api, node
        self.job_events = job_events
        CfnOutput(self, "DataBucket", value=storage.bucket_name, description="drop input files under a pipeline prefix")
        CfnOutput(self, "JobTable", value=storage.job_table.table_name)
        CfnOutput(self, "IntakeQueueUrl", value=intake.queue.queue_url)
        CfnOutput(self, "ApiUrl", value=api.api.url, description="IAM-signed (SigV4) requests only")
        CfnOutput(self, "JobEventBus", value=job_events.bus.event_bus_name,
                  description="one 'Ray Job State Change' event per job state change (docs/events.md)")
        CfnOutput(self, "AlertsTopicArn", value=self.alerts.topic.topic_arn,
                  description="subscribe to it: failed teardowns, silent drivers, dead-lettered notifications")
        CfnOutput(self, "BastionInstanceId", value=bastion.instance.instance_id,
                  description="aws ssm start-session --target <id> (no SSH keys, no public IP)")  # fmt: skip
        CfnOutput(self, "OperatorRoleArn", value=self.operators.role.role_arn,
                  description="assume it to run `raylauncher --stack <this stack>` (API, dashboard, doctor)")  # fmt: skip
