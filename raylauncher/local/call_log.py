"""What moto server was asked, as IAM would judge it: each S3 and SSM request made to the local
system's moto as (caller, access key id, IAM action, resource ARN, request context, status).

The tests hold these against the synthesized template's policies with an IAM evaluator
(tests/iam_eval.py): every call a role made must be allowed to that role, and a GET/HEAD that
got 404 must be one S3 would answer 404 (not 403) to that role. moto itself authorizes nothing.

S3 is REST (the action comes from method, path and query: path-style, as botocore and pyarrow
address an IP endpoint, or virtual-host); SSM is JSON (`X-Amz-Target`, the parameter name in the
body); EC2 is a query form, and one EC2 call is several authorizations, as IAM makes them:
RunInstances is one per resource it touches (the instance and volume with the request's tags,
the subnet, security groups, network interface, key pair, image with its owner, spot request,
and iam:PassRole of the instance profile's role); CreateTags and TerminateInstances one per
instance, with the instance's tags as they were (`aws:ResourceTag/...`). Only the actions the
system uses are mapped; anything else is recorded as `<service>:<unmapped ...>` so a test sees
it rather than skipping it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The account moto answers as.
ACCOUNT = "123456789012"
CREDENTIAL = re.compile(r"Credential=([^/]+)/[0-9]{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")


@dataclass(frozen=True)
class AwsRequest:
    source: str  # the caller's address as moto saw it
    key_id: str
    action: str  # "s3:GetObject"
    resource: str  # its ARN
    context: dict[str, str] = field(default_factory=dict)  # request condition keys (s3:prefix ...)
    status: int = 0  # moto's answer


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


#: Request headers that make a PUT more than s3:PutObject (CopyObject, tagging, ACL): named
#: unmapped so a test sees them, never judged as a plain PutObject (kinder than AWS).
_PUT_EXTRAS = ("x-amz-copy-source", "x-amz-tagging", "x-amz-acl", "x-amz-grant-full-control", "x-amz-grant-read")


def s3_request(method: str, host: str, path: str, query: str, headers: Mapping[str, str] | None = None) -> tuple[str, str, dict[str, str]]:
    """(action, resource ARN, context) of one S3 REST request. `path` as sent (percent-encoded);
    `headers` lower-case names."""
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    extras = sorted(h for h in _PUT_EXTRAS if h in (headers or {}))
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    parts = urllib.parse.unquote(path).lstrip("/")
    if not _is_ip(hostname) and hostname.count(".") >= 1 and not hostname.startswith(("s3.", "localhost")):
        bucket, key = hostname.split(".", 1)[0], parts  # virtual-host style
    else:
        bucket, _, key = parts.partition("/")
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if not key:
        if method in ("GET", "HEAD") and "versions" in params:
            return "s3:ListBucketVersions", bucket_arn, _list_context(params)
        if method == "GET" and "location" in params:
            return "s3:GetBucketLocation", bucket_arn, {}
        if method == "GET" and "encryption" in params:
            return "s3:GetEncryptionConfiguration", bucket_arn, {}
        if method in ("GET", "HEAD") and not (set(params) - {"list-type", "prefix", "delimiter", "max-keys",
                                                             "continuation-token", "start-after", "encoding-type",
                                                             "fetch-owner", "marker"}):  # fmt: skip
            return "s3:ListBucket", bucket_arn, _list_context(params) if method == "GET" else {}
        return f"s3:<unmapped {method} bucket ?{'&'.join(sorted(params))}>", bucket_arn, {}
    object_arn = f"{bucket_arn}/{key}"
    versioned = "versionId" in params
    if method in ("GET", "HEAD") and not (set(params) - {"versionId", "partNumber", "response-content-type"}):
        return ("s3:GetObjectVersion" if versioned else "s3:GetObject"), object_arn, {}
    if method == "PUT" and extras:
        return f"s3:<unmapped PUT object with {' '.join(extras)}>", object_arn, {}
    if method == "PUT" and not (set(params) - {"uploadId", "partNumber"}):
        return "s3:PutObject", object_arn, {}
    if method == "POST" and ("uploads" in params or "uploadId" in params):
        return "s3:PutObject", object_arn, {}
    if method == "DELETE" and "uploadId" in params:
        return "s3:AbortMultipartUpload", object_arn, {}
    if method == "DELETE" and not (set(params) - {"versionId"}):
        return ("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject"), object_arn, {}
    return f"s3:<unmapped {method} object ?{'&'.join(sorted(params))}>", object_arn, {}


def _list_context(params: dict[str, list[str]]) -> dict[str, str]:
    """A listing's condition keys: present only when the request carries them (as on AWS)."""
    return {f"s3:{name}": params[name][0] for name in ("prefix", "delimiter", "max-keys") if name in params}


def ssm_request(target: str, body: bytes, region: str) -> tuple[str, str, dict[str, str]]:
    """(action, resource ARN, context) of one SSM JSON request."""
    action = "ssm:" + target.rsplit(".", 1)[-1]
    try:
        payload: dict[str, Any] = json.loads(body or b"{}")
    except ValueError:
        payload = {}
    name = payload.get("Name") or payload.get("Path")
    if isinstance(name, str) and name:
        return action, f"arn:aws:ssm:{region}:{ACCOUNT}:parameter/{name.lstrip('/')}", {}
    names = payload.get("Names")
    if isinstance(names, list) and len(names) == 1:
        return action, f"arn:aws:ssm:{region}:{ACCOUNT}:parameter/{str(names[0]).lstrip('/')}", {}
    return action, "*", {}


class Ec2Facts(Protocol):
    """What IAM knows about EC2 resources when it decides (moto's state, in the local system)."""

    def tags(self, region: str, resource_id: str) -> dict[str, str]: ...

    def image_owner(self, region: str, image_id: str) -> str | None: ...

    def profile_role_arn(self, profile_arn: str) -> str | None: ...


def _numbered(params: dict[str, list[str]], prefix: str) -> list[str]:
    """Values of Prefix.1, Prefix.2, ... (EC2's query lists)."""
    found = [(int(k[len(prefix) + 1 :]), v[0]) for k, v in params.items()
             if k.startswith(prefix + ".") and k[len(prefix) + 1 :].isdigit()]  # fmt: skip
    return [v for _, v in sorted(found)]


def _tag_specifications(params: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """ResourceType -> its tags, from TagSpecification.N.*."""
    specs: dict[str, dict[str, str]] = {}
    for n in range(1, 20):
        kind = params.get(f"TagSpecification.{n}.ResourceType")
        if not kind:
            break
        specs[kind[0]] = _tags(params, f"TagSpecification.{n}.Tag")
    return specs


def _tags(params: dict[str, list[str]], prefix: str) -> dict[str, str]:
    """{key: value} of Prefix.M.Key / Prefix.M.Value."""
    tags = {}
    for m in range(1, 100):
        key = params.get(f"{prefix}.{m}.Key")
        if not key:
            break
        tags[key[0]] = params.get(f"{prefix}.{m}.Value", [""])[0]
    return tags


def ec2_requests(action: str, params: dict[str, list[str]], region: str, facts: Ec2Facts) -> list[tuple[str, str, dict[str, str]]]:
    """The authorizations (action, resource ARN, context) one EC2 call makes."""
    arn = f"arn:aws:ec2:{region}:{ACCOUNT}:"
    if action.startswith("Describe"):
        return [(f"ec2:{action}", "*", {})]
    if action == "RunInstances":
        specs = _tag_specifications(params)
        request_tags = lambda kind: {f"aws:RequestTag/{k}": v for k, v in specs.get(kind, {}).items()}  # noqa: E731
        found = [("ec2:RunInstances", arn + "instance/*", request_tags("instance")),
                 ("ec2:RunInstances", arn + "volume/*", request_tags("volume")),
                 ("ec2:RunInstances", arn + "network-interface/*", {})]  # fmt: skip
        subnets = params.get("SubnetId", []) + params.get("NetworkInterface.1.SubnetId", [])
        groups = _numbered(params, "SecurityGroupId") + _numbered(params, "NetworkInterface.1.SecurityGroupId")
        found += [("ec2:RunInstances", arn + f"subnet/{s}", {}) for s in subnets]
        found += [("ec2:RunInstances", arn + f"security-group/{g}", {}) for g in groups]
        if params.get("KeyName"):
            found.append(("ec2:RunInstances", arn + f"key-pair/{params['KeyName'][0]}", {}))
        for image in params.get("ImageId", []):
            owner = facts.image_owner(region, image)
            found.append(("ec2:RunInstances", f"arn:aws:ec2:{region}::image/{image}", {"ec2:Owner": owner} if owner else {}))
        # tagging at launch is also ec2:CreateTags on each tagged resource, with ec2:CreateAction
        found += [("ec2:CreateTags", arn + f"{kind}/*", {"ec2:CreateAction": "RunInstances", **request_tags(kind)})
                  for kind in specs]  # fmt: skip
        if params.get("InstanceMarketOptions.MarketType", [""])[0] == "spot":
            found.append(("ec2:RunInstances", arn + "spot-instances-request/*", request_tags("spot-instances-request")))
        for profile in params.get("IamInstanceProfile.Arn", []):
            role = facts.profile_role_arn(profile) or profile
            found.append(("iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"}))
        return found
    if action in ("CreateTags", "TerminateInstances"):
        ids = _numbered(params, "ResourceId" if action == "CreateTags" else "InstanceId")
        tags = {f"aws:RequestTag/{k}": v for k, v in _tags(params, "Tag").items()} if action == "CreateTags" else {}
        found = []
        for resource_id in ids:
            kind = "instance" if resource_id.startswith("i-") else "volume" if resource_id.startswith("vol-") else "resource"
            current = {f"aws:ResourceTag/{k}": v for k, v in facts.tags(region, resource_id).items()}
            found.append((f"ec2:{action}", arn + f"{kind}/{resource_id}", {**current, **tags}))
        return found
    if action in ("CreateKeyPair", "ImportKeyPair", "DeleteKeyPair"):
        return [(f"ec2:{action}", arn + f"key-pair/{params.get('KeyName', ['*'])[0]}", {})]
    return [(f"ec2:<unmapped {action}>", "*", {})]


def describe(environ: dict[str, Any], body: bytes) -> AwsRequest | None:
    """The S3 or SSM request of one WSGI environ (None: another service, or unsigned)."""
    match = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if not match:
        return None
    key_id, region, service = match.groups()
    source = environ.get("REMOTE_ADDR", "")
    if service == "s3":
        # the path as sent (werkzeug's PATH_INFO is already decoded, as latin-1)
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or urllib.parse.quote(
            environ.get("PATH_INFO", "").encode("latin-1").decode(errors="replace"))
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        action, resource, context = s3_request(environ.get("REQUEST_METHOD", ""), environ.get("HTTP_HOST", ""),
                                               raw.split("?", 1)[0], environ.get("QUERY_STRING", ""), headers)  # fmt: skip
        return AwsRequest(source, key_id, action, resource, context)
    if service == "ssm":
        action, resource, context = ssm_request(environ.get("HTTP_X_AMZ_TARGET", ""), body, region)
        return AwsRequest(source, key_id, action, resource, context)
    return None
