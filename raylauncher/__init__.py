"""raylauncher: event-driven, ephemeral Ray clusters on AWS. The domain package."""

from pathlib import Path

#: The directory this copy of raylauncher runs from: the checkout's root for a checkout (or an
#: editable install of it). The one definition of "this checkout": local mode's state and
#: pipelines live under it, and every process we launch carries it (processes.CHECKOUT_ENV) so
#: leftover checks and kills never touch another checkout's clusters on the same machine.
PROJECT_DIR = Path(__file__).resolve().parent.parent
