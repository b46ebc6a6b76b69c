"""Everything that differs between the stand-in and a real deployment, in one place.

The EC2 backend, the rendered cluster.yaml and the driver are the production ones. Only:

1. `config_overrides`: deep-merged into every rendered cluster.yaml (through
   `Ec2Deployment.cluster_config_overrides`): the stand-in's key pair and its private key
   file. A real deployment lets Ray create its key pair; the stand-in imports one into moto
   so that its sshd can know the public key before Ray connects.
2. `aws_config`: how a node reaches AWS. On EC2 the VPC endpoints' private DNS names send the
   SDKs' default endpoints to AWS; here the SSH user's ~/.aws/config names one endpoint_url,
   moto through the forwarder on the bridge (the SDKs' standard setting; the sales job honours
   it as boto3 does), and asks the metadata service three times with a 2 s timeout (botocore's
   default is once, 1 s: the stand-in's service answers from a busy test process; a real node's
   SDKs keep their defaults). Nothing else differs: a node's environment has no AWS_* variable
   (`instance_environment`, checked by NodeImage), and region and credentials come from the
   node's own instance metadata service (imds.py), which hands out the instance profile
   role's keys (aws.LOCAL_ACCESS_KEY_IDS: moto's call log tells the role's calls apart). Ray
   runs in token mode with each cluster's own token, read from moto's SSM as on EC2.
3. The seeded ids (VPC, subnets, security group, AMI, instance profile) are moto's, written
   into the same `ec2-deployment.json` a stack writes onto the bastion (see seed.py).
"""

from __future__ import annotations

from typing import Any

from raylauncher.aws import local_credentials
from raylauncher.clusters.ec2_config import HEAD_TYPE, WORKER_TYPE
from raylauncher.config import PipelinesConfig
from raylauncher.local.ec2_standin.seed import PROFILE_NAME

#: The SSH user of the stand-in's nodes: root in the node's own namespaces, with its own home.
SSH_USER = "root"


def config_overrides(key_name: str, private_key_path: str) -> dict[str, Any]:
    node = {"node_config": {"KeyName": key_name}}
    return {
        "auth": {"ssh_private_key": private_key_path},
        "available_node_types": {HEAD_TYPE: node, WORKER_TYPE: {"node_config": {"KeyName": key_name}}},
    }


def instance_environment() -> dict[str, str]:
    """What the image sets in every node's environment: Ray sends no usage statistics (traffic
    stays on this machine). No AWS_* variable: AWS sets none on an instance."""
    return {"RAY_USAGE_STATS_ENABLED": "0"}


def aws_config(endpoint_url: str) -> str:
    """The SSH user's ~/.aws/config on a node: only where AWS is (no region, no credentials).
    The metadata service is asked three times before an SDK gives up (botocore's default is
    once with a 1 s timeout; the stand-in's service answers from a busy test process)."""
    return f"[default]\nendpoint_url = {endpoint_url}\nmetadata_service_num_attempts = 3\nmetadata_service_timeout = 2\n"


#: The role of each instance profile the stand-in seeds, and whose moto keys it gets.
PROFILE_ROLES = {PROFILE_NAME: "nodes"}


def role_keys(role_name: str) -> dict[str, str]:
    """The instance profile role's keys, as the metadata service hands them out."""
    env = local_credentials(PROFILE_ROLES[role_name])
    return {"AccessKeyId": env["AWS_ACCESS_KEY_ID"], "SecretAccessKey": env["AWS_SECRET_ACCESS_KEY"]}


#: The cluster shape on one 2-core machine: at most a head and two workers (launched by the
#: head's autoscaler), one logical CPU each, so the sample job's tasks spread over all nodes.
STANDIN_PROFILE = {"min_workers": 2, "max_workers": 2, "head_cpus": 1, "worker_cpus": 1}


def sized_for_one_machine(pipelines: PipelinesConfig) -> PipelinesConfig:
    """The same pipelines with worker counts capped at STANDIN_PROFILE's and its CPUs
    (instance types and everything else kept)."""
    sized = []
    for p in pipelines.pipelines:
        cap = {
            "min_workers": min(p.cluster.min_workers, STANDIN_PROFILE["min_workers"]),
            "max_workers": min(p.cluster.max_workers, STANDIN_PROFILE["max_workers"]),
            "head_cpus": STANDIN_PROFILE["head_cpus"],
            "worker_cpus": STANDIN_PROFILE["worker_cpus"],
        }
        sized.append(p.model_copy(update={"cluster": p.cluster.model_copy(update=cap)}))
    return PipelinesConfig(pipelines=tuple(sized))
