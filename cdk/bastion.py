"""The bastion: a private EC2 instance managed by SSM (no key pair, no public IP, IMDSv2,
encrypted EBS) that runs the driver — `ray up`, submit, follow, logs, `ray down`.

User data installs the project bundle (a CDK S3 asset: the package with its pinned Ray, `jobs/`,
the pipelines as JSON) into a venv, and writes the driver's settings (Settings.to_env, the same
names the Lambdas use), the EC2 deployment (Ec2Deployment: where clusters go), and the launcher
wrapper the SSM command runs.

Code updates: the instance is not replaced when the bundle changes (replacing it would kill the
drivers of running jobs). After a deploy, when no job runs, re-run the installer through SSM:
`sudo /opt/raylauncher/install.sh`.
"""

from __future__ import annotations

from pathlib import Path

import jsii
from aws_cdk import Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from cdk.config import DeploymentConfig
from cdk.nag import acknowledge
from cdk.network import Network
from raylauncher.config import (
    BASTION_APP_DIR,
    BASTION_ENV_FILE,
    BASTION_HOME,
    BASTION_LAUNCHER,
    BASTION_VENV,
)

INSTALLER = f"{BASTION_HOME}/install.sh"
BUNDLE_ZIP = f"{BASTION_HOME}/bundle.zip"
ROOT_DEVICE = "/dev/xvda"  # Amazon Linux 2023
PYTHON = "python3.11"


@jsii.implements(ec2.IMachineImage)
class FixedLinuxImage:
    """One given AMI id, whatever the region (cdk.json names it for the stack's region)."""

    def __init__(self, ami_id: str) -> None:
        self._ami_id = ami_id

    def get_image(self, scope: Construct) -> ec2.MachineImageConfig:
        return ec2.MachineImageConfig(
            image_id=self._ami_id, os_type=ec2.OperatingSystemType.LINUX, user_data=ec2.UserData.for_linux()
        )


def _file(path: str, content: str, mode: str = "0644") -> list[str]:
    """Shell lines writing `content` (deployment values, never user input) to `path`."""
    return [f"mkdir -p $(dirname {path})", f"cat > {path} <<'RAYLAUNCHER_EOF'", content.rstrip("\n"),
            "RAYLAUNCHER_EOF", f"chmod {mode} {path}"]  # fmt: skip


def installer_script(*, preinstalled: bool) -> str:
    """Unpack the bundle into a fresh venv. With Ray preinstalled on the image (no egress) the venv
    sees the image's packages and installs only our own, without dependencies."""
    pip = (f"{BASTION_VENV}/bin/pip install --no-index --no-deps {BASTION_APP_DIR}" if preinstalled
           else f"{BASTION_VENV}/bin/pip install --quiet '{BASTION_APP_DIR}[cluster]'")  # fmt: skip
    venv = f"{PYTHON} -m venv {'--system-site-packages ' if preinstalled else ''}{BASTION_VENV}"
    return "\n".join([
        "#!/bin/bash", "set -euo pipefail",
        f"rm -rf {BASTION_APP_DIR} {BASTION_VENV}", f"mkdir -p {BASTION_APP_DIR}",
        f"unzip -q -o {BUNDLE_ZIP} -d {BASTION_APP_DIR}", venv, pip,
    ]) + "\n"  # fmt: skip


def launcher_wrapper() -> str:
    return "\n".join([
        "#!/bin/bash", "set -euo pipefail", f"set -a; . {BASTION_ENV_FILE}; set +a",
        f'exec {BASTION_VENV}/bin/raylauncher "$@"',
    ]) + "\n"  # fmt: skip


class Bastion(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        network: Network,
        config: DeploymentConfig,
        bundle_dir: Path,
        driver_env: dict[str, str],
        ec2_deployment_json: str,
        ec2_deployment_file: str,
    ) -> None:
        super().__init__(scope, construct_id)
        bundle = s3_assets.Asset(self, "Bundle", path=str(bundle_dir))
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="raylauncher bastion: SSM-managed; runs ray up/down and the job drivers",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )  # fmt: skip
        bundle.grant_read(self.role)

        user_data = ec2.UserData.for_linux()
        user_data.add_commands("set -euo pipefail")
        if not config.ray_preinstalled:  # rsync: ray up syncs files to the head; ssh comes with the image
            user_data.add_commands(f"dnf install -y -q {PYTHON} {PYTHON}-pip rsync unzip")
        user_data.add_s3_download_command(bucket=bundle.bucket, bucket_key=bundle.s3_object_key, local_file=BUNDLE_ZIP)
        env_lines = "\n".join(f"{k}={v}" for k, v in sorted(driver_env.items()))
        user_data.add_commands(
            *_file(INSTALLER, installer_script(preinstalled=config.ray_preinstalled), "0755"),
            *_file(BASTION_ENV_FILE, env_lines, "0600"),
            *_file(ec2_deployment_file, ec2_deployment_json, "0644"),
            *_file(BASTION_LAUNCHER, launcher_wrapper(), "0755"),
            f"mkdir -p {driver_env['RAYLAUNCHER_STATE_DIR']}",
            INSTALLER,
        )  # fmt: skip

        machine_image = (
            FixedLinuxImage(config.bastion_ami_id) if config.bastion_ami_id
            else ec2.MachineImage.latest_amazon_linux2023()
        )  # fmt: skip
        self.instance = ec2.Instance(
            self, "Instance",
            vpc=network.vpc, vpc_subnets=network.private_subnets, security_group=network.bastion_sg,
            instance_type=ec2.InstanceType(config.bastion_instance_type), machine_image=machine_image,
            role=self.role, user_data=user_data, require_imdsv2=True, associate_public_ip_address=False,
            detailed_monitoring=True, ssm_session_permissions=False,
            block_devices=[ec2.BlockDevice(device_name=ROOT_DEVICE, volume=ec2.BlockDeviceVolume.ebs(
                30, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3, delete_on_termination=True))],
        )  # fmt: skip
        acknowledge(self.role, "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
                    "the AWS-maintained minimum for an SSM-managed instance (Run Command, Session Manager)")
        stack = Stack.of(self)  # the CDK CLI may pin the stack to an account/region at synth
        account = "<AWS::AccountId>" if Token.is_unresolved(stack.account) else stack.account
        region = "<AWS::Region>" if Token.is_unresolved(stack.region) else stack.region
        for rule in (f"IAM5[Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-{account}-{region}/*]",
                     "IAM5[Action::s3:GetBucket*]", "IAM5[Action::s3:GetObject*]", "IAM5[Action::s3:List*]"):
            acknowledge(self.role, rule, "read-only access to CDK's asset bucket, as Asset.grant_read gives it, "
                        "to download the bastion bundle at boot")  # fmt: skip
        acknowledge(self.instance, "EC29", "the bastion is disposable: jobs live in DynamoDB and S3, and termination "
                    "protection would block stack updates; the watchdog reports drivers that go silent")  # fmt: skip
