"""One line of `raylauncher doctor`: a check's name, outcome and detail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["ok", "warn", "fail", "skip"]


@dataclass
class Check:
    name: str
    outcome: Outcome
    detail: str
