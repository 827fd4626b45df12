"""The in-process engine: a Hugging Face causal LM through transformers, on CPU or GPU.

Generation runs in a worker thread (one at a time: the model is shared) so the
node's event loop keeps heartbeating while a completion is computed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from phage.errors import InvalidInput
from phage.node.engines.base import Engine, Generation, GenerationRequest


class TransformersEngine(Engine):
    """A local model directory (or hub id available offline) loaded with AutoModelForCausalLM."""

    name = "transformers"

    def __init__(self, model_path: str, *, name: str | None = None) -> None:
        self.model_path = model_path
        self._name = name or self._default_name(model_path)
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = asyncio.Lock()
        self._device = "cpu"

    @staticmethod
    def _default_name(model_path: str) -> str:
        meta = Path(model_path) / "phage-model.json"
        if meta.exists():
            return str(json.loads(meta.read_text()).get("name") or Path(model_path).name)
        return model_path.rstrip("/").split("/")[-1] if Path(model_path).exists() else model_path

    @property
    def model(self) -> str:
        """The name tasks use for this model."""
        return self._name

    async def start(self) -> None:
        """Load the tokenizer and weights."""
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InvalidInput(
                "the transformers engine needs torch and transformers: pip install 'phage[transformers]'",
                field="engine",
            ) from exc
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._model = AutoModelForCausalLM.from_pretrained(self.model_path).to(self._device)  # type: ignore[arg-type]
        self._model.eval()

    async def generate(self, request: GenerationRequest) -> Generation:
        """Sample a completion (greedy at temperature 0)."""
        if self._model is None:
            await self.start()
        async with self._lock:
            return await asyncio.to_thread(self._generate, request)

    def _generate(self, request: GenerationRequest) -> Generation:
        import torch

        tok, model = self._tokenizer, self._model
        inputs = tok(request.prompt, return_tensors="pt").to(self._device)
        prompt_len = int(inputs["input_ids"].shape[1])
        kwargs: dict[str, Any] = {"max_new_tokens": request.max_tokens, "pad_token_id": tok.pad_token_id}
        if request.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": request.temperature}
        else:
            kwargs["do_sample"] = False
        if request.seed is not None:
            torch.manual_seed(request.seed)
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs)
        new = out[0][prompt_len:]
        text = tok.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= request.max_tokens else "stop"
        for stop in request.stop:
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Generation(text, prompt_len, len(new), finish)

    async def close(self) -> None:
        """Drop the model."""
        self._model = None
        self._tokenizer = None
