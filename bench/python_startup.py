"""What compiled bytecode saves: Python start-up with and without the installed packages' .pyc.

Where PYTHONDONTWRITEBYTECODE is set (this machine's image sets it) nothing ever writes a .pyc,
so an install that does not compile them (uv's default) leaves every process to compile Ray,
boto3 and the rest from source each time it starts. A local Ray cluster is about ten Python
processes (`ray start`, the dashboard and its modules, the agents, the job's supervisor and
driver), so it pays that about ten times. `make install` compiles them (`uv pip install
--compile-bytecode`); this bench measures what that is worth.

"without bytecode" is simulated faithfully to a clean uv install: PYTHONPYCACHEPREFIX points at
a temp dir holding the standard library's .pyc only (the interpreter's own install has them),
so the installed packages compile from source and nothing is written back.

Figures:
- per import line: CPU seconds (user + system) of `python -c "<import>"`, median of the runs;
- a local Ray cluster's life: `ray start --head --block` in its own session and temp dir, the
  Jobs API answering, one job that sleeps 3 s, every process of the session stopped; the
  machine's CPU seconds over that time (from /proc/stat: Ray's processes are not our children)
  and the seconds until the job ended; the seconds its teardown took (SIGTERM to every process
  of the session, up to 5 s for them to end, SIGKILL: as the local backend does).

Usage: python bench/python_startup.py [--runs 3] [--clusters 2]
"""

from __future__ import annotations

import argparse
import os
import importlib.util
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench")]

from raylauncher.clusters.local import LOOPBACK_ONLY_ENV, NO_DRAIN_ENV, free_ports  # noqa: E402
from raylauncher.clusters.processes import stop_processes  # noqa: E402
from record import write_result  # noqa: E402

IMPORTS = {
    "ray": "import ray",
    "ray dashboard": "import ray.dashboard.dashboard",
    "boto3 + moto server": "import boto3, moto.server",
    "raylauncher wiring": "import raylauncher.wiring",
}
JOB = ["python", "-c", "import time; time.sleep(3)"]


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def stdlib_only_prefix(root: Path) -> dict[str, str]:
    """Environment that hides every installed package's .pyc but keeps the standard library's."""
    prefix = root / "pycache"
    stdlib = sysconfig.get_paths()["stdlib"]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", "-x", "site-packages", stdlib],
        env={**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}, stdout=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return {"PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": "1"}


def import_cpu_s(statement: str, env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", statement], env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cluster_life(env: dict[str, str]) -> dict[str, float]:
    """One local cluster, as the local backend runs it (own session, temp dir and ports)."""
    ray = str(Path(sys.executable).with_name("ray"))
    gcs, dash, client, agent, metrics, runtime_env = free_ports(6)
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as temp_dir:
        cpu0, t0 = machine_cpu_s(), time.monotonic()
        proc = subprocess.Popen(
            [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
             f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
             f"--runtime-env-agent-port={runtime_env}", f"--temp-dir={temp_dir}", "--num-cpus=1",
             "--include-dashboard=true", "--disable-usage-stats"],
            env={**env, **LOOPBACK_ONLY_ENV, **NO_DRAIN_ENV, "RAY_USAGE_STATS_ENABLED": "0"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{dash}"
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"ray start exited {proc.returncode}") from None
                    time.sleep(0.2)
            up_s = time.monotonic() - t0
            submit = subprocess.run(
                [ray, "job", "submit", "--address", url, "--", *JOB],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            if submit.returncode != 0:
                raise RuntimeError(f"ray job submit exited {submit.returncode}")
            job_s = time.monotonic() - t0
        finally:
            t_stop = time.monotonic()
            left = stop_processes(proc.pid, None, 5.0)
            proc.wait()
        if left:
            raise RuntimeError(f"processes left: {[p.pid for p in left]}")
        stop_s = time.monotonic() - t_stop
        return {"cpu_s": machine_cpu_s() - cpu0, "jobs_api_s": up_s, "job_done_s": job_s, "stop_s": stop_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per import line and mode")
    ap.add_argument("--clusters", type=int, default=2, help="cluster lives per mode")
    args = ap.parse_args()
    ray_init = Path(sysconfig.get_paths()["purelib"]) / "ray" / "__init__.py"
    if not Path(importlib.util.cache_from_source(str(ray_init))).exists():
        print("the installed packages have no .pyc: run `make install` first", file=sys.stderr)
        return 2
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="rl-bench-pyc-") as root:
        modes = {"with bytecode": dict(os.environ), "without bytecode": {**os.environ, **stdlib_only_prefix(Path(root))}}
        imports: dict[str, dict[str, float]] = {}
        for label, statement in IMPORTS.items():
            imports[label] = {}
            for mode, env in modes.items():
                runs = [import_cpu_s(statement, env) for _ in range(args.runs)]
                imports[label][mode] = statistics.median(runs)
            print(f"{label:22s} " + "  ".join(f"{m}: {v:.2f} CPU-s" for m, v in imports[label].items()), flush=True)
        clusters: dict[str, list[dict[str, float]]] = {}
        for mode, env in modes.items():
            clusters[mode] = [cluster_life(env) for _ in range(args.clusters)]
            med = {k: statistics.median(r[k] for r in clusters[mode]) for k in clusters[mode][0]}
            print(f"local cluster, {mode}: {med['cpu_s']:.1f} CPU-s (machine), Jobs API after {med['jobs_api_s']:.1f} s, "
                  f"job done after {med['job_done_s']:.1f} s, stopped in {med['stop_s']:.1f} s", flush=True)  # fmt: skip
    write_result("python_startup", {
        "params": {"runs": args.runs, "clusters": args.clusters, "job": " ".join(JOB)},
        "imports": imports,
        "clusters": clusters,
        "load_average": {"before": load0, "after": os.getloadavg()[0]},
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
