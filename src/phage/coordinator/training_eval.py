"""A trained network on the coordinator: test accuracy, inference and the one-file download (needs torch)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save

from phage.api.requests import MAX_FORWARD_ROWS
from phage.errors import InvalidInput
from phage.training.data import load_dataset
from phage.training.local import accuracy, forward_network
from phage.training.spec import NetworkSpec
from phage.training.vnode import VNodeRuntime


def load_runtimes(net: NetworkSpec, checkpoints: Mapping[str, bytes]) -> dict[str, VNodeRuntime]:
    """Every VNode of a network from its final checkpoint."""
    out = {}
    for v in net.vnodes:
        rt = VNodeRuntime(net, v.id, seed=0)
        rt.load_state(checkpoints[v.id])
        out[v.id] = rt
    return out


def test_accuracy(net: NetworkSpec, dataset: bytes, checkpoints: Mapping[str, bytes]) -> float:
    """Accuracy on the dataset's held-out rows."""
    torch.set_num_threads(1)
    data = load_dataset(dataset, net.input_shape, net.classes)
    return accuracy(net, load_runtimes(net, checkpoints), data.x_test, data.y_test)


def forward(net: NetworkSpec, runtimes: Mapping[str, VNodeRuntime], rows: Sequence[Any]) -> dict[str, Any]:
    """Logits and predicted classes for a batch of input rows."""
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_FORWARD_ROWS:
        raise InvalidInput(f"inputs must be a list of 1 to {MAX_FORWARD_ROWS} rows", field="inputs")
    try:
        x = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInput("inputs must be numbers in rows of one shape", field="inputs") from None
    if tuple(x.shape[1:]) != tuple(net.input_shape):
        raise InvalidInput(
            f"each input row must have shape {list(net.input_shape)}, got {list(x.shape[1:])}", field="inputs"
        )
    logits = forward_network(net, runtimes, torch.from_numpy(x))
    return {"logits": logits.tolist(), "classes": logits.argmax(dim=1).tolist()}


def weights_file(net: NetworkSpec, runtimes: Mapping[str, VNodeRuntime]) -> bytes:
    """The whole trained network as one safetensors file, its spec in the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for rt in runtimes.values():
        tensors.update({k: v.contiguous() for k, v in rt.weights().items()})
    return st_save(tensors, metadata={"phage_network_spec": json.dumps(dict(net.raw))})
