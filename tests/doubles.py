"""Test doubles shared by several test modules (ports of raylauncher with in-memory state)."""

from __future__ import annotations

from raylauncher.cluster_tokens import ClusterTokens, StoredToken, TokenNotFound, new_token
from raylauncher.local.secrets_scan import TokenWitness
from raylauncher.model import Job


class MemoryClusterTokens(ClusterTokens):
    """Ray tokens in a dict. `fixed` makes every cluster get that one token (tests whose
    clusters are one shared real head). `issued` keeps every token ever made, for scans."""

    def __init__(self, fixed: str | None = None) -> None:
        self.fixed = fixed
        self.tokens: dict[str, str] = {}
        self.issued: list[str] = []
        self.revoked: list[str] = []

    def issue(self, job: Job) -> str:
        token = self.fixed or new_token()
        self.tokens[job.run_id] = token
        self.issued.append(token)
        TokenWitness.install().tokens.add(token)  # the session's secrets scan looks for it too
        return token

    def read(self, job: Job) -> str:
        if job.run_id not in self.tokens:
            raise TokenNotFound(job.run_id, "read", "ParameterNotFound")
        return self.tokens[job.run_id]

    def revoke(self, job: Job) -> None:
        if self.tokens.pop(job.run_id, None) is not None:
            self.revoked.append(job.run_id)

    def stored(self) -> list[StoredToken]:
        return []  # tests of the sweep use the SSM adapter on moto

    def delete(self, token: StoredToken) -> None:
        self.tokens.pop(token.run_id, None)
