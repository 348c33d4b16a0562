"""The core stands alone: no module of ``stream/core`` imports anything of mlmon outside it (no
Kafka, faust or worker settings), so the replay engine, the API and the worker drive the same
pure core."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[3] / "stream" / "core"


def test_the_core_imports_nothing_of_mlmon_outside_it() -> None:
    outside = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            outside += [f"{path.name}: {name}" for name in names
                        if name.split(".")[0] in ("stream", "faust", "confluent_kafka", "aiokafka")
                        and not name.startswith("stream.core")]
    assert outside == []
