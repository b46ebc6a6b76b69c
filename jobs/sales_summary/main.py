"""Sales summary: a Ray Data job that aggregates sales CSVs listed in a manifest.

Run from this folder on a Ray cluster (the Jobs API sets RAY_ADDRESS)::

    python main.py --manifest s3://BUCKET/jobs/JOBID/manifest.json \
        --output s3://BUCKET/outputs/sales-summary/JOBID/

Reads exactly the object versions the manifest names (an entry with a ``version_id`` is read
at that version, however often its key was overwritten since; one without, at the key), writes
``{output}aggregates/`` (Parquet) and ``{output}summary.json``, and prints the summary JSON as
the last stdout line (Ray Data's execution stats, where the time went, go to stderr).

The shape to copy: ``read_csv`` -> pure batch functions on pyarrow tables (``transforms.py``,
vectorised ``pyarrow.compute``) -> a map-side combine per block -> a small reduce on the
driver -> ``write_parquet``.

Blocks: one read task and one block per input file. A CSV file cannot be split between read
tasks anyway, and Ray Data would otherwise cut each file's output into more blocks to reach its
default of 200; a read whose output is cut cannot be fused with the map stages, so every piece
would take a trip through the object store and a task of its own. With one block per file the
read and the three batch functions run as one fused task per file, each batch (the whole block,
``batch_size=None``) costs a few dozen Arrow kernel calls, and only the partial aggregate, a
dozen rows, leaves the task. Ray Data still caps a block at ``target_max_block_size`` (128 MiB),
so a single huge file becomes several batches, never one unbounded one; past 200 files a task
reads several. Files of a few to a few hundred MB suit this best: many files spread over the
cluster's CPUs. ``configure_ray_data`` says why Ray Data's per-operator reservation is off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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
# pyarrow parses a CSV file in chunks of this many bytes (its default is 1 MiB): fewer, larger
# chunks mean fewer Python round trips per file; Ray joins them into the file's block.
CSV_CHUNK_BYTES = 16 << 20
# Ray Data's own default number of read blocks: with more files than this, a task reads several.
READ_TASKS_MAX = 200

log = logging.getLogger("sales_summary")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``--manifest`` and ``--output`` (both s3:// URIs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="s3://bucket/key of the manifest JSON")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix/ for the results")
    return parser.parse_args(argv)


def aws_region() -> str:
    """The launcher gives every job AWS_REGION; without it, what botocore finds (its config file,
    then on EC2 the instance metadata service). Never a guessed default: S3 in the wrong region
    fails every read of the job (a real node has no AWS_* variables of its own)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:  # boto3 itself reads only the environment and the config file for the region
        import botocore.session
        from botocore.utils import IMDSRegionProvider

        session = botocore.session.get_session()
        region = session.get_config_variable("region") or IMDSRegionProvider(session).provide()
    if not region:
        raise RuntimeError("no AWS region: AWS_REGION is not set and botocore found none (config file, instance metadata)")
    return region


def s3_endpoint() -> str | None:
    """Where S3 is when it is not AWS's own endpoint: what boto3 itself would use (AWS_ENDPOINT_URL_S3,
    AWS_ENDPOINT_URL, or an endpoint_url in the AWS config file: an S3-compatible store, the local
    system's moto, the EC2 stand-in's); None on AWS."""
    import botocore.session
    from botocore.configprovider import ConfiguredEndpointProvider

    session = botocore.session.get_session()
    provider = ConfiguredEndpointProvider(session.full_config, session.get_scoped_config(), "s3")
    return provider.provide() or None


def _static_keys() -> dict[str, str]:
    """Keys given in the environment (the local system); otherwise none: the SDKs find the
    credentials themselves (on EC2 the instance profile's, from the instance metadata service)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    return {name.lower(): os.environ[name] for name in names if os.environ.get(name)}


def s3_client_kwargs() -> dict[str, Any]:
    """boto3 S3 client arguments, as `s3_filesystem` finds them: handed to the Ray workers with
    the filesystem (like the S3FileSystem's own settings)."""
    kwargs: dict[str, Any] = {"region_name": aws_region()}
    endpoint = s3_endpoint()
    if endpoint:
        kwargs["endpoint_url"] = endpoint
        kwargs.update(_static_keys())
    return kwargs


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem in the job's region, at `s3_endpoint()` when there is one."""
    region = aws_region()
    endpoint = s3_endpoint()
    if not endpoint:
        return pafs.S3FileSystem(region=region)
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"the S3 endpoint must look like http://host:port, got {endpoint!r}")
    keys = _static_keys()
    return pafs.S3FileSystem(
        endpoint_override=url.netloc,
        scheme=url.scheme,
        access_key=keys.get("aws_access_key_id"),
        secret_key=keys.get("aws_secret_access_key"),
        session_token=keys.get("aws_session_token"),
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


def pinned_versions(manifest: dict[str, Any]) -> dict[str, exact_versions.Pinned]:
    """The manifest's exact versions: pinned path -> (bucket, key, version id, size if recorded)."""
    bucket = manifest["bucket"]
    return {
        exact_versions.pinned_path(bucket, item["key"], item["version_id"]): exact_versions.Pinned(
            bucket, item["key"], item["version_id"], item["size"] if isinstance(item.get("size"), int) else None
        )
        for item in manifest.get("objects") or []
        if item.get("version_id")
    }


def input_filesystem(fs: pafs.FileSystem, manifest: dict[str, Any]) -> pafs.FileSystem:
    """What the inputs are read through: `fs`, pinned to the manifest's versions if it has any."""
    pinned = pinned_versions(manifest)
    if not pinned:
        return fs
    return pafs.PyFileSystem(exact_versions.ExactVersions(fs, pinned, s3_client_kwargs()))


def read_sales(paths: list[str], filesystem: pafs.FileSystem) -> ray.data.Dataset:
    """The sales CSVs as a dataset of string columns: one read task and one block per file, up
    to READ_TASKS_MAX tasks (see the module's docstring); only the columns the aggregates use
    are parsed."""
    return ray.data.read_csv(
        paths,
        filesystem=filesystem,
        # a key such as "incoming/day=1/x.csv" must not add a "day" column
        partitioning=None,
        override_num_blocks=min(len(paths), READ_TASKS_MAX),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=CSV_CHUNK_BYTES),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(transforms.USED_COLUMNS),
            column_types={name: pa.string() for name in transforms.USED_COLUMNS},
        ),
    )


def configure_ray_data() -> None:
    """Ray Data settings for this job's shape: one fused operator whose output is a dozen rows
    per block.

    Per-operator resource reservation balances CPUs and object store between operators, and
    there is one here. With it on, Ray Data (2.60) submits a task only while the operator's CPU
    budget has room, and counts a finished task as running until its next scheduling round: on
    a 2-CPU node one of the two slots is held by a task that has already ended, so about one
    file is read at a time (measured with a trace of the tasks: 0.9-1.0 tasks running on
    average, 1.8 with it off). Off, Ray Data queues the read tasks and Ray runs one per CPU.
    Leave it on for pipelines of several operators or with large blocks between them: there it
    is what bounds their object store usage.
    """
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False


def pipeline(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Clean, add revenue and combine each block into partial aggregates (pyarrow batches)."""
    return (
        ds.map_batches(transforms.clean, batch_format="pyarrow")
        .map_batches(transforms.add_revenue, batch_format="pyarrow")
        .map_batches(transforms.partial_aggregate, batch_format="pyarrow")
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

    configure_ray_data()
    started = time.perf_counter()
    partials = pipeline(read_sales(paths, input_filesystem(fs, manifest)))
    aggregates, rows_in, rows_rejected = transforms.final_aggregate(
        partials.iter_batches(batch_size=None, batch_format="pyarrow")
    )
    ray.data.from_arrow(aggregates).write_parquet(
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
    if log.isEnabledFor(logging.INFO):
        log.info("Ray Data stats of the read and the batch functions:\n%s", partials.stats())
    write_json(fs, f"{output}summary.json", summary)
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    ray.init()
    result = main(parse_args())
    ray.shutdown()
    print(json.dumps(result))
