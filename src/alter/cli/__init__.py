"""The `alter` command line: a thin map from subcommands to library functions, one module
per kind of command, each registering its commands on `app` when imported."""

from __future__ import annotations

from alter.cli.common import Quantize, app

# The order of these imports is the order of `alter --help`.
# isort: off
from alter.cli import training  # noqa: F401, E402
from alter.cli import inference  # noqa: F401, E402
from alter.cli import tasks  # noqa: F401, E402
# isort: on

__all__ = ["Quantize", "app"]
