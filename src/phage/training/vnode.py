"""One VNode at run time: its blocks, its local head, its optimizer, and its checkpoint.

A VNode trains on its own loss only: the activations it passes on are detached, so
no gradient leaves it (gradient locality). Its state — weights, optimizer moments,
step count and the last batch it applied — round-trips through one safetensors
blob, which is what lets it move to another machine and go on.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from phage.errors import InvalidInput
from phage.training.blocks import block_type
from phage.training.checkpoint import checkpoint_metadata
from phage.training.modules import PoolHead
from phage.training.spec import NetworkSpec, OptimizerSpec, VNodeSpec


def vnode_seed(seed: int, vnode_id: str) -> int:
    """The initialisation seed of one VNode: the same wherever the VNode is built."""
    return (seed * 1_000_003 + zlib.crc32(vnode_id.encode())) % (1 << 31)


def build_body(spec: VNodeSpec) -> nn.Sequential:
    """The VNode's blocks as one torch module."""
    return nn.Sequential(*[block_type(b.type, "type").make(b.in_shape, b.params) for b in spec.blocks])


def combine(spec: VNodeSpec, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Join a VNode's inputs the way its spec says."""
    if len(inputs) == 1:
        return inputs[0]
    if spec.combine == "add":
        return torch.stack(list(inputs)).sum(dim=0)
    return torch.cat(list(inputs), dim=-1)


def make_optimizer(
    spec: OptimizerSpec, params: Sequence[nn.Parameter], *, fused: bool = True
) -> torch.optim.Optimizer:
    """The optimizer a spec names, in PyTorch's fused form: one pass over each parameter per step.

    PyTorch's default on CPU updates each parameter with half a dozen separate
    element-wise kernels; for a 1024×1024 VNode that was half of a step's time.
    The fused kernel computes the same update in one pass (and is deterministic,
    so a recomputed step still matches bit for bit).
    """
    if spec.kind == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, fused=fused or None)
    return torch.optim.Adam(params, lr=spec.lr, fused=fused or None)


def local_loss(loss: str, logits: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """A VNode's objective on its head's logits."""
    if loss == "mse":
        return nn.functional.mse_loss(logits, nn.functional.one_hot(y, classes).to(logits.dtype))
    return nn.functional.cross_entropy(logits, y)


class VNodeRuntime:
    """A VNode's module, head and optimizer, trained on its local objective."""

    def __init__(self, net: NetworkSpec, vnode_id: str, *, seed: int) -> None:
        self.net = net
        self.spec = net.vnode(vnode_id)
        torch.manual_seed(vnode_seed(seed, vnode_id))
        self.body = build_body(self.spec)
        out = self.spec.out_shape
        self.head: nn.Module | None = (
            PoolHead(out[0] if len(out) != 2 else out[1], net.classes, len(out))
            if self.spec.objective.head == "linear"
            else None
        )
        self.params = [*self.body.parameters(), *(self.head.parameters() if self.head else [])]
        self.opt = make_optimizer(net.optimizer, self.params)
        self.step = 0
        """Optimizer steps applied so far."""
        self.last_batch = -1
        """Sequence number of the last batch applied: a batch at or below it is a duplicate."""
        self.tamper: Callable[[Sequence[nn.Parameter]], None] | None = None
        """Test fault hook: alters gradients before the optimizer step (a poisoning node)."""

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """The VNode's prediction from its output: through its head, or the output itself."""
        return self.head(out) if self.head is not None else out

    def train_step(
        self, seq: int, inputs: Sequence[torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, float] | None:
        """Apply one batch (numbered ``seq``); returns the detached output and the local loss.

        A batch numbered at or below the last one applied is a late duplicate: it is
        ignored (``None``), so no batch is ever counted twice.
        """
        if seq <= self.last_batch:
            return None
        self.body.train()
        x = combine(self.spec, inputs)
        out = self.body(x)
        loss = local_loss(self.spec.objective.loss, self.logits(out), y, self.net.classes)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.tamper is not None:
            self.tamper(self.params)
        self.opt.step()
        self.step += 1
        self.last_batch = seq
        return out.detach(), float(loss.detach())

    @torch.no_grad()
    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inference: the VNode's output for these inputs."""
        self.body.eval()
        return self.body(combine(self.spec, inputs))  # type: ignore[no-any-return]

    # ---- checkpoints ------------------------------------------------------------

    def state_bytes(self) -> bytes:
        """Weights, optimizer state and progress as one safetensors blob."""
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.body.state_dict().items():
            tensors[f"body.{k}"] = v.detach().contiguous()
        if self.head is not None:
            for k, v in self.head.state_dict().items():
                tensors[f"head.{k}"] = v.detach().contiguous()
        opt = self.opt.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
                tensors[f"opt.{pid}.{k}"] = t.detach().contiguous()
        meta = {
            "vnode": self.spec.id,
            "step": str(self.step),
            "last_batch": str(self.last_batch),
            "param_groups": json.dumps(opt["param_groups"]),
        }
        return st_save(tensors, metadata=meta)

    def load_state(self, blob: bytes) -> None:
        """Restore from :meth:`state_bytes` (of a VNode with the same spec)."""
        try:
            tensors = st_load(blob)
            meta = checkpoint_metadata(blob)
        except Exception as exc:
            raise InvalidInput(
                f"checkpoint is not a valid safetensors blob: {exc}", field="checkpoint"
            ) from None
        if meta.get("vnode") != self.spec.id:
            raise InvalidInput(
                f"checkpoint belongs to VNode {meta.get('vnode')!r}, not {self.spec.id!r}", field="checkpoint"
            )
        body = {k[5:]: v for k, v in tensors.items() if k.startswith("body.")}
        self.body.load_state_dict(body)
        if self.head is not None:
            self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        self.step = int(meta["step"])
        self.last_batch = int(meta["last_batch"])

    def digest(self) -> str:
        """sha256 over every weight and optimizer tensor in name order.

        safetensors' header order is not stable between runs, so two equal states
        may serialise to different bytes; this digest is what recomputation compares.
        """
        h = hashlib.sha256(f"{self.spec.id}:{self.step}:{self.last_batch}".encode())
        tensors = {**{f"body.{k}": v for k, v in self.body.state_dict().items()}}
        if self.head is not None:
            tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        for pid, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    def weights(self) -> dict[str, torch.Tensor]:
        """Weights only (no optimizer state), keyed under the VNode's id: for the network's download."""
        out = {f"{self.spec.id}.body.{k}": v for k, v in self.body.state_dict().items()}
        if self.head is not None:
            out.update({f"{self.spec.id}.head.{k}": v for k, v in self.head.state_dict().items()})
        return out
