"""The bastion: a private EC2 instance managed by SSM (no key pair, no public IP, IMDSv2,
encrypted EBS) that runs the driver — `ray up`, submit, follow, logs, `ray down`.

User data only installs Python and writes `/opt/raylauncher/install.sh`, then runs it, and
tells CloudFormation how that went (a CreationPolicy: the stack fails, not the first jobs). The
installer reads what this deployment says from SSM parameters — where the bundle is (a CDK S3
asset: the package with its pinned Ray, `jobs/`, the pipelines as JSON), the driver's settings
(Settings.to_env: the names the Lambdas use) and the EC2 deployment (Ec2Deployment) — and
installs it into a fresh venv. So a deploy that changes code or config only changes those
parameters: the instance is neither replaced nor restarted under running drivers (its image is
resolved at launch, not at deploy). To apply a new deploy, when no job runs:
`aws ssm send-command --document-name AWS-RunShellScript --instance-ids <BastionInstanceId>
--parameters commands=/opt/raylauncher/install.sh`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import jsii
from aws_cdk import (
    Acknowledgment,
    Aws,
    CfnCreationPolicy,
    CfnResourceSignal,
    Stack,
    Token,
    Validations,
)
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk.config import DeploymentConfig
from cdk.nag import acknowledge
from cdk.network import Network
from raylauncher.config import (
    BASTION_APP_DIR,
    BASTION_EC2_DEPLOYMENT_FILE,
    BASTION_ENV_FILE,
    BASTION_HOME,
    BASTION_LAUNCHER,
    BASTION_STATE_DIR,
    BASTION_VENV,
)

INSTALLER = f"{BASTION_HOME}/install.sh"
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
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


def _heredoc(path: str, content: str) -> list[str]:
    """`cat > path` of `content` (deployment values, never user input), quoted: no expansion.
    Each file gets its own end marker, so a heredoc inside `content` cannot end this one."""
    marker = "RAYLAUNCHER_" + re.sub(r"[^A-Z0-9]", "_", PurePosixPath(path).name.upper()) + "_EOF"
    if marker in content.splitlines():
        raise ValueError(f"{path}: its content contains the heredoc end marker {marker}")
    return [f"cat > {path} <<'{marker}'", content.rstrip("\n"), marker]


def _file(path: str, content: str, mode: str = "0644") -> list[str]:
    return [f"mkdir -p $(dirname {path})", *_heredoc(path, content), f"chmod {mode} {path}"]


#: How long CloudFormation waits for the bastion's install to signal (pip installs Ray: minutes).
INSTALL_TIMEOUT = "PT30M"


def signal_on_exit(*, region: str, stack_name: str, logical_id: str) -> list[str]:
    """User data lines that, however the script ends, tell CloudFormation whether the install
    succeeded (cfn-signal's job, with the AWS CLI the image has: cfn-signal is not on Amazon
    Linux 2023 by default). The instance id comes from IMDSv2. A signal that cannot be sent is
    reported on stderr; the stack then fails at its CreationPolicy's timeout. Nothing in the trap
    may end it early (`set +e`): it must signal and keep the script's exit code."""
    return [
        "signal_cloudformation() {",
        "  rc=$?; set +e; status=SUCCESS; [ $rc -eq 0 ] || status=FAILURE",
        '  token=$(curl -fsS --max-time 5 -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")',
        '  instance=$(curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)',
        '  [ -n "$instance" ] || instance=bastion  # any unique id will do for one signal',
        f'  aws cloudformation signal-resource --region {region} --stack-name {stack_name} --logical-resource-id {logical_id} '
        '--unique-id "$instance" --status $status || echo "raylauncher: could not signal CloudFormation" >&2',
        "  exit $rc",
        "}",
        "trap signal_cloudformation EXIT",
    ]


#: Seconds between attempts to read a parameter (the SSM endpoint may still be coming up at
#: first boot); the tests set RAYLAUNCHER_RETRY_DELAY_S=0.
FETCH_ATTEMPTS = 10
#: systemd unit states in which a driver may still run `ray` from the venv.
DRIVER_STATES = "active,activating,deactivating,reloading"


def installer_script(*, preinstalled: bool, parameters: dict[str, str]) -> str:
    """Fetch the deployment's parameters (retried; each file replaced atomically, only once it
    was read whole), then unpack the bundle into a fresh venv. Refuses while drivers run (their
    `ray down` lives in that venv) unless given --force. With Ray preinstalled on the image (no
    egress) the venv sees the image's packages and installs only our own: no index, no
    dependencies, no build isolation (the image brings setuptools)."""
    pip = (f"{BASTION_VENV}/bin/pip install --no-index --no-deps --no-build-isolation {BASTION_APP_DIR}"
           if preinstalled else f"{BASTION_VENV}/bin/pip install --quiet '{BASTION_APP_DIR}[cluster]'")  # fmt: skip
    venv = f"{PYTHON} -m venv {'--system-site-packages ' if preinstalled else ''}{BASTION_VENV}"
    wrapper = BASTION_LAUNCHER + ".new"
    return "\n".join([
        "#!/bin/bash", "set -euo pipefail", "umask 022", f"export AWS_DEFAULT_REGION={Aws.REGION}",
        # A stopping driver (deactivating: SIGTERM, then its `ray down`) still needs the venv.
        f"drivers=$(systemctl list-units --type=service --state={DRIVER_STATES} --no-legend "
        "'raylauncher-driver-*' || true)",
        'if [ -n "$drivers" ] && [ "${1:-}" != "--force" ]; then',
        '  echo "raylauncher drivers are running (their ray down uses this venv): try again when no job runs, '
        'or pass --force" >&2', "  exit 3", "fi",
        "fetch() {  # fetch NAME: print the parameter's value, retrying while SSM is unreachable",
        f"  local i; for i in $(seq {FETCH_ATTEMPTS}); do",
        '    aws ssm get-parameter --name "$1" --query Parameter.Value --output text && return 0',
        '    sleep "${RAYLAUNCHER_RETRY_DELAY_S:-15}"', "  done; return 1", "}",
        "write_param() {  # write_param NAME FILE MODE: replace FILE only with a value read whole",
        '  local tmp; tmp=$(mktemp "$2.XXXXXX")',
        '  if fetch "$1" > "$tmp"; then chmod "$3" "$tmp"; mv -f "$tmp" "$2"; else rm -f "$tmp"; return 1; fi', "}",
        f"mkdir -p $(dirname {BASTION_ENV_FILE}) $(dirname {BASTION_EC2_DEPLOYMENT_FILE}) "
        f"$(dirname {BASTION_LAUNCHER}) {BASTION_STATE_DIR}",
        f"write_param '{parameters['env']}' {BASTION_ENV_FILE} 0600",
        f"write_param '{parameters['ec2_deployment']}' {BASTION_EC2_DEPLOYMENT_FILE} 0644",
        f"bundle=$(fetch '{parameters['bundle']}')",
        f'aws s3 cp "$bundle" {BUNDLE_ZIP}',
        f"rm -rf {BASTION_APP_DIR} {BASTION_VENV}", f"mkdir -p {BASTION_APP_DIR}",
        f"unzip -q -o {BUNDLE_ZIP} -d {BASTION_APP_DIR}", venv, pip,
        *_heredoc(wrapper, launcher_wrapper()), f"chmod 0755 {wrapper}", f"mv -f {wrapper} {BASTION_LAUNCHER}",
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
    ) -> None:
        super().__init__(scope, construct_id)
        bundle = s3_assets.Asset(self, "Bundle", path=str(bundle_dir))
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="raylauncher bastion: SSM-managed; runs ray up/down and the job drivers",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )  # fmt: skip
        bundle.grant_read(self.role)
        # What this deployment says; changing it never touches the instance (see the docstring).
        values = {
            "bundle": bundle.s3_object_url,
            "env": "\n".join(f"{k}={v}" for k, v in sorted(driver_env.items())),  # the CLI adds the last newline
            "ec2_deployment": ec2_deployment_json,
        }
        self.parameters = {
            name: ssm.StringParameter(self, f"{name.title().replace('_', '')}Parameter", string_value=value,
                                      description=f"raylauncher bastion: {name} (read by {INSTALLER})")
            for name, value in values.items()
        }  # fmt: skip
        for parameter in self.parameters.values():
            parameter.grant_read(self.role)

        user_data = ec2.UserData.for_linux()  # written below, once the instance (its logical id) exists
        machine_image = (
            FixedLinuxImage(config.bastion_ami_id) if config.bastion_ami_id
            # resolved when the instance launches: a new Amazon Linux release does not replace it
            else ec2.MachineImage.resolve_ssm_parameter_at_launch(AL2023_PARAMETER, os=ec2.OperatingSystemType.LINUX)
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
        cfn_instance = self.instance.node.default_child
        assert isinstance(cfn_instance, ec2.CfnInstance)
        cfn_instance.cfn_options.creation_policy = CfnCreationPolicy(
            resource_signal=CfnResourceSignal(count=1, timeout=INSTALL_TIMEOUT))  # fmt: skip
        user_data.add_commands("set -euo pipefail")
        # The stack waits for the install (the CreationPolicy above): it fails, not the first jobs.
        user_data.add_commands(*signal_on_exit(
            region=Aws.REGION, stack_name=Aws.STACK_NAME, logical_id=cfn_instance.logical_id))  # fmt: skip
        if not config.ray_preinstalled:  # rsync: ray up syncs files to the head; ssh comes with the image
            user_data.add_commands(f"dnf install -y -q {PYTHON} {PYTHON}-pip rsync unzip")
        installer = installer_script(
            preinstalled=config.ray_preinstalled,
            parameters={name: p.parameter_name for name, p in self.parameters.items()},
        )  # fmt: skip
        user_data.add_commands(*_file(INSTALLER, installer, "0755"), INSTALLER)

        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="SignalTheInstall", actions=["cloudformation:SignalResource"],
            resources=[f"arn:{Aws.PARTITION}:cloudformation:{Aws.REGION}:{Aws.ACCOUNT_ID}:stack/{Aws.STACK_NAME}/*"],
        ))  # fmt: skip
        acknowledge(self.role, "IAM5[Resource::arn:<AWS::Partition>:cloudformation:<AWS::Region>:<AWS::AccountId>:"
                    "stack/<AWS::StackName>/*]", "this stack only: its ARN ends in an id CloudFormation assigns at "
                    "create, after this policy is written")  # fmt: skip
        # First boot reads SSM parameters and S3: through the endpoints when there is no internet.
        for endpoint in network.endpoints:
            self.instance.node.add_dependency(endpoint)
        if not config.bastion_ami_id:
            # EC2 takes `resolve:ssm:<parameter>` as ImageId; cfn-lint's pattern only knows ami-ids.
            why = "ImageId is resolve:ssm:<public AL2023 parameter>, resolved by EC2 at launch (no replacement on new releases)"
            cfn_instance.add_metadata("cfn-lint", {"config": {"ignore_checks": ["E1152"]}, "reason": why})
            Validations.of(self.instance).acknowledge(Acknowledgment(id="CloudFormation-Validate::E1152", reason=why))
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
