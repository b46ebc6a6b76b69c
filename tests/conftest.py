"""Shared fixtures: moto in server mode (over HTTP, on 127.0.0.1) and fake AWS credentials."""

from __future__ import annotations

import os

# Ray reads this at import: keep every in-process Ray (and its clients) on 127.0.0.1 instead of
# the machine's interface address. The local backend sets it for the clusters it starts.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylauncher.config import Settings
from raylauncher.local.stack import FAKE_CREDENTIALS, MotoServer

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
    )


def launcher_calls(settings: Settings) -> list[str]:
    """What the fake launcher was called with, one line per call."""
    calls = Path(settings.launcher_bin).with_name("launcher-calls.txt")
    return calls.read_text().splitlines() if calls.exists() else []


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.secrets_hygiene import SESSION

    SESSION.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Scan this session's output for Ray tokens (any found fails the session), then write the
    fault table from the rows this session's fault scenarios recorded, with the scan's summary."""
    from tests.faults import write_table
    from tests.secrets_hygiene import SESSION

    temp_root = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    SESSION.finish(temp_root)
    write_table(SESSION.summary())
    if SESSION.findings or SESSION.errors:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["SECRETS HYGIENE: a Ray token leaked or the scan failed", *map(str, SESSION.findings), *SESSION.errors]
        if reporter:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def fault_row():  # noqa: ANN201
    """`fault_row(FaultRow(...))`: add a measured row to docs/faults.md."""
    from tests.faults import record

    return record
