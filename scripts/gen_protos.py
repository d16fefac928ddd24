"""Regenerate *_pb2.py and *_pb2.pyi beside every .proto in protos/ and libproc/names/.

libproc's own protocol (the name service) lives in libproc/names/, so that libproc imports
nothing else of ours; the cluster's messages live in protos/.

Uses grpcio-tools' bundled protoc (pinned in pyproject.toml beside the protobuf runtime), so
the generated code always matches the runtime. `--check` exits 1 when the committed files are
stale instead of writing them; tests/test_protos_fresh.py runs that.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = [ROOT / "protos", ROOT / "libproc" / "names"]


def generate(out_dir: Path) -> list[Path]:
    sources = sorted(p for d in SOURCE_DIRS for p in d.glob("*.proto"))
    for source in sources:
        rc = protoc.main(
            [
                "protoc",
                f"-I{ROOT}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                str(source.relative_to(ROOT)),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {source.name} (exit {rc})")
    return sources


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for produced in sorted(Path(tmp).rglob("*_pb2.py*")):
            target = ROOT / produced.relative_to(tmp)  # protoc keeps the path below ROOT
            new = produced.read_bytes()
            if not target.exists() or target.read_bytes() != new:
                stale.append(str(target.relative_to(ROOT)))
                if not check:
                    target.write_bytes(new)
    if check and stale:
        print(f"stale generated protobuf code: {', '.join(stale)}; run `make protos`")
        return 1
    print("protos: " + ("up to date" if not stale else f"regenerated {', '.join(stale)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
