"""The session-wide secrets-hygiene scan (issue #12): every Ray token any cluster of this test
session got must appear nowhere the product wrote — job records, events, S3 objects (job logs,
session-log tarballs), SSM commands and parameters, log files under the session's temp dirs, and
every log line emitted in this process.

Each moto server is scanned right before it stops (it forgets everything after); files and log
lines when the session ends. Findings, or a scan that could not run, fail the session
(tests/conftest.py). The summary goes under the fault table (docs/faults.md).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from raylauncher.local.secrets_scan import Finding, TokenWitness, find, scan_files, scan_moto
from raylauncher.local.stack import MotoServer


class _LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted holds nothing to leak
            pass


@dataclass
class Hygiene:
    witness: TokenWitness | None = None
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    items: int = 0
    servers: int = 0
    files: int = 0
    log_lines: int = 0
    _log: _LogLines = field(default_factory=_LogLines)
    _worker_tokens: int = 0  # tokens the workers' witnesses learnt (merged exports)

    def install(self) -> None:
        self.witness = TokenWitness.install()
        original_stop = MotoServer.stop
        hygiene = self

        def stop(server: MotoServer) -> None:
            if server.endpoint_url:
                hygiene.scan_server(server.endpoint_url)
            original_stop(server)

        MotoServer.stop = stop  # type: ignore[method-assign]
        root = logging.getLogger()
        root.addHandler(self._log)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)  # the drivers, watchdogs and launchers of this process log at INFO

    @property
    def tokens(self) -> set[str]:
        return self.witness.tokens if self.witness else set()

    def scan_server(self, endpoint_url: str) -> None:
        try:
            found, count = scan_moto(endpoint_url, self.tokens)
        except Exception:  # noqa: BLE001 - a scan that could not run must not pass silently
            self.errors.append(f"scan of moto at {endpoint_url} failed:\n{traceback.format_exc(limit=3)}")
            return
        self.findings += found
        self.items += count
        self.servers += 1

    def finish(self, temp_root: Path) -> None:
        found, files = scan_files(temp_root, self.tokens)
        self.files += files
        self.findings += found
        self.log_lines += len(self._log.lines)
        self.findings += find(self.tokens, ((f"log line {i}", line.encode()) for i, line in enumerate(self._log.lines)))

    def export(self) -> dict[str, object]:
        """What a test worker hands the controller (pytest-xdist): counts, findings, errors."""
        return {"tokens": len(self.tokens), "items": self.items, "servers": self.servers, "files": self.files,
                "log_lines": self.log_lines, "findings": [[f.where, f.token_hint] for f in self.findings],
                "errors": list(self.errors)}  # fmt: skip

    def merge(self, worker: dict[str, object]) -> None:
        """Add a worker's export (the controller runs no test: the workers' scans are the scan)."""
        self._worker_tokens += int(worker["tokens"])  # type: ignore[call-overload]
        self.items += int(worker["items"])  # type: ignore[call-overload]
        self.servers += int(worker["servers"])  # type: ignore[call-overload]
        self.files += int(worker["files"])  # type: ignore[call-overload]
        self.log_lines += int(worker["log_lines"])  # type: ignore[call-overload]
        self.findings += [Finding(where, hint) for where, hint in worker["findings"]]  # type: ignore[attr-defined]
        self.errors += list(worker["errors"])  # type: ignore[call-overload]

    def summary(self) -> str:
        verdict = "none found" if not self.findings and not self.errors else (
            f"{len(self.findings)} FOUND, {len(self.errors)} scan error(s)")
        return (f"Secrets scan of that session: {len(self.tokens) + self._worker_tokens} Ray token(s) looked for in {self.items} items of "
                f"{self.servers} moto server(s) (DynamoDB items, S3 object versions and archive members, SQS "
                f"messages, SSM parameters and commands), {self.files} files under the session's temp dirs and "
                f"{self.log_lines} log lines: {verdict}.")


SESSION = Hygiene()
