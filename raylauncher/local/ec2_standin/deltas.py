"""Everything that differs between the stand-in and a real deployment, in one place.

The EC2 backend, the rendered cluster.yaml and the driver are the production ones. Only:

1. `config_overrides`: deep-merged into every rendered cluster.yaml (through
   `Ec2Deployment.cluster_config_overrides`): the stand-in's key pair and its private key
   file. A real deployment lets Ray create its key pair; the stand-in imports one into moto
   so that its sshd can know the public key before Ray connects.
2. `instance_environment`: what a node's environment holds. On EC2 the head's autoscaler and
   the job get credentials from the instance profile and reach AWS's endpoints; here the
   node's login profile points them at moto through the forwarder on the bridge, with fake keys
   of the node role's own (aws.LOCAL_ACCESS_KEY_IDS: moto's call log tells its calls apart).
   Ray runs in token mode with each cluster's own token, read from moto's SSM as on EC2.
3. The seeded ids (VPC, subnets, security group, AMI, instance profile) are moto's, written
   into the same `ec2-deployment.json` a stack writes onto the bastion (see seed.py).
"""

from __future__ import annotations

from typing import Any

from raylauncher.aws import local_credentials
from raylauncher.clusters.ec2_config import HEAD_TYPE, WORKER_TYPE
from raylauncher.config import PipelinesConfig

#: The SSH user of the stand-in's nodes: root in the node's own namespaces, with its own home.
SSH_USER = "root"


def config_overrides(key_name: str, private_key_path: str) -> dict[str, Any]:
    node = {"node_config": {"KeyName": key_name}}
    return {
        "auth": {"ssh_private_key": private_key_path},
        "available_node_types": {HEAD_TYPE: node, WORKER_TYPE: {"node_config": {"KeyName": key_name}}},
    }


def instance_environment(endpoint_url: str, region: str) -> dict[str, str]:
    return {
        **local_credentials("nodes"),
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


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
