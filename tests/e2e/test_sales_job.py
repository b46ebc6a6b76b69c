"""End-to-end test of the sales-summary Ray job: moto S3 server + a real local Ray."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from raylauncher.clusters.local import free_port
from raylauncher.local.sample_data import (
    compare_aggregates,
    expected_aggregates,
    generate_sales_csv,
)
from raylauncher.local.stack import MotoServer

# pytest-xdist: one worker runs these tests (they share one local Ray for the module).
pytestmark = pytest.mark.xdist_group("sales-job")

JOB_DIR = Path(__file__).resolve().parents[2] / "jobs" / "sales_summary"
BUCKET = "sales-e2e"
REGION = "us-east-1"
# Keys with a space, a '+' and non-ASCII characters, as they arrive from real uploads.
INPUT_FILES = {
    "incoming/sales/daily report.csv": (3_000, 11),
    "incoming/sales/ventes été+extra.csv": (2_000, 12),
    "incoming/sales/2024-01-03.csv": (1_500, 13),
}


def wait_for_state_api(timeout_s: float = 120) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            list_nodes(timeout=10)
            return
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def sales_s3_endpoint() -> Iterator[str]:
    """Run a moto S3 server on 127.0.0.1 and yield its endpoint URL."""
    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture(scope="module")
def sales_ray() -> Iterator[None]:
    """Start a local two-CPU Ray without token auth; shut it down afterwards. With its dashboard,
    as on every cluster the product launches: Ray's state API (the summary's nodes_used) needs it."""
    # Its own temp dir and dashboard port: other workers' clusters run beside it (pytest-xdist).
    temp_dir = tempfile.mkdtemp(prefix="rlt-", dir="/tmp")  # short: Ray's socket paths live under it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                 _temp_dir=temp_dir)  # fmt: skip
        # As the Jobs API sets it for an entrypoint: without it Ray's state API (and a bare
        # ray.init) looks for clusters on the machine and finds other workers' too.
        patch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        try:
            wait_for_state_api()  # as the backends wait for the Jobs API before submitting
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def sales_s3(sales_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the job's AWS settings at moto, create the bucket and return a boto3 client."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", sales_s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    client = boto3.client("s3", endpoint_url=sales_s3_endpoint, region_name=REGION)
    if BUCKET not in {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def sales_job(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import jobs/sales_summary/main.py the way it runs: its folder on sys.path."""
    monkeypatch.syspath_prepend(str(JOB_DIR))
    spec = importlib.util.spec_from_file_location("sales_summary_main", JOB_DIR / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_region_is_the_environments_or_botocores_never_a_guess(
    sales_job: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a process with no region in its environment (a real node has no AWS_* variables), no
    # config file, and no instance metadata to ask (disabled: nothing leaves this machine)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "aws-config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Then the job refuses to guess (it used to read S3 in us-east-1, whatever the bucket's region)
    with pytest.raises(RuntimeError, match="no AWS region"):
        sales_job.aws_region()
    # When botocore finds one (here its config file; on EC2 the instance metadata), Then that one
    config.write_text("[default]\nregion = ap-northeast-2\n")
    assert sales_job.aws_region() == "ap-northeast-2"
    # And the launcher's AWS_REGION comes first
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert sales_job.aws_region() == "eu-west-1"


def put_manifest(s3: Any, job_id: str, objects: list[dict[str, Any]]) -> str:
    """Write a job manifest to the bucket and return its s3:// URI."""
    key = f"jobs/{job_id}/manifest.json"
    manifest = {"job_id": job_id, "pipeline": "sales-summary", "bucket": BUCKET, "objects": objects}
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(manifest).encode("utf-8"))
    return f"s3://{BUCKET}/{key}"


def upload_inputs(s3: Any) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Upload the generated CSVs; return their contents and manifest entries."""
    blobs, objects = [], []
    for key, (rows, seed) in INPUT_FILES.items():
        blob = generate_sales_csv(rows, seed)
        response = s3.put_object(Bucket=BUCKET, Key=key, Body=blob)
        blobs.append(blob)
        objects.append(
            {
                "key": key,
                "size": len(blob),
                "etag": response["ETag"].strip('"'),
                "version_id": None,
                "sequencer": None,
            }
        )
    return blobs, objects


def parquet_keys(s3: Any, prefix: str) -> list[str]:
    """List the Parquet objects under a prefix."""
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return [item["Key"] for item in listing if item["Key"].endswith(".parquet")]


def read_parquet(s3: Any, keys: list[str]) -> pd.DataFrame:
    """Read Parquet objects with boto3 + pyarrow into one DataFrame."""
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        for key in keys
    ]
    return pa.concat_tables(tables).to_pandas()


def run_job(job: ModuleType, manifest_uri: str, output_uri: str) -> dict[str, Any]:
    """Run the job's main the way its command line does."""
    return job.main(job.parse_args(["--manifest", manifest_uri, "--output", output_uri]))


@pytest.mark.usefixtures("sales_ray")
def test_job_aggregates_manifest_objects_to_parquet_and_summary(
    sales_s3: Any, sales_job: ModuleType
) -> None:
    # Given three generated CSVs (keys with a space, '+' and unicode) and their manifest
    blobs, objects = upload_inputs(sales_s3)
    manifest_uri = put_manifest(sales_s3, "job-e2e-1", objects)
    output_uri = f"s3://{BUCKET}/outputs/sales-summary/job-e2e-1/"
    expected, rows_in, rows_rejected = expected_aggregates(blobs)

    # When the job runs on the local Ray cluster
    summary = run_job(sales_job, manifest_uri, output_uri)

    # Then the Parquet aggregates equal the independent reference computation
    keys = parquet_keys(sales_s3, "outputs/sales-summary/job-e2e-1/aggregates/")
    assert keys, "the job wrote no Parquet file"
    actual = read_parquet(sales_s3, keys)
    assert compare_aggregates(actual, expected) == []
    assert len(expected) == 8

    # And summary.json holds the counts, the output location and a timing
    stored = json.loads(
        sales_s3.get_object(Bucket=BUCKET, Key="outputs/sales-summary/job-e2e-1/summary.json")[
            "Body"
        ].read()
    )
    assert stored == summary
    assert rows_in == 6_500 and rows_rejected > 0
    assert {key: value for key, value in summary.items() if key not in ("seconds", "nodes_used")} == {
        "job_id": "job-e2e-1",
        "rows_in": rows_in,
        "rows_rejected": rows_rejected,
        "rows_valid": rows_in - rows_rejected,
        "rows_out": len(expected),
        "output": f"{output_uri}aggregates/",
    }
    assert summary["seconds"] > 0
    assert summary["nodes_used"] and len(summary["nodes_used"]) == 1, summary  # one local node


@pytest.mark.usefixtures("sales_ray")
def test_rerunning_the_job_replaces_its_aggregates(sales_s3: Any, sales_job: ModuleType) -> None:
    # Given a job that already ran once
    blobs, objects = upload_inputs(sales_s3)
    manifest_uri = put_manifest(sales_s3, "job-e2e-rerun", objects)
    output_uri = f"s3://{BUCKET}/outputs/sales-summary/job-e2e-rerun"
    run_job(sales_job, manifest_uri, output_uri)

    # When it runs again (e.g. a retry), with an output URI lacking the trailing slash
    summary = run_job(sales_job, manifest_uri, output_uri)

    # Then the aggregates are replaced, not appended to
    keys = parquet_keys(sales_s3, "outputs/sales-summary/job-e2e-rerun/aggregates/")
    assert len(keys) == 1
    assert compare_aggregates(read_parquet(sales_s3, keys), expected_aggregates(blobs)[0]) == []
    assert summary["output"] == f"{output_uri}/aggregates/"


def test_empty_manifest_fails_the_job(sales_s3: Any, sales_job: ModuleType) -> None:
    # Given a manifest that lists no objects
    manifest_uri = put_manifest(sales_s3, "job-e2e-empty", [])

    # When the job runs
    # Then it fails with a clear ValueError and writes nothing
    with pytest.raises(ValueError, match="lists no input objects"):
        run_job(sales_job, manifest_uri, f"s3://{BUCKET}/outputs/sales-summary/job-e2e-empty/")
    listing = sales_s3.list_objects_v2(Bucket=BUCKET, Prefix="outputs/sales-summary/job-e2e-empty/")
    assert listing.get("KeyCount") == 0


VERSIONED_BUCKET = "sales-e2e-versioned"


@pytest.mark.usefixtures("sales_ray")
def test_job_reads_exactly_the_versions_its_manifest_names(sales_s3: Any, sales_job: ModuleType) -> None:
    # Given a versioned bucket: every input uploaded, one key uploaded a second time, and a
    # manifest naming all four versions (both versions of that key)
    sales_s3.create_bucket(Bucket=VERSIONED_BUCKET)
    sales_s3.put_bucket_versioning(Bucket=VERSIONED_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    uploads = [(key, generate_sales_csv(rows, seed)) for key, (rows, seed) in INPUT_FILES.items()]
    uploads.append(("incoming/sales/daily report.csv", generate_sales_csv(1_000, 21)))
    objects = []
    for key, blob in uploads:
        put = sales_s3.put_object(Bucket=VERSIONED_BUCKET, Key=key, Body=blob)
        objects.append({"key": key, "size": len(blob), "etag": put["ETag"].strip('"'), "version_id": put["VersionId"], "sequencer": None})
    manifest = {"job_id": "job-e2e-versions", "pipeline": "sales-summary", "bucket": VERSIONED_BUCKET, "objects": objects}
    sales_s3.put_object(Bucket=VERSIONED_BUCKET, Key="jobs/job-e2e-versions/manifest.json", Body=json.dumps(manifest).encode())
    expected, rows_in, _ = expected_aggregates([blob for _, blob in uploads])
    # and, after the job was recorded, every key overwritten with other data
    for key, (rows, seed) in INPUT_FILES.items():
        sales_s3.put_object(Bucket=VERSIONED_BUCKET, Key=key, Body=generate_sales_csv(rows, seed + 100))

    # When the job runs
    output_uri = f"s3://{VERSIONED_BUCKET}/outputs/sales-summary/job-e2e-versions/"
    summary = run_job(sales_job, f"s3://{VERSIONED_BUCKET}/jobs/job-e2e-versions/manifest.json", output_uri)

    # Then it computed from the versions its manifest names, both versions of the re-uploaded key
    # included, and not from what the keys hold now
    listing = sales_s3.list_objects_v2(Bucket=VERSIONED_BUCKET, Prefix="outputs/sales-summary/job-e2e-versions/aggregates/")
    keys = [item["Key"] for item in listing.get("Contents", []) if item["Key"].endswith(".parquet")]
    tables = [pq.read_table(io.BytesIO(sales_s3.get_object(Bucket=VERSIONED_BUCKET, Key=k)["Body"].read())) for k in keys]
    assert compare_aggregates(pa.concat_tables(tables).to_pandas(), expected) == []
    assert summary["rows_in"] == rows_in == 7_500
