"""The Lambdas import boto3, Powertools and pydantic only: never Ray, pyarrow, pandas or PyYAML."""

import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_importing_the_lambda_handlers_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, lambdas.api.handler, lambdas.intake.handler, lambdas.schedule.handler, lambdas.watchdog.handler\n"
        "import lambdas.job_metrics.handler\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'pyarrow', 'pandas', 'yaml'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
