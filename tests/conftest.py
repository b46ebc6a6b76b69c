"""Shared fixtures: moto in server mode (over HTTP, on 127.0.0.1) and fake AWS credentials."""

from __future__ import annotations

import os

# Ray reads this at import: keep every in-process Ray (and its clients) on 127.0.0.1 instead of
# the machine's interface address. The local backend sets it for the clusters it starts.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Parallel workers (pytest-xdist) side by side: every process a worker launches carries its
# scope, so one worker's leftovers checks never count, list or stop another's clusters; no
# test sees a `raylauncher serve` of the developer's (its state file) nor another worker's.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ["RAYLAUNCHER_SCOPE"] = f"{WORKER}-{os.getpid()}"
os.environ.setdefault("RAYLAUNCHER_SERVE_STATE", f"/tmp/raylauncher-test-serve-{WORKER}-{os.getpid()}.json")
if WORKER != "main":  # xdist sets a terminal size in its workers; the CLI's output is judged as piped
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylauncher.config import Settings
from raylauncher.local.stack import FAKE_CREDENTIALS, MotoServer
from tests.xdist_groups import pytest_collection_modifyitems  # noqa: F401 - a hook: groups kept together

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")


@pytest.fixture
def settings(moto_endpoint: str, aws_credentials: None, tmp_path: Path) -> Settings:
    """Settings for one test: its own table and bucket names on the shared moto server, and a
    local bastion whose launcher is a recorder script (no driver, no Ray)."""
    suffix = uuid.uuid4().hex[:10]
    recorder = tmp_path / "fake-raylauncher"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {tmp_path}/launcher-calls.txt\n')
    recorder.chmod(0o755)
    return Settings(
        table=f"jobs-{suffix}",
        idempotency_table=f"idem-{suffix}",
        bucket=f"data-{suffix}",
        pipelines_file=str(PROJECT_DIR / "pipelines.yaml"),
        region="us-east-1",
        endpoint_url=moto_endpoint,
        bastion="local",
        launcher_bin=str(recorder),
        cluster_backend="local",
        project_dir=str(PROJECT_DIR),
        state_dir=str(tmp_path / "state"),
        detach="process",
        release=uuid.uuid4().hex[:12],
    )


def launcher_calls(settings: Settings) -> list[str]:
    """What the fake launcher was called with, one line per call."""
    calls = Path(settings.launcher_bin).with_name("launcher-calls.txt")
    return calls.read_text().splitlines() if calls.exists() else []


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.secrets_hygiene import SESSION

    SESSION.install()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cluster-slots", type=int, default=3,
                     help="with -n N --dist loadgroup: at most this many units of tests/e2e/ at once (tests/scheduling.py)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getoption("dist") != "loadgroup":
        return None
    from tests.scheduling import ClusterSlotsScheduling

    return ClusterSlotsScheduling(config, log, slots=config.getoption("cluster_slots"))


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("dsession")  # pytest-xdist's, with -n N > 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Scan this session's output for Ray tokens (any found fails the session), then write the
    fault table from the rows this session's fault scenarios recorded, with the scan's summary.
    Under pytest-xdist each worker scans what it made (its moto servers, temp dir, log lines)
    and hands its counts, findings and fault rows to the controller, which writes and judges."""
    from tests import faults
    from tests.secrets_hygiene import SESSION

    config = session.config
    if not _is_controller(config):
        SESSION.finish(config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    if _is_worker(config):
        config.workeroutput["hygiene"] = SESSION.export()  # type: ignore[attr-defined]
        config.workeroutput["fault_rows"] = faults.export()  # type: ignore[attr-defined]
        return
    faults.write_table(SESSION.summary())
    if SESSION.findings or SESSION.errors:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        lines = ["SECRETS HYGIENE: a Ray token leaked or the scan failed", *map(str, SESSION.findings), *SESSION.errors]
        if reporter:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_WORKER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Per-worker totals (setup + call + teardown of every test): where the time goes."""
    node = getattr(report, "node", None)  # set by pytest-xdist on the controller
    worker = getattr(getattr(node, "gateway", None), "id", None) or "main"
    _WORKER_SECONDS[worker] = _WORKER_SECONDS.get(worker, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _WORKER_SECONDS:
        terminalreporter.write_sep("=", "seconds of tests per worker")
        for worker, seconds in sorted(_WORKER_SECONDS.items()):
            terminalreporter.write_line(f"{worker}: {seconds:.0f} s")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist: a worker finished; take its secrets scan and fault rows."""
    from tests import faults
    from tests.secrets_hygiene import SESSION

    output = getattr(node, "workeroutput", {})
    if "hygiene" in output:
        SESSION.merge(output["hygiene"])
        faults.merge(output["fault_rows"])
    else:  # a worker that crashed handed nothing over: its scan did not run
        SESSION.errors.append(f"worker {getattr(node, 'gateway', node)} ended without its secrets scan ({error})")


@pytest.fixture
def fault_row():  # noqa: ANN201
    """`fault_row(FaultRow(...))`: add a measured row to docs/faults.md."""
    from tests.faults import record

    return record
