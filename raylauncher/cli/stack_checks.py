"""`raylauncher doctor --stack`: what a deployed account must have that synth cannot see.

- vCPU quotas (Service Quotas, per instance family, on-demand and spot): a new account's are far
  below one default cluster (a head and 4-8 workers of 8 vCPUs), and a launch beyond the quota
  shows up only as PROVISIONING_TIMEOUT. Fails when one cluster of some pipeline cannot start
  at its min_workers; warns when every pipeline at its max_concurrent_clusters and max_workers
  would not fit.
- The bastion's install: its instance resource in the stack (CREATE_COMPLETE only after the
  install signalled success; see cdk/bastion.py).
- The VPC endpoints the bastion and the nodes need (no internet path to AWS's APIs otherwise).
- Account settings that break node launches: EBS encryption by default with a customer-managed
  key (the stack grants no KMS use), and a missing Spot service-linked role for spot workers.

The rules are pure functions of what the adapters read (`vcpu_checks`, `endpoint_check`,
`install_check`, ...); `stack_checks` reads the account.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from raylauncher.cli.checks import Check

#: Service Quotas codes of EC2's vCPU quotas: family -> (name, on-demand code, spot code).
QUOTAS: dict[str, tuple[str, str, str]] = {
    "standard": ("Standard (A, C, D, H, I, M, R, T, Z)", "L-1216C47A", "L-34B43A08"),
    "g": ("G and VT", "L-DB2E81BA", "L-3819A6DF"),
    "p": ("P", "L-417A185B", "L-7212CCBC"),
    "x": ("X", "L-7295265B", "L-E3A00192"),
    "f": ("F", "L-74FC7D96", "L-88CF9481"),
    "inf": ("Inf", "L-1945791B", "L-B5D1601B"),
}
_FAMILIES = {**{f: "standard" for f in ("a", "c", "d", "h", "i", "im", "is", "m", "r", "t", "z")},
             "g": "g", "vt": "g", "p": "p", "x": "x", "f": "f", "inf": "inf"}  # fmt: skip
_PREFIX = re.compile(r"^([a-z]+)")

#: The AWS services the stack's VPC must reach without internet (cdk/network.py creates them;
#: tests/infrastructure/test_stack_contract.py keeps the two lists equal).
VPC_ENDPOINT_SERVICES = ("s3", "dynamodb", "ssm", "ssmmessages", "ec2messages", "ec2", "sqs", "sts", "logs",
                         "events", "xray", "cloudformation")  # fmt: skip


SPOT_ROLE = "AWSServiceRoleForEC2Spot"


def quota_family(instance_type: str) -> str | None:
    """The vCPU quota family of an instance type (m6i.2xlarge -> standard, g5.xlarge -> g), or
    None for families with no quota known here."""
    match = _PREFIX.match(instance_type)
    return _FAMILIES.get(match.group(1)) if match else None


@dataclass(frozen=True)
class Demand:
    """vCPUs one quota must cover: `one` for the largest single cluster at its min_workers (the
    least a job needs to run), `all` for every pipeline's clusters at once at max_workers."""

    one: int = 0
    one_by: str = ""
    all: int = 0
    base: int = 0  # vCPUs that run all the time in the same quota (the bastion), in `one` and `all`


def vcpu_demand(pipelines: Iterable[Mapping[str, Any]], vcpus: Mapping[str, int]) -> dict[tuple[str, str], Demand]:
    """(family, "on-demand"|"spot") -> Demand, from the deployed pipelines (the API's view)."""
    demand: dict[tuple[str, str], Demand] = {}
    for pipeline in pipelines:
        cluster = pipeline["cluster"]
        head, worker = cluster["head_instance_type"], cluster["worker_instance_type"]
        worker_market = "spot" if cluster.get("spot_workers") else "on-demand"
        parts: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (vCPUs at min, vCPUs at max)
        for itype, market, count_min, count_max in ((head, "on-demand", 1, 1),
                                                    (worker, worker_market, cluster["min_workers"], cluster["max_workers"])):  # fmt: skip
            family = quota_family(itype)
            if family is None:
                continue
            low, high = parts.get((family, market), (0, 0))
            parts[(family, market)] = (low + count_min * vcpus[itype], high + count_max * vcpus[itype])
        concurrency = int(pipeline.get("max_concurrent_clusters", 1))
        for key, (low, high) in parts.items():
            seen = demand.get(key, Demand())
            one, by = (low, pipeline["name"]) if low > seen.one else (seen.one, seen.one_by)
            demand[key] = Demand(one, by, seen.all + high * concurrency)
    return demand


def vcpu_checks(demand: Mapping[tuple[str, str], Demand], quota: Callable[[str], float | None]) -> list[Check]:
    """One check per quota the pipelines use: `quota(code)` is its value (None: unreadable)."""
    checks = []
    for (family, market), need in sorted(demand.items()):
        name, on_demand_code, spot_code = QUOTAS[family]
        code = spot_code if market == "spot" else on_demand_code
        label = f"vcpu quota {family} {market}"
        value = quota(code)
        if value is None:
            checks.append(Check(label, "warn", f"could not read Service Quotas {code} ({name} {market}): one "
                                f"{need.one_by} cluster needs {need.one} vCPUs"))  # fmt: skip
        elif value < need.one:
            base = f" (with the bastion's {need.base})" if need.base else ""
            checks.append(Check(label, "fail", f"quota {value:g} vCPUs < {need.one} that one {need.one_by or 'bastion'} "
                                f"cluster needs at min_workers{base}: its jobs end PROVISIONING_TIMEOUT; request an "
                                f"increase of Service Quotas ec2 {code} ({name} {market})"))  # fmt: skip
        elif value < need.all:
            checks.append(Check(label, "warn", f"quota {value:g} vCPUs < {need.all} for every pipeline's clusters at "
                                f"max_workers at once: some launches will wait or time out ({code})"))  # fmt: skip
        else:
            checks.append(Check(label, "ok", f"quota {value:g} vCPUs >= {need.all} for every cluster at once ({code})"))
    return checks


def install_check(status: str | None, bastion_id: str) -> Check:
    """The bastion instance's resource status in the stack (None: not found in it)."""
    if status is None:
        return Check("bastion install", "warn", f"{bastion_id} is not a resource of the stack: cannot tell its install")
    if status in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        return Check("bastion install", "ok", f"{bastion_id} {status}: its install signalled success")
    if status.endswith("IN_PROGRESS"):
        return Check("bastion install", "warn", f"{bastion_id} {status}: still installing (jobs cannot launch yet)")
    return Check("bastion install", "fail", f"{bastion_id} {status}: its install failed; see the instance's "
                 "/var/log/cloud-init-output.log (aws ssm start-session)")  # fmt: skip


def spot_role_check(uses_spot: bool, role_exists: bool | None) -> Check | None:
    """Spot workers need EC2's Spot service-linked role; the first spot launch in an account would
    create it, but neither the bastion's nor the nodes' role may create roles. None: no spot."""
    if not uses_spot:
        return None
    if role_exists:
        return Check("spot role", "ok", "AWSServiceRoleForEC2Spot exists")
    if role_exists is None:
        return Check("spot role", "warn", "could not read AWSServiceRoleForEC2Spot (iam:GetRole)")
    return Check("spot role", "fail", "AWSServiceRoleForEC2Spot is missing: spot workers cannot launch; create it "
                 "once: aws iam create-service-linked-role --aws-service-name spot.amazonaws.com")  # fmt: skip


def ebs_encryption_check(by_default: bool, key_id: str | None) -> Check:
    """EBS encryption by default with a customer-managed key: RunInstances then needs KMS grants
    on that key for the launching roles (bastion, head), which the stack does not give."""
    if not by_default:
        return Check("ebs encryption", "ok", "not on by default (each node volume is encrypted with the AWS key)")
    if key_id is None or key_id.endswith("alias/aws/ebs"):
        return Check("ebs encryption", "ok", "on by default with the AWS managed key")
    if ":key/" in key_id or key_id.startswith("key/"):  # a key id: AWS managed or not, its ARN does not say
        return Check("ebs encryption", "warn", f"on by default with {key_id}: if it is a customer-managed key, node "
                     "launches fail unless the bastion and node roles may use it (docs/deploy.md)")  # fmt: skip
    return Check("ebs encryption", "fail", f"on by default with {key_id}: node launches fail unless the bastion and node "
                 "roles may use that key (kms:CreateGrant, GenerateDataKeyWithoutPlaintext, Decrypt, DescribeKey); "
                 "the stack does not grant it (docs/deploy.md)")  # fmt: skip


def endpoint_check(region: str, vpc_id: str, services: Iterable[str], *, has_default_route: bool = False) -> Check:
    """The VPC's available endpoints (their service names) against VPC_ENDPOINT_SERVICES. A
    missing one fails where the bastion's subnet has no default route (nothing else reaches the
    service), and warns where it has one (a NAT or the user's own route may)."""
    have = set(services)
    missing = [s for s in VPC_ENDPOINT_SERVICES if f"com.amazonaws.{region}.{s}" not in have]
    if missing and has_default_route:
        return Check("vpc endpoints", "warn", f"{vpc_id} has no endpoint for {', '.join(missing)}: those services are "
                     "reached through the subnet's default route (NAT or yours) only")  # fmt: skip
    if missing:
        return Check("vpc endpoints", "fail", f"{vpc_id} has no endpoint for {', '.join(missing)} and the bastion's "
                     "subnet no default route: the bastion and the nodes cannot reach those services")  # fmt: skip
    return Check("vpc endpoints", "ok", f"{vpc_id}: all {len(VPC_ENDPOINT_SERVICES)} endpoints available")


# -- reading the account ---------------------------------------------------------------------------


def _quota_reader(client: Any) -> Callable[[str], float | None]:
    def read(code: str) -> float | None:
        for call in (client.get_service_quota, client.get_aws_default_service_quota):
            try:
                return float(call(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
            except Exception:  # noqa: BLE001 - NoSuchResource (no applied value), access denied: try the next
                continue
        return None

    return read


def stack_checks(session: Any, region: str, stack: str, bastion_id: str, pipelines: list[dict[str, Any]],
                 quota: Callable[[str], float | None] | None = None) -> list[Check]:  # fmt: skip
    """Quotas, the bastion's install, the VPC endpoints and the account settings of a deployed stack."""
    ec2 = session.create_client("ec2", region_name=region)
    checks: list[Check] = []
    bastion: dict[str, Any] = {}
    try:
        [reservation] = ec2.describe_instances(InstanceIds=[bastion_id])["Reservations"]
        bastion = reservation["Instances"][0]
    except Exception as err:  # noqa: BLE001 - each check below says what it could not read
        checks.append(Check("bastion instance", "warn", f"cannot describe {bastion_id}: {err}"))
    checks += _quota_checks(session, ec2, region, pipelines, bastion.get("InstanceType"), quota)
    try:
        pages = session.create_client("cloudformation", region_name=region).get_paginator(
            "list_stack_resources").paginate(StackName=stack)  # more than 100 resources: every page
        resources = [r for page in pages for r in page["StackResourceSummaries"]]
        status = next((r["ResourceStatus"] for r in resources if r.get("PhysicalResourceId") == bastion_id), None)
        checks.append(install_check(status, bastion_id))
    except Exception as err:  # noqa: BLE001
        checks.append(Check("bastion install", "warn", f"cannot read the stack's resources: {err}"))
    if bastion.get("VpcId"):
        try:
            checks.append(_endpoints(ec2, region, bastion))
        except Exception as err:  # noqa: BLE001
            checks.append(Check("vpc endpoints", "warn", f"cannot read the bastion's VPC endpoints: {err}"))
    try:
        by_default = bool(ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"])
        key_id = ec2.get_ebs_default_kms_key_id()["KmsKeyId"] if by_default else None
        checks.append(ebs_encryption_check(by_default, key_id))
    except Exception as err:  # noqa: BLE001
        checks.append(Check("ebs encryption", "warn", f"cannot read the EBS encryption defaults: {err}"))
    if any(p["cluster"].get("spot_workers") for p in pipelines):
        try:
            session.create_client("iam", region_name=region).get_role(RoleName=SPOT_ROLE)
            exists: bool | None = True
        except Exception as err:  # noqa: BLE001
            code = getattr(err, "response", {}).get("Error", {}).get("Code")
            exists = False if code == "NoSuchEntity" else None
        checks.append(spot_role_check(True, exists))  # type: ignore[arg-type]
    return checks


def _quota_checks(session: Any, ec2: Any, region: str, pipelines: list[dict[str, Any]], bastion_type: str | None,
                  quota: Callable[[str], float | None] | None) -> list[Check]:  # fmt: skip
    if not pipelines:
        return [Check("vcpu quota", "skip", "no pipelines to size")]
    types = sorted({p["cluster"][k] for p in pipelines for k in ("head_instance_type", "worker_instance_type")}
                   | ({bastion_type} if bastion_type else set()))  # fmt: skip
    try:
        described = ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]
    except Exception as err:  # noqa: BLE001 - InvalidInstanceType and the like: the answer of this check
        return [Check("instance types", "fail", f"{', '.join(types)}: {err}")]
    vcpus = {t["InstanceType"]: int(t["VCpuInfo"]["DefaultVCpus"]) for t in described}
    unknown = [t for t in types if t not in vcpus]
    if unknown:
        return [Check("instance types", "fail", f"not offered in {region}: {', '.join(unknown)}")]
    read = quota or _quota_reader(session.create_client("service-quotas", region_name=region))
    demand = vcpu_demand(pipelines, vcpus)
    family = quota_family(bastion_type) if bastion_type else None
    if family is not None:  # the bastion runs all the time, in the same quota as its family's clusters
        assert bastion_type is not None
        key = (family, "on-demand")
        seen, bastion_vcpus = demand.get(key, Demand()), vcpus[bastion_type]
        demand[key] = Demand(seen.one + bastion_vcpus, seen.one_by, seen.all + bastion_vcpus, bastion_vcpus)
    checks = vcpu_checks(demand, read)
    unchecked = [t for t in types if quota_family(t) is None]
    if unchecked:
        checks.append(Check("vcpu quota", "warn", f"no quota known here for {', '.join(unchecked)}: "
                            "check its family's vCPU quota in Service Quotas yourself"))  # fmt: skip
    return checks


def _endpoints(ec2: Any, region: str, bastion: dict[str, Any]) -> Check:
    vpc_id = bastion["VpcId"]
    pages = ec2.get_paginator("describe_vpc_endpoints").paginate(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "vpc-endpoint-state", "Values": ["available"]}])
    services = [e["ServiceName"] for p in pages for e in p["VpcEndpoints"]]
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [bastion["SubnetId"]]}])
    if not tables["RouteTables"]:  # the subnet uses its VPC's main route table
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                    {"Name": "association.main", "Values": ["true"]}])  # fmt: skip
    default_route = any(r.get("DestinationCidrBlock") == "0.0.0.0/0" and r.get("State", "active") == "active"
                        for t in tables["RouteTables"] for r in t.get("Routes", []))  # fmt: skip
    return endpoint_check(region, vpc_id, services, has_default_route=default_route)
