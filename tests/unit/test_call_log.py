"""Requests to moto named as IAM names them: action, resource ARN and request context."""

from __future__ import annotations

import pytest

from raylauncher.local.call_log import describe, s3_request, ssm_request

HOST = "10.254.1.1:41489"


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/data/jobs/j1/manifest.json", "", ("s3:GetObject", "arn:aws:s3:::data/jobs/j1/manifest.json", {})),
    ("HEAD", "/data/out/part-0.parquet", "", ("s3:GetObject", "arn:aws:s3:::data/out/part-0.parquet", {})),
    ("GET", "/data/in/a%20b.csv", "versionId=3", ("s3:GetObjectVersion", "arn:aws:s3:::data/in/a b.csv", {})),
    ("PUT", "/data/out/x", "", ("s3:PutObject", "arn:aws:s3:::data/out/x", {})),
    ("POST", "/data/out/x", "uploads", ("s3:PutObject", "arn:aws:s3:::data/out/x", {})),
    ("PUT", "/data/out/x", "partNumber=1&uploadId=u", ("s3:PutObject", "arn:aws:s3:::data/out/x", {})),
    ("DELETE", "/data/out/x", "uploadId=u", ("s3:AbortMultipartUpload", "arn:aws:s3:::data/out/x", {})),
    ("GET", "/data", "list-type=2&prefix=out%2F&delimiter=%2F",
     ("s3:ListBucket", "arn:aws:s3:::data", {"s3:prefix": "out/", "s3:delimiter": "/"})),
    ("GET", "/data", "list-type=2", ("s3:ListBucket", "arn:aws:s3:::data", {})),
    ("HEAD", "/data", "", ("s3:ListBucket", "arn:aws:s3:::data", {})),
    ("GET", "/data", "versions&prefix=in%2F", ("s3:ListBucketVersions", "arn:aws:s3:::data", {"s3:prefix": "in/"})),
])  # fmt: skip
def test_s3_rest_requests_map_to_iam_actions(method: str, path: str, query: str, expected: tuple) -> None:
    assert s3_request(method, HOST, path, query) == expected


def test_virtual_host_style_and_unknown_requests() -> None:
    assert s3_request("GET", "data.s3.eu-west-3.amazonaws.com", "/k", "")[:2] == ("s3:GetObject", "arn:aws:s3:::data/k")
    # a request the mapping does not know is named so a test sees it, never guessed
    assert s3_request("PUT", HOST, "/data/k", "tagging")[0].startswith("s3:<unmapped PUT")
    # a PUT that copies, tags or sets an ACL needs more than s3:PutObject on AWS: never judged as one
    for header in ("x-amz-copy-source", "x-amz-tagging", "x-amz-acl"):
        assert s3_request("PUT", HOST, "/data/k", "", {header: "x"})[0].startswith("s3:<unmapped PUT object with")


def test_keys_are_decoded_once_from_the_path_as_sent() -> None:
    # Given a key with a literal percent sign and non-ASCII letters, as the SDKs encode it
    environ = {"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=k/20261207/eu-west-3/s3/aws4_request, Signature=x",
               "REQUEST_METHOD": "GET", "HTTP_HOST": HOST, "RAW_URI": "/data/in/a%2541%20r%C3%A9gion.csv",
               "PATH_INFO": "/data/in/a%41 r\xc3\xa9gion.csv", "QUERY_STRING": ""}  # fmt: skip
    request = describe(environ, b"")
    # Then the resource names the key exactly as stored
    assert request is not None and request.resource == "arn:aws:s3:::data/in/a%41 région.csv"


def test_ssm_requests_name_the_parameter_in_the_signed_region() -> None:
    body = b'{"Name": "/raylauncher/ray-auth/j1/j1", "WithDecryption": true}'
    assert ssm_request("AmazonSSM.GetParameter", body, "eu-west-3") == (
        "ssm:GetParameter", "arn:aws:ssm:eu-west-3:123456789012:parameter/raylauncher/ray-auth/j1/j1", {})
    environ = {"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=local-node-role/20261207/eu-west-3/ssm/aws4_request, "
               "SignedHeaders=host, Signature=x", "HTTP_X_AMZ_TARGET": "AmazonSSM.GetParameter", "REMOTE_ADDR": "127.0.0.2"}
    request = describe(environ, body)
    assert request is not None and (request.key_id, request.action, request.source) == (
        "local-node-role", "ssm:GetParameter", "127.0.0.2")
    assert describe({"HTTP_AUTHORIZATION": ""}, b"") is None


class Facts:
    def tags(self, region: str, resource_id: str) -> dict[str, str]:
        return {"ray-cluster-name": "rl-j1"} if resource_id == "i-0aaa" else {}

    def image_owner(self, region: str, image_id: str) -> str | None:
        return "099720109477"

    def profile_role_arn(self, profile_arn: str) -> str | None:
        return "arn:aws:iam::123456789012:role/nodes"


def test_one_ec2_call_is_one_authorization_per_resource_as_iam_makes_them() -> None:
    from raylauncher.local.call_log import ec2_requests

    # Given a RunInstances as Ray's launcher sends it (tags for instance and volume, a profile)
    params = {
        "ImageId": ["ami-1"], "SubnetId": ["subnet-1"], "SecurityGroupId.1": ["sg-1"], "KeyName": ["ray-autoscaler_x"],
        "IamInstanceProfile.Arn": ["arn:aws:iam::123456789012:instance-profile/nodes"],
        "TagSpecification.1.ResourceType": ["instance"], "TagSpecification.1.Tag.1.Key": ["ray-cluster-name"],
        "TagSpecification.1.Tag.1.Value": ["rl-j1"], "TagSpecification.2.ResourceType": ["volume"],
        "TagSpecification.2.Tag.1.Key": ["ray-cluster-name"], "TagSpecification.2.Tag.1.Value": ["rl-j1"],
    }  # fmt: skip
    run = {r: c for a, r, c in ec2_requests("RunInstances", params, "eu-west-3", Facts()) if a != "ec2:CreateTags"}
    arn = "arn:aws:ec2:eu-west-3:123456789012:"
    # Then each resource is its own request, the created ones with the request's tags
    assert run[arn + "instance/*"] == {"aws:RequestTag/ray-cluster-name": "rl-j1"}
    assert run[arn + "volume/*"] == {"aws:RequestTag/ray-cluster-name": "rl-j1"}
    assert {arn + "subnet/subnet-1", arn + "security-group/sg-1", arn + "key-pair/ray-autoscaler_x",
            arn + "network-interface/*"} <= set(run)  # fmt: skip
    # and tagging at launch is CreateTags with ec2:CreateAction on each tagged resource type
    tagging = [(r, c) for a, r, c in ec2_requests("RunInstances", params, "eu-west-3", Facts()) if a == "ec2:CreateTags"]
    assert sorted(r for r, _ in tagging) == [arn + "instance/*", arn + "volume/*"]
    assert all(c["ec2:CreateAction"] == "RunInstances" and c["aws:RequestTag/ray-cluster-name"] == "rl-j1" for _, c in tagging)
    assert run["arn:aws:ec2:eu-west-3::image/ami-1"] == {"ec2:Owner": "099720109477"}
    assert run["arn:aws:iam::123456789012:role/nodes"] == {"iam:PassedToService": "ec2.amazonaws.com"}
    # And a terminate carries each instance's own tags as they were
    end = ec2_requests("TerminateInstances", {"InstanceId.1": ["i-0aaa"], "InstanceId.2": ["i-0bbb"]}, "eu-west-3", Facts())
    assert end == [("ec2:TerminateInstances", arn + "instance/i-0aaa", {"aws:ResourceTag/ray-cluster-name": "rl-j1"}),
                   ("ec2:TerminateInstances", arn + "instance/i-0bbb", {})]  # fmt: skip
    assert ec2_requests("ModifyInstanceAttribute", {}, "eu-west-3", Facts())[0][0].startswith("ec2:<unmapped")
