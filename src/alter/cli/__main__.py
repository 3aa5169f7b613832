"""python -m alter.cli"""

from alter.cli import app

app()
