"""The guard on our faust patches: every upstream function a patch replaces, copies or relies on
(``stream.kafka.patches.UPSTREAM``) has the source it had in the pinned versions.

The fingerprints are of the source text in the installed package files (parsed, not imported
objects, which the patches replace). After reviewing a change upstream against the patch it names,
record the new fingerprints with ``python tests/unit/kafka/test_faust_guard.py``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pytest

from stream.kafka.patches import UPSTREAM

FINGERPRINTS = Path(__file__).with_name("faust_fingerprints.json")
PACKAGES = ("faust-streaming", "aiokafka", "mode-streaming", "rocksdict")


def upstream_source(target: str) -> str:
    """The source of ``module:Qualified.name`` as the installed package file has it."""
    module, qualname = target.split(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not installed"
    text = Path(spec.origin).read_text()
    body: list[ast.stmt] = ast.parse(text).body
    node: ast.AST | None = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                     and n.name == part), None)
        if node is None:
            raise LookupError(f"{target}: no {part!r} in {spec.origin}")
        body = node.body  # type: ignore[attr-defined]
    return ast.get_source_segment(text, node) or ""


def fingerprints() -> dict[str, str]:
    return {target: hashlib.sha256(upstream_source(target).encode()).hexdigest()[:16]
            for targets in UPSTREAM.values() for target in targets}


def versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in PACKAGES}


def test_the_pinned_versions_are_installed() -> None:
    recorded = json.loads(FINGERPRINTS.read_text())
    assert versions() == recorded["versions"], (
        "installed faust/aiokafka versions differ from those the patches were checked against; "
        "install the pins in pyproject.toml, or review the upgrade (see stream/kafka/patches/)")


@pytest.mark.parametrize("patch", sorted(UPSTREAM))
def test_what_each_patch_relies_on_is_unchanged_upstream(patch: str) -> None:
    recorded = json.loads(FINGERPRINTS.read_text())["fingerprints"]
    now = fingerprints()
    changed = [t for t in UPSTREAM[patch] if recorded.get(t) != now[t]]
    assert not changed, (
        f"patch {patch} (stream/kafka/patches/) relies on upstream code that changed: {changed}. "
        "Re-read each against the patch; the patch may no longer fix its fault, or may break the worker. "
        "Then run `make faust-check` and record the new fingerprints.")


def test_a_changed_line_upstream_changes_the_fingerprint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = "faust.transport.consumer:Consumer._new_offset"
    original = upstream_source(target)
    spec = importlib.util.find_spec("faust.transport.consumer")
    assert spec is not None and spec.origin
    text = Path(spec.origin).read_text()
    edited = tmp_path / "consumer.py"
    edited.write_text(text.replace(original, original + "\n        pass  # one more line", 1))
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        found = real(name)
        if name == "faust.transport.consumer" and found is not None:
            found = importlib.util.spec_from_file_location(name, edited)
        return found

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert upstream_source(target) != original
    assert fingerprints()[target] != json.loads(FINGERPRINTS.read_text())["fingerprints"][target]


if __name__ == "__main__":
    FINGERPRINTS.write_text(json.dumps({"versions": versions(), "fingerprints": fingerprints()}, indent=1) + "\n")
    print(f"recorded {len(fingerprints())} fingerprints for {versions()} in {FINGERPRINTS}")
