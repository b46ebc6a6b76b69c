"""Sales summary: a Ray Data job that aggregates sales CSVs listed in a manifest.

Run from this folder on a Ray cluster (the Jobs API sets RAY_ADDRESS)::

    python main.py --manifest s3://BUCKET/jobs/JOBID/manifest.json \
        --output s3://BUCKET/outputs/sales-summary/JOBID/

Reads exactly the object versions the manifest names (an entry with a ``version_id`` is read
at that version, however often its key was overwritten since; one without, at the key), writes
``{output}aggregates/`` (Parquet) and ``{output}summary.json``, and prints the summary JSON as
the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import ray
import ray.cloudpickle
import ray.data

import exact_versions
import transforms

# Ship these modules to Ray workers by value: workers need not have this folder on sys.path.
ray.cloudpickle.register_pickle_by_value(transforms)
ray.cloudpickle.register_pickle_by_value(exact_versions)

S3_SCHEME = "s3://"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``--manifest`` and ``--output`` (both s3:// URIs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="s3://bucket/key of the manifest JSON")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix/ for the results")
    return parser.parse_args(argv)


def aws_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_client_kwargs() -> dict[str, Any]:
    """boto3 S3 client arguments from the environment, as `s3_filesystem` reads it: handed to
    the Ray workers with the filesystem (like the S3FileSystem's own settings)."""
    kwargs: dict[str, Any] = {"region_name": aws_region()}
    if os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(name):
                kwargs[name.lower()] = os.environ[name]
    return kwargs


def s3_filesystem() -> pafs.S3FileSystem:
    """Build an S3 filesystem from the environment (AWS_ENDPOINT_URL for a local S3)."""
    region = aws_region()
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return pafs.S3FileSystem(region=region)
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"AWS_ENDPOINT_URL must look like http://host:port, got {endpoint!r}")
    return pafs.S3FileSystem(
        endpoint_override=url.netloc,
        scheme=url.scheme,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        region=region,
    )


def bucket_path(uri: str) -> str:
    """Turn ``s3://bucket/key`` into the bucket-relative path ``bucket/key``."""
    if not uri.startswith(S3_SCHEME):
        raise ValueError(f"expected an s3:// URI, got {uri!r}")
    return uri[len(S3_SCHEME) :]


def read_manifest(fs: pafs.FileSystem, uri: str) -> dict[str, Any]:
    """Read the job manifest JSON."""
    with fs.open_input_stream(bucket_path(uri)) as stream:
        return json.loads(stream.read())


def input_paths(manifest: dict[str, Any]) -> list[str]:
    """Return the bucket-relative paths of the manifest's objects (``bucket/key``, or
    ``bucket/key?versionId=V`` for an exact version); raise if there are none."""
    objects = manifest.get("objects") or []
    if not objects:
        raise ValueError(f"manifest of job {manifest.get('job_id')!r} lists no input objects")
    return [
        exact_versions.pinned_path(manifest["bucket"], item["key"], item["version_id"])
        if item.get("version_id")
        else f"{manifest['bucket']}/{item['key']}"
        for item in objects
    ]


def pinned_versions(manifest: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """The manifest's exact versions: pinned path -> (bucket, key, version id)."""
    bucket = manifest["bucket"]
    return {
        exact_versions.pinned_path(bucket, item["key"], item["version_id"]): (bucket, item["key"], item["version_id"])
        for item in manifest.get("objects") or []
        if item.get("version_id")
    }


def input_filesystem(fs: pafs.FileSystem, manifest: dict[str, Any]) -> pafs.FileSystem:
    """What the inputs are read through: `fs`, pinned to the manifest's versions if it has any."""
    pinned = pinned_versions(manifest)
    if not pinned:
        return fs
    return pafs.PyFileSystem(exact_versions.ExactVersions(fs, pinned, s3_client_kwargs()))


def pipeline(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Clean, add revenue and combine each block into partial aggregates."""
    return (
        ds.map_batches(transforms.clean, batch_format="pandas")
        .map_batches(transforms.add_revenue, batch_format="pandas")
        .map_batches(transforms.partial_aggregate, batch_format="pandas")
    )


def write_json(fs: pafs.FileSystem, uri: str, document: dict[str, Any]) -> None:
    """Write a JSON document to an s3:// URI."""
    with fs.open_output_stream(bucket_path(uri)) as stream:
        stream.write(json.dumps(document, indent=2).encode("utf-8"))


def nodes_used() -> list[str] | None:
    """The addresses of the nodes this job ran on: its driver's and its tasks' (Ray's state API).
    None when the state API cannot tell (it is informational, never a reason to fail)."""
    try:
        from ray.util.state import list_tasks

        job_id = ray.get_runtime_context().get_job_id()
        tasks = list_tasks(filters=[("job_id", "=", job_id)], limit=10_000, raise_on_missing_output=False)
        node_ids = {t.node_id for t in tasks if t.node_id} | {ray.get_runtime_context().get_node_id()}
        return sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] in node_ids)
    except Exception:  # noqa: BLE001 - a summary without it is still a summary
        return None


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the job on the connected Ray cluster and return the summary it wrote."""
    fs = s3_filesystem()
    manifest = read_manifest(fs, args.manifest)
    paths = input_paths(manifest)
    output = args.output if args.output.endswith("/") else f"{args.output}/"
    aggregates_uri = f"{output}aggregates/"
    convert_options = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in transforms.INPUT_COLUMNS}
    )

    started = time.perf_counter()
    # partitioning=None: a key such as "incoming/day=1/x.csv" must not add a "day" column.
    ds = ray.data.read_csv(
        paths,
        filesystem=input_filesystem(fs, manifest),
        partitioning=None,
        convert_options=convert_options,
    )
    partials = pipeline(ds).to_pandas()
    aggregates, rows_in, rows_rejected = transforms.final_aggregate(partials)
    ray.data.from_pandas(aggregates).write_parquet(
        bucket_path(aggregates_uri),
        filesystem=fs,
        try_create_dir=False,
        mode=ray.data.SaveMode.OVERWRITE,
    )
    seconds = time.perf_counter() - started

    summary = {
        "job_id": manifest["job_id"],
        "rows_in": rows_in,
        "rows_rejected": rows_rejected,
        "rows_valid": rows_in - rows_rejected,
        "rows_out": len(aggregates),
        "seconds": round(seconds, 3),
        "output": aggregates_uri,
        "nodes_used": nodes_used(),
    }
    write_json(fs, f"{output}summary.json", summary)
    return summary


if __name__ == "__main__":
    ray.init()
    result = main(parse_args())
    ray.shutdown()
    print(json.dumps(result))
