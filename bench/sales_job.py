"""Benchmark the sales-summary job on a local Ray (2 CPUs) against a moto S3 server.

Usage: python bench/sales_job.py [ROWS] [--files N] [--seed S]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_DIR = REPO_ROOT / "jobs" / "sales_summary"
sys.path[:0] = [str(REPO_ROOT), str(JOB_DIR)]
# Read by Ray at import: keep this in-process Ray on 127.0.0.1 (see raylauncher.clusters.local).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import boto3  # noqa: E402
import ray  # noqa: E402

from raylauncher.local.sample_data import generate_sales_csv  # noqa: E402
from raylauncher.local.stack import MotoServer  # noqa: E402

BUCKET = "sales-bench"
JOB_ID = "bench"


def parse_args() -> argparse.Namespace:
    """Parse the row count, the number of input files and the seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int, nargs="?", default=1_000_000, help="rows in total")
    parser.add_argument("--files", type=int, default=4, help="CSV files to split the rows into")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first file")
    return parser.parse_args()


def load_job() -> ModuleType:
    """Import jobs/sales_summary/main.py under a unique module name."""
    spec = importlib.util.spec_from_file_location("sales_summary_main", JOB_DIR / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upload(endpoint: str, rows: int, files: int, seed: int) -> int:
    """Generate ``rows`` rows into ``files`` CSVs plus a manifest; return the bytes uploaded."""
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ["AWS_REGION"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=BUCKET)
    objects, total = [], 0
    for index in range(files):
        blob = generate_sales_csv(rows // files + (index < rows % files), seed + index)
        key = f"incoming/sales/bench part {index}.csv"
        s3.put_object(Bucket=BUCKET, Key=key, Body=blob)
        objects.append(
            {"key": key, "size": len(blob), "etag": None, "version_id": None, "sequencer": None}
        )
        total += len(blob)
    manifest = {"job_id": JOB_ID, "pipeline": "sales-summary", "bucket": BUCKET, "objects": objects}
    s3.put_object(Bucket=BUCKET, Key=f"jobs/{JOB_ID}/manifest.json", Body=json.dumps(manifest))
    return total


def bench() -> None:
    """Upload the data, run the job once and print rows, MB, seconds and rows/s."""
    args = parse_args()
    server = MotoServer().start()
    try:
        endpoint = server.endpoint_url
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_REGION="us-east-1",
            RAY_AUTH_MODE="disabled",
        )
        size = upload(endpoint, args.rows, args.files, args.seed)
        job = load_job()
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            summary = job.main(
                job.parse_args(
                    [
                        "--manifest",
                        f"s3://{BUCKET}/jobs/{JOB_ID}/manifest.json",
                        "--output",
                        f"s3://{BUCKET}/outputs/sales-summary/{JOB_ID}/",
                    ]
                )
            )
        finally:
            ray.shutdown()
    finally:
        server.stop()
    seconds = summary["seconds"]
    print(
        f"rows={summary['rows_in']} MB={size / 1e6:.1f} files={args.files} "
        f"seconds={seconds:.2f} rows/s={summary['rows_in'] / seconds:,.0f}"
    )


if __name__ == "__main__":
    bench()
