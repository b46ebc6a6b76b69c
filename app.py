#!/usr/bin/env python3
"""CDK entry point: builds the stack, nothing else (`make synth`, or `npx cdk synth`)."""

import os
import sys
from pathlib import Path

# Node 20 runs jsii fine here; its end-of-life banner is noise on every synth.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from cdk.application import build_app  # noqa: E402
from raylauncher.errors import ConfigError  # noqa: E402

try:
    app, _ = build_app(Path(__file__).resolve().parent)
except ConfigError as err:
    sys.exit(f"cdk synth: {err}")
app.synth()
