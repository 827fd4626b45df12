"""Inference engines a node manages, behind one interface (vLLM's ``EngineClient`` is the model)."""

from phage.node.engines.base import Engine, Generation, GenerationRequest
from phage.node.engines.factory import ENGINE_KINDS, make_engine

__all__ = ["ENGINE_KINDS", "Engine", "Generation", "GenerationRequest", "make_engine"]
