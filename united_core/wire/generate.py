"""Regenerate the checked-in protobuf modules from ``proto/``.

Run ``python -m united_core.wire.generate`` after editing a ``.proto`` file; the
test suite fails while the checked-in output differs from what this produces.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every schema; return the files written."""
    from grpc_tools import protoc  # test-only dependency

    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = []
    for path in sorted(out_dir.glob("*_pb2.py*")):
        text = path.read_text()
        # protoc emits absolute imports; the modules live inside this package.
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        text = re.sub(r"^from (\w+_pb2) import", r"from .\1 import", text, flags=re.M)
        path.write_text(text)
        written.append(path)
    return written


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (OUT_DIR / path.name).write_text(path.read_text())
            print(f"wrote {OUT_DIR / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
