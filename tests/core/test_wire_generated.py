"""The checked-in protobuf modules must be exactly what proto/ generates."""

from __future__ import annotations

from pathlib import Path

from united_core.wire import generate


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in generate.generate(tmp_path)}
    assert fresh, "protoc produced nothing"
    for name, text in fresh.items():
        checked_in = generate.OUT_DIR / name
        assert checked_in.exists(), (
            f"{name} is not checked in: run python -m united_core.wire.generate"
        )
        assert checked_in.read_text() == text, (
            f"{name} is stale: run python -m united_core.wire.generate"
        )
    stale = {p.name for p in generate.OUT_DIR.glob("*_pb2.py*")} - set(fresh)
    assert not stale, f"generated files without a schema: {stale}"
