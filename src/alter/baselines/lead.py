"""Lead: the first sentences of the source as its summary, the usual floor of summarization."""

from __future__ import annotations

import re

# A sentence ends at . ! or ? followed by space, or at a line break (a dialogue's turn).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def lead(text: str, sentences: int) -> str:
    parts = [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]
    return " ".join(parts[:sentences])
