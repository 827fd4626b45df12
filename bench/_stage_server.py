"""One stage server in a process of its own, as a node runs it (for ``pipeline.py --processes``).

    python _stage_server.py MODEL_DIR PKI_DIR START END

Prints ``NODE_ID ADDRESS`` once listening, then serves until its standard input closes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


async def main(model: Path, pki: Path, start: int, end: int) -> None:
    import torch

    from phage.dataplane import DataPlaneServer
    from phage.dataplane.transport import direct, issue_identity
    from phage.domain.blocks import BlockRange
    from phage.node.stage import StageModel
    from phage.node.stage_service import StageHandler
    from phage.pki.ca import CertificateAuthority
    from phage.pki.identity import NodeIdentity

    torch.set_num_threads(1)
    ident = issue_identity(CertificateAuthority.load_or_create(pki), NodeIdentity.generate())
    stage = StageModel(model, BlockRange(start, end))
    handler = StageHandler({"bench": stage}, dial=direct(ident), node_id=ident.node_id)
    server = DataPlaneServer(ident, {"stage": handler})
    await server.start()
    print(ident.node_id, server.address, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


if __name__ == "__main__":
    model, pki, start, end = sys.argv[1:5]
    asyncio.run(main(Path(model), Path(pki), int(start), int(end)))
