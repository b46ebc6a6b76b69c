"""`make demo`: drop CSV files into the local bucket and watch the job run end to end.

Exits 0 only if every job SUCCEEDED and its Parquet aggregates equal an independent pandas
computation over exactly the objects in its manifest. With `--backend ec2` the job runs on
the EC2 stand-in (real `ray up` / `ray down` against moto's EC2, namespaces as instances):
then it must also have used the head and both workers, every instance must end terminated
and nothing of the stand-in may be left.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from raylauncher.local.runtime import PROJECT_DIR, Backend, LocalSystem, local_system, wait_for_jobs
from raylauncher.local.secrets_scan import TokenWitness, scan_files, scan_moto
from raylauncher.local.sample_data import compare_aggregates, expected_aggregates, generate_sales_csv
from raylauncher.model import Job, JobStatus

DEMO_TIMEOUT_S = 600


def upload_sample_files(system: LocalSystem, files: int, rows_per_file: int) -> list[str]:
    """Generate CSVs at run time (no downloads) and put them under the pipeline's trigger prefix."""
    prefix = system.pipelines.pipelines[0].trigger.prefix
    names = ["daily report.csv", "east+west.csv", "région-sud.csv", "extra.csv"]  # space, plus, unicode
    keys = []
    for i in range(files):
        name = names[i] if i < len(names) else f"part-{i:03d}.csv"
        key = prefix + name
        system.s3.put_object(Bucket=system.settings.bucket, Key=key, Body=generate_sales_csv(rows_per_file, seed=i))
        keys.append(key)
    return keys


def read_aggregates(system: LocalSystem, job: Job) -> pd.DataFrame:
    """The job's Parquet output, read back from the bucket."""
    prefix = f"{job.output_prefix}aggregates/"
    listed = system.s3.list_objects_v2(Bucket=system.settings.bucket, Prefix=prefix).get("Contents", [])
    tables = [
        pq.read_table(io.BytesIO(system.s3.get_object(Bucket=system.settings.bucket, Key=o["Key"])["Body"].read()))
        for o in listed
        if o["Key"].endswith(".parquet")
    ]
    if not tables:
        return pd.DataFrame()
    frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    return frame.sort_values("region", ignore_index=True)


def verify_job_output(system: LocalSystem, job: Job) -> list[str]:
    """Differences between the job's output and pandas over its manifest's objects ([] = verified)."""
    manifest = system.objects.get_json(job.manifest_key or "")
    blobs = [  # the exact versions the manifest names, as the job reads them
        system.s3.get_object(
            Bucket=manifest["bucket"], Key=o["key"], **({"VersionId": o["version_id"]} if o.get("version_id") else {})
        )["Body"].read()
        for o in manifest["objects"]
    ]
    expected, rows_in, rows_rejected = expected_aggregates(blobs)
    problems = compare_aggregates(read_aggregates(system, job), expected)
    summary = job.summary or {}
    if (summary.get("rows_in"), summary.get("rows_rejected")) != (rows_in, rows_rejected):
        problems.append(
            f"summary says rows_in={summary.get('rows_in')} rows_rejected={summary.get('rows_rejected')}, "
            f"pandas says {rows_in} and {rows_rejected}"
        )
    return problems


def covered_keys(jobs: list[Job], system: LocalSystem) -> set[str]:
    keys: set[str] = set()
    for job in jobs:
        if job.manifest_key:
            keys |= {o["key"] for o in system.objects.get_json(job.manifest_key)["objects"]}
    return keys


def check_standin_cluster(system: LocalSystem, job: Job) -> list[str]:
    """EC2 stand-in runs: the job used head + workers, and every instance of its cluster ended."""
    from raylauncher.local.ec2_standin.deltas import STANDIN_PROFILE

    problems = []
    wanted = 1 + STANDIN_PROFILE["min_workers"]
    used = (job.summary or {}).get("nodes_used") or []
    if len(used) < wanted:
        problems.append(f"the job ran on {len(used)} node(s) {used}, not on all {wanted}")
    name = (job.cluster or {}).get("cluster_name")
    for instance in system.standin.instances():
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        if tags.get("ray-cluster-name") == name and instance["State"]["Name"] != "terminated":
            problems.append(f"instance {instance['InstanceId']} of {name} is {instance['State']['Name']}")
    return problems


def secrets_scan(system: LocalSystem, state_dir: Path, tokens: set[str]) -> bool:
    """No Ray token of this run in any record, event, object, SSM command or file of the run."""
    found, items = scan_moto(system.settings.endpoint_url or "", tokens)
    file_findings, files = scan_files(state_dir, tokens)
    found += file_findings
    print(f"secrets scan: {len(tokens)} Ray token(s) looked for in {items} records, events, objects and SSM "
          f"entries and {files} files: {'none found' if not found else 'FOUND'}")
    for finding in found:
        print(f"  {finding}", file=sys.stderr)
    return bool(tokens) and not found


def run_demo(rows_per_file: int, files: int, backend: Backend = "local", region: str = "us-east-1") -> int:
    state_dir = PROJECT_DIR / ".local" / "state"
    started = time.monotonic()
    live = sys.stdout.isatty()
    if backend == "ec2":
        from raylauncher.local.ec2_standin import unavailable

        reason = unavailable()
        if reason:
            print(f"cannot run the EC2 demo here: {reason}", file=sys.stderr)
            return 2
    witness = TokenWitness.install()  # learns each cluster's Ray token as it is stored
    with local_system(state_dir, start_poller=False, backend=backend, region=region) as system:
        print(f"moto server (S3, SQS, DynamoDB, SSM{', EC2' if system.standin else ''}) at {system.settings.endpoint_url}, "
              f"region {system.settings.region}")
        if system.standin:
            bridge = system.standin.bridge
            print(f"EC2 stand-in: instances are network namespaces on bridge {bridge.name} ({bridge.subnet})")

            def instance_changed(event: Any) -> None:
                kind = event.tags.get("ray-node-type", "?")
                sys.stdout.write(f"\r\033[K[{time.monotonic() - started:6.1f}s] instance {event.instance_id} "
                                 f"({kind}, {event.address}): {event.state}\n" if live else
                                 f"[{time.monotonic() - started:6.1f}s] instance {event.instance_id} ({kind}, "
                                 f"{event.address}): {event.state}\n")  # fmt: skip
                sys.stdout.flush()

            system.standin.materializer.subscribe(instance_changed)
        keys = upload_sample_files(system, files, rows_per_file)
        print(f"uploaded {len(keys)} CSV file(s) to s3://{system.settings.bucket}/ : {', '.join(keys)}")
        system.poller.start()  # after the uploads, so this burst lands in one batch, one job

        shown: list[str] = []

        def progress(jobs: list[Job]) -> None:
            line = "  ".join(f"{j.job_id}: {j.status}" + (f" (ray {j.ray_status})" if j.ray_status else "") for j in jobs)
            if live:
                sys.stdout.write(f"\r[{time.monotonic() - started:6.1f}s] {line or 'waiting for the intake…'}\033[K")
            elif line and shown[-1:] != [line]:  # not a terminal: one line per change
                shown.append(line)
                sys.stdout.write(f"[{time.monotonic() - started:6.1f}s] {line}\n")
            sys.stdout.flush()

        def finished(jobs: list[Job]) -> bool:
            return bool(jobs) and all(j.is_terminal for j in jobs) and covered_keys(jobs, system) >= set(keys)

        jobs = wait_for_jobs(system.store, finished, DEMO_TIMEOUT_S, progress)
        print()
        ok = finished(jobs)
        if not ok:
            print(f"not finished after {DEMO_TIMEOUT_S}s", file=sys.stderr)
        for job in jobs:
            print(f"\nfinal record of {job.job_id}:")
            print(json.dumps(job.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False))
            if job.status != JobStatus.SUCCEEDED:
                print(f"job {job.job_id} ended {job.status}: {job.reason_code}: {job.reason_message}", file=sys.stderr)
                ok = False
                continue
            print(f"output: s3://{system.settings.bucket}/{job.output_prefix}")
            print(read_aggregates(system, job).head(5).to_string(index=False))
            problems = verify_job_output(system, job)
            if problems:
                ok = False
                print("output does NOT match pandas:\n  " + "\n  ".join(problems), file=sys.stderr)
            else:
                print("output verified: aggregates equal an independent pandas computation over the same input")
            if system.standin:
                cluster_problems = check_standin_cluster(system, job)
                if cluster_problems:
                    ok = False
                    print("EC2 stand-in check FAILED:\n  " + "\n  ".join(cluster_problems), file=sys.stderr)
                else:
                    print(f"ran on {len((job.summary or {}).get('nodes_used') or [])} nodes "
                          f"{(job.summary or {}).get('nodes_used')}; every instance of {job.cluster['cluster_name']} "  # type: ignore[index]
                          "is terminated")  # fmt: skip
        ok = secrets_scan(system, state_dir, witness.tokens) and ok
    if backend == "ec2":
        from raylauncher.local.ec2_standin.cleanup import leftovers

        left = leftovers(system.standin.id if system.standin else None)
        if left:
            ok = False
            print("the EC2 stand-in left:\n  " + "\n  ".join(left), file=sys.stderr)
        else:
            print("nothing of the EC2 stand-in is left (namespaces, bridge, veths, node processes, sshd)")
    print(f"\ndemo {'PASSED' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s (state in {state_dir})")
    return 0 if ok else 1

