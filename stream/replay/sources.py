"""Where replayed records come from: JSONL, CSV and Parquet files (a path, a directory or a glob),
or rows in memory (an iterable of dicts, a pandas DataFrame, an Arrow table).

Each input yields ``(row number, raw)``: a JSONL line as bytes (decoded by the parser, so a line
that is not JSON becomes a dead letter), or a dict. Columnar files are read by pyarrow in batches,
so memory follows the batch, not the file. CSV cells are text: a ``timestamp``, ``prediction`` or
``label`` cell that is a JSON number or boolean is read as one (as the same record in JSONL
would be), ``scores`` and ``segment`` cells hold JSON objects, and an empty cell is an absent
field. Parquet columns keep their types; timestamps of Arrow's timestamp type become epoch
seconds (naive ones taken as UTC), maps and structs become objects.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from stream.core.records import raw_text
from stream.errors import ConfigError

__all__ = ["FORMATS", "Input", "inputs", "jsonl_chunks", "jsonl_lines"]

FORMATS = ("jsonl", "csv", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet"}
BATCH_ROWS = 8192
CHUNK_BYTES = 1 << 21  # about what a JSONL file is read in at a time (``jsonl_chunks``)
PARQUET_ROW_BYTES = 256  # a record with scores and a segment, as a JSON line
_REQUIRED = {"predictions": ("request_id", "timestamp", "model", "prediction"),
             "labels": ("request_id", "timestamp", "label")}
_SCALARS = ("timestamp", "prediction", "label")
_OBJECTS = ("scores", "segment")


@dataclass
class Input:
    """One file, or rows in memory (``name`` says which, for dead letters and the summary)."""

    name: str
    format: str
    path: Path | None = None
    rows_in_memory: list[Any] | None = None

    @property
    def size_bytes(self) -> int:
        """How much input there is, for progress: the file's bytes, or 100 per row in memory."""
        if self.path is not None:
            return self.path.stat().st_size
        return 100 * len(self.rows_in_memory or [])

    @property
    def held_bytes(self) -> int:
        """About what its rows take as text, held in memory (``replay.bulk``): the file's size, or
        for Parquet (compressed) ``PARQUET_ROW_BYTES`` a row."""
        if self.format == "parquet" and self.path is not None:
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows) * PARQUET_ROW_BYTES
        return self.size_bytes

    def rows(self, source: str) -> Iterator[tuple[int, Any, int]]:
        """``(row number from 1, raw, bytes it stands for)``."""
        if self.rows_in_memory is not None:
            for number, row in enumerate(self.rows_in_memory, 1):
                yield number, row, 100
        elif self.format == "jsonl":
            yield from jsonl_lines(self.path)  # type: ignore[arg-type]
        else:
            yield from _columnar(self.path, self.format, source)  # type: ignore[arg-type]

    def chunks(self, source: str) -> Iterator[tuple[list[int], list[Any], int]]:
        """``rows`` a chunk at a time: ``(row numbers, raws, bytes they stand for)``, so that a
        caller works on lists rather than on a row at a time."""
        if self.rows_in_memory is None and self.format == "jsonl":
            yield from jsonl_chunks(self.path)  # type: ignore[arg-type]
            return
        rows = self.rows(source)
        while chunk := list(itertools.islice(rows, BATCH_ROWS)):
            numbers, raws, sizes = zip(*chunk, strict=True)
            yield list(numbers), list(raws), sum(sizes)

    def raw(self, number: int, source: str) -> Any:
        """Row ``number`` again, for a dead letter decided later (rare, so read again)."""
        for n, raw, _ in self.rows(source):
            if n == number:
                return raw_text(raw) if isinstance(raw, bytes) else raw
        return ""


def inputs(spec: Any, source: str, format: str | None = None) -> list[Input]:
    """The inputs of ``spec``: a path, directory or glob of files (their format by extension, or
    ``format``), or rows in memory. Raises ConfigError when nothing matches or a format is unknown."""
    if format is not None and format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not isinstance(spec, str | Path):
        return [Input(f"<{source} in memory>", "rows", rows_in_memory=_in_memory(spec))]
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (format or SUFFIXES.get(p.suffix.lower())))
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    else:
        if not path.exists():
            raise ConfigError(f"{source}: {text} does not exist")
        files = [path]
    if not files:
        raise ConfigError(f"{source}: no JSONL, CSV or Parquet files in {text}")
    out = []
    for file in files:
        kind = format or SUFFIXES.get(file.suffix.lower())
        if kind is None:
            kind = "jsonl"  # a file without a known extension: JSON lines, as before formats
        out.append(Input(str(file), kind, path=file))
        if kind != "jsonl":
            _check_columns(file, kind, source)
    return out


def _in_memory(spec: Any) -> list[Any]:
    """Rows of a pandas DataFrame, an Arrow table or an iterable of dicts."""
    if hasattr(spec, "to_pylist"):  # pyarrow.Table or RecordBatch
        return [_cleaned(row) for row in spec.to_pylist()]
    if hasattr(spec, "to_dict") and hasattr(spec, "columns"):  # pandas.DataFrame
        return [_cleaned(row) for row in spec.to_dict(orient="records")]
    return list(spec)


def jsonl_lines(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """(line number from 1, line, its bytes) of a JSONL file's lines that are not blank: ``jsonl_chunks``
    a line at a time."""
    for numbers, lines, _ in jsonl_chunks(path):
        for number, line in zip(numbers, lines, strict=True):
            yield number, line, len(line)


def jsonl_chunks(path: Path, chunk_bytes: int | None = None) -> Iterator[tuple[list[int], list[bytes], int]]:
    """The lines of a JSONL file that are not blank, about ``chunk_bytes`` (``CHUNK_BYTES``) at a
    time: (their line numbers from 1, them, the bytes of the chunk's lines, blank ones too)."""
    with path.open("rb") as file:
        first = 1
        while lines := file.readlines(chunk_bytes or CHUNK_BYTES):
            size = sum(map(len, lines))
            numbers = range(first, first + len(lines))
            first += len(lines)
            if any(map(bytes.isspace, lines)):
                keep = [not line.isspace() for line in lines]
                yield list(itertools.compress(numbers, keep)), list(itertools.compress(lines, keep)), size
            else:
                yield list(numbers), lines, size


def _check_columns(path: Path, kind: str, source: str) -> None:
    """Refuse a file that lacks a required column: every row of it would be a dead letter."""
    names = _schema_names(path, kind)
    missing = [c for c in _REQUIRED[source] if c not in names]
    if missing:
        raise ConfigError(f"{path}: {source} need the column(s) {missing}; the file has {sorted(names)}")


def _schema_names(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    import pyarrow.csv as pcsv

    with pcsv.open_csv(path, convert_options=_csv_options(None)) as reader:
        return list(reader.schema.names)


def _csv_options(names: list[str] | None) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # Every column as text: the cells are converted as JSON would have them (see the module).
    return pcsv.ConvertOptions(column_types={n: pa.string() for n in names} if names else None,
                               strings_can_be_null=True, auto_dict_encode=False, timestamp_parsers=[],
                               quoted_strings_can_be_null=False)


def _columnar(path: Path, kind: str, source: str) -> Iterator[tuple[int, Any, int]]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        per_row = path.stat().st_size / max(1, file.metadata.num_rows)
        batches: Iterable[Any] = file.iter_batches(batch_size=BATCH_ROWS)
        convert = _cleaned
    else:
        import pyarrow.csv as pcsv

        names = _schema_names(path, kind)
        per_row = 0.0
        reader = pcsv.open_csv(path, convert_options=_csv_options(names),
                               read_options=pcsv.ReadOptions(block_size=1 << 20))
        batches = reader
        convert = _from_csv
    number = 0
    for batch in batches:
        rows = batch.to_pylist()
        weight = int(per_row or batch.nbytes / max(1, len(rows)))
        for row in rows:
            number += 1
            try:
                yield number, convert(row), weight
            except ValueError as exc:  # a cell that cannot be what its column holds: a dead letter
                yield number, exc, weight


def _from_csv(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, cell in row.items():
        if cell is None or cell == "":
            continue
        if key in _SCALARS:
            out[key] = _scalar(cell)
        elif key in _OBJECTS:
            try:
                out[key] = orjson.loads(cell)
            except orjson.JSONDecodeError:
                raise ValueError(f"'{key}' must hold a JSON object, got {cell[:64]!r}") from None
        else:
            out[key] = cell
    return out


def _scalar(cell: str) -> Any:
    """A JSON number or boolean as one, anything else as the text."""
    if cell in ("true", "false") or cell[:1].isdigit() or cell[:1] in "-.":
        try:
            value = orjson.loads(cell)
        except orjson.JSONDecodeError:
            return cell
        if isinstance(value, bool | int | float):
            return value
    return cell


def _cleaned(row: dict[str, Any]) -> dict[str, Any]:
    """A typed row as a JSON record would be: no nulls, epoch-second timestamps, maps as objects."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or (isinstance(value, float) and math.isnan(value) and key not in _SCALARS):
            continue
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        elif hasattr(value, "timestamp") and hasattr(value, "to_pydatetime"):  # pandas.Timestamp
            value = _cleaned({key: value.to_pydatetime()})[key]
        elif isinstance(value, list) and key in _OBJECTS and all(isinstance(x, tuple) and len(x) == 2 for x in value):
            value = dict(value)  # an Arrow map
        elif isinstance(value, str) and key in _OBJECTS:
            with contextlib.suppress(orjson.JSONDecodeError):  # left as text: the parser says what it must be
                value = orjson.loads(value)
        elif isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        out[key] = value
    return out
