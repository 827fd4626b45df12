"""Regenerate the ``phage.v1`` Python code from ``v1/*.proto``.

The generated files are committed so a fresh clone needs no protoc; run this
after editing the ``.proto`` (needs the ``dev`` extra for grpcio-tools).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    """Run protoc over the package's proto files, writing next to them."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    src = Path(__file__).resolve().parents[2]
    protos = sorted((Path(__file__).resolve().parent / "v1").glob("*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{src}",
        f"-I{include}",
        f"--python_out={src}",
        f"--pyi_out={src}",
        f"--grpc_python_out={src}",
        *(str(p.relative_to(src)) for p in protos),
    ]
    return int(protoc.main(args))


if __name__ == "__main__":
    sys.exit(main())
