"""What every command shares: the app, the console, the one-line errors, the quantize option."""

from __future__ import annotations

import functools
import logging
import os
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Small language models as multi-task learners with Mixture-of-Task-Adapters.")
console = Console()
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, OSError)


class Quantize(str, Enum):
    """How generation reads the pretrained weights: `alter.config.Quantize`'s values, written out
    here because importing the config loads torch, which `alter --help` should not wait for
    (tests/test_quantized.py checks that the two agree)."""

    int8 = "int8"
    none = "none"


QuantizeOption = Annotated[Quantize, typer.Option(
    help="int8: generation reads int8 copies of the backbone's pretrained weights (faster; scoring "
         "stays float32; docs/serving.md, 'The fast decode path'); none: float32")]


def friendly_errors(command):
    """One clear line instead of a traceback for bad input (ALTER_DEBUG=1 shows tracebacks)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        for noisy in ("httpx", "urllib3", "transformers", "huggingface_hub", "absl"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: the last checkpoint is saved; run the same command to resume")
            raise typer.Exit(130) from None
        except USER_ERRORS as error:
            if os.environ.get("ALTER_DEBUG") == "1":
                raise
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None
    return wrapper
