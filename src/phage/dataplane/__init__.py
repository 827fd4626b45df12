"""The data plane: tensors node to node over gRPC with mutual TLS under the pool's CA.

Generic on purpose: sharded-model stages use it for activations, and training
jobs can use it the same way (register a :class:`Handler` under a service name).
"""

from phage.dataplane.tensors import tensor_from_pb, tensor_to_pb
from phage.dataplane.transport import Conversation, DataPlaneServer, Handler, Peer, TLSIdentity

# chain.py (generation through a chain, failover), checks.py (checked activations) and
# generation.py (text over a chain) build on these; import them by their module.

__all__ = [
    "Conversation",
    "DataPlaneServer",
    "Handler",
    "Peer",
    "TLSIdentity",
    "tensor_from_pb",
    "tensor_to_pb",
]
