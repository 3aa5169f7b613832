"""Rows from TSV / CSV / JSONL files, with errors that name the file and the line."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad or missing data; the message names the file (and line) and what to do."""


Row = tuple[int, dict[str, str]]  # (line number, column -> value)


def infer_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("tsv", "csv", "jsonl"):
        return suffix
    if suffix == "json":
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the suffix; set format: tsv, csv or jsonl")


def _delimited(path: Path, delimiter: str, header: bool, columns: list[str] | None) -> Iterator[Row]:
    # GLUE files hold unbalanced quote characters: TSV is read with quoting off.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        names = columns
        if header:
            try:
                first = next(reader)
            except StopIteration:
                return
            names = columns or [name.strip() for name in first]
        if not names:
            raise DataError(f"{path}: a file without a header needs `columns:` (the names of its columns)")
        for values in reader:
            if not values or values == [""]:
                continue
            if len(values) != len(names):
                yield reader.line_num, {"__malformed__": f"{len(values)} fields, expected {len(names)}"}
                continue
            yield reader.line_num, dict(zip(names, values))


def _jsonl(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield line_number, {"__malformed__": f"invalid JSON ({error.msg})"}
                continue
            if not isinstance(value, dict):
                yield line_number, {"__malformed__": "not a JSON object"}
                continue
            yield line_number, value


def read_rows(path: Path, fmt: str | None = None, header: bool = True,
              columns: list[str] | None = None) -> Iterator[Row]:
    fmt = fmt or infer_format(path)
    if fmt == "jsonl":
        return _jsonl(path)
    return _delimited(path, "\t" if fmt == "tsv" else ",", header, columns)


class MalformedRows:
    """Counts rows that could not be used; a few are skipped with a warning, many are an error.

    The QQP subset, for example, holds one line where two rows were joined.
    """

    def __init__(self, path: Path, tolerance: float = 0.01, floor: int = 5, strict: bool = False):
        self.path = path
        self.tolerance = tolerance
        self.floor = floor
        self.strict = strict  # `data.strict`: any bad row is an error
        self.problems: list[tuple[int, str]] = []

    def add(self, line: int, problem: str) -> None:
        self.problems.append((line, problem))

    def besides(self, shown: int = 3) -> str:
        """The malformed rows, as a clause after another error in the same file ('' if none)."""
        if not self.problems:
            return ""
        listed = "; ".join(f"line {line}: {problem}" for line, problem in self.problems[:shown])
        more = f"; and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        return f". The file also has {len(self.problems)} malformed row(s), which would be skipped: {listed}{more}"

    def finish(self, good_rows: int) -> None:
        if not self.problems:
            return
        line, problem = self.problems[0]
        allowed = 0 if self.strict else max(self.floor, int(self.tolerance * (good_rows + len(self.problems))))
        if len(self.problems) > allowed or good_rows == 0:
            strict = " (data.strict is on)" if self.strict else ""
            raise DataError(f"{self.path}:{line}: {problem} ({len(self.problems)} bad rows in all){strict}")
        log.warning("%s: skipped %d malformed row(s), first at line %d: %s",
                    self.path, len(self.problems), line, problem)
