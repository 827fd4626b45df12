"""The in-process engine: a Hugging Face causal LM through transformers, on CPU or GPU.

Generation runs in a worker thread (one at a time: the model is shared) so the
node's event loop keeps heartbeating while a completion is computed.

A prompt is measured against the model's context before any work: one longer
than the context is refused at once (``InvalidInput``, which the coordinator
answers with a 400 naming the limit), and the completion is cut to what the
context has left. A long prompt is prefilled in chunks, with a look between two
at whether the client is still there, so a client that hangs up stops even a
prefill of minutes within one chunk's time.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from phage.domain.chatcheck import Scores
from phage.domain.text import apply_stops as _apply_stops
from phage.domain.text import prompt_text
from phage.domain.text import safe_prefix as _safe_prefix
from phage.errors import EngineError, InvalidInput
from phage.node.engines.base import Delta, Engine, GenerationRequest

PREFILL_CHUNK = 512
"""Prompt tokens run per forward step of a chunked prefill."""
CHARS_PER_TOKEN_BOUND = 256
"""No token spans more characters: a prompt longer than context × this is refused untokenized."""
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class TransformersEngine(Engine):
    """A local model directory (or hub id available offline) loaded with AutoModelForCausalLM."""

    name = "transformers"

    def __init__(
        self, model_path: str, *, name: str | None = None, prefill_chunk: int = PREFILL_CHUNK
    ) -> None:
        self.model_path = model_path
        self.prefill_chunk = prefill_chunk
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

    def memory_bytes(self) -> int | None:
        """Bytes the weights take (parameters × element size), once loaded."""
        if self._model is None:
            return None
        return int(sum(p.numel() * p.element_size() for p in self._model.parameters()))

    @property
    def context_length(self) -> int | None:
        """Tokens the model attends over (prompt and completion together), once loaded."""
        config = getattr(self._model, "config", None)
        for key in _CONTEXT_KEYS:
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _encode(self, request: GenerationRequest) -> Any:
        """The prompt's token ids, or InvalidInput when it cannot fit the context."""
        text = self._prompt_text(request)
        context = self.context_length
        field = "messages" if request.is_chat else "prompt"
        if context is not None and len(text) > context * CHARS_PER_TOKEN_BOUND:
            raise InvalidInput(
                f"the prompt ({len(text)} characters) is longer than the context of {self._name!r}: "
                f"{context} tokens",
                field=field,
            )
        ids = self._tokenizer(text, return_tensors="pt")
        tokens = int(ids["input_ids"].shape[1])
        if context is not None and tokens >= context:
            raise InvalidInput(
                f"the prompt is {tokens} tokens; the context of {self._name!r} is {context} tokens "
                "(prompt and completion together)",
                field=field,
            )
        return ids

    def _prompt_text(self, request: GenerationRequest) -> str:
        messages = tuple((m.role, m.content) for m in request.messages)
        return prompt_text(self._tokenizer, request.prompt, messages)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield decoded text as tokens come; leaving early stops the worker thread at the next token."""
        if request.extras_json:
            asked = next(iter(json.loads(request.extras_json)), "tools")
            raise InvalidInput(f"the transformers engine cannot honour {asked}", field=asked)
        if self._model is None:
            await self.start()
        inputs = await asyncio.to_thread(self._encode, request)  # refuses before any model work
        async with self._lock:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            stop_flag = threading.Event()

            def emit(kind: str, value: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

            worker = loop.run_in_executor(None, self._run, request, inputs, stop_flag, emit)
            text, sent = "", 0
            ids: list[int] = []
            prompt_tokens = completion_tokens = 0
            finish = "length"
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "prompt":
                        prompt_tokens = int(value)
                    elif kind == "text":
                        ids, text = value
                        completion_tokens = len(ids)
                        cut, hit = _apply_stops(text, request.stop)
                        safe = _safe_prefix(cut, request.stop) if not hit else cut
                        if len(safe) > sent:
                            yield Delta(safe[sent:])
                            sent = len(safe)
                        if hit:
                            finish = "stop"
                            stop_flag.set()
                            text = cut
                            break
                    elif kind == "error":
                        raise EngineError(f"generation failed: {value}")
                    else:  # done
                        finish = "length" if completion_tokens >= request.max_tokens else "stop"
                        break
                if finish != "stop" or len(text) > sent:
                    tail = _apply_stops(text, request.stop)[0]
                    if len(tail) > sent:
                        yield Delta(tail[sent:])
                yield Delta("", finish, prompt_tokens, completion_tokens, tuple(ids))
            finally:
                stop_flag.set()
                await asyncio.shield(worker)

    def _prefill(self, inputs: Any, stop_flag: threading.Event) -> Any:
        """Run all but the prompt's last token through the model in chunks; None if the client left.

        Returns the filled cache, which ``generate`` continues from (it computes only
        the tokens the cache lacks). A short prompt needs none of this (None, too).
        """
        from transformers import DynamicCache

        ids = inputs["input_ids"]
        prefix = int(ids.shape[1]) - 1
        cache = DynamicCache(config=self._model.config)
        for start in range(0, prefix, self.prefill_chunk):
            if stop_flag.is_set():
                return None
            end = min(prefix, start + self.prefill_chunk)
            self._model(
                input_ids=ids[:, start:end],
                attention_mask=inputs["attention_mask"][:, :end],
                use_cache=True,
                **{self._cache_arg(): cache},
            )
        return cache

    def _cache_arg(self) -> str:
        """The keyword a forward step takes its cache by (``past_key_values`` before transformers 5)."""
        return "cache" if "cache" in inspect.signature(self._model.forward).parameters else "past_key_values"

    def _run(self, request: GenerationRequest, inputs: Any, stop_flag: threading.Event, emit: Any) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok, model = self._tokenizer, self._model
        try:
            inputs = inputs.to(self._device)
            prompt_len = int(inputs["input_ids"].shape[1])
            emit("prompt", prompt_len)
            cache = None
            if prompt_len > self.prefill_chunk:
                with torch.no_grad():
                    cache = self._prefill(inputs, stop_flag)
                if cache is None:
                    emit("done", None)
                    return
            context = self.context_length
            generated: list[int] = []

            class _Cut(StoppingCriteria):
                """Stops generate() when the consumer left or a stop string appeared."""

                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                    ids = input_ids[0][prompt_len:].tolist()
                    if len(ids) > len(generated):
                        generated[:] = ids
                        emit("text", (list(ids), tok.decode(ids, skip_special_tokens=True)))
                    return stop_flag.is_set()

            kwargs: dict[str, Any] = {
                "max_new_tokens": request.max_tokens
                if context is None
                else max(1, min(request.max_tokens, context - prompt_len)),
                "pad_token_id": tok.pad_token_id,
                "stopping_criteria": StoppingCriteriaList([_Cut()]),
            }
            if request.temperature > 0:
                kwargs |= {"do_sample": True, "temperature": request.temperature}
                if request.top_p is not None:
                    kwargs["top_p"] = request.top_p
            else:
                kwargs["do_sample"] = False
            if cache is not None:
                kwargs[self._cache_arg()] = cache
            if request.seed is not None:
                torch.manual_seed(request.seed)
            with torch.no_grad():
                model.generate(**inputs, **kwargs)
            emit("done", None)
        except Exception as exc:  # reported to the consumer, not lost in the thread
            emit("error", repr(exc))

    async def score(self, request: GenerationRequest, token_ids: list[int]) -> Scores:
        """Teacher forcing: one forward pass over prompt + ``token_ids``, rated as the request samples."""
        if self._model is None:
            await self.start()
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(None, self._score, request, token_ids)

    def _score(self, request: GenerationRequest, token_ids: list[int]) -> Scores:
        import torch

        tok, model = self._tokenizer, self._model
        vocab = int(model.config.vocab_size)
        if any(not 0 <= t < vocab for t in token_ids):
            raise InvalidInput(
                f"token ids must be below the vocabulary size {vocab}", field="check_token_ids"
            )
        prompt = tok(self._prompt_text(request), return_tensors="pt")["input_ids"][0].tolist()
        full = torch.tensor([prompt + token_ids], device=self._device)
        with torch.no_grad():
            logits = model(full).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(token_ids)].float()
        chosen = torch.tensor(token_ids, device=logits.device)
        picked = logits.gather(1, chosen[:, None])[:, 0]
        gap = logits.max(dim=-1).values - picked
        if request.temperature > 0:
            logp = torch.log_softmax(logits / request.temperature, dim=-1)
            if request.top_p is not None and request.top_p < 1.0:
                logp = _nucleus(logp, request.top_p)
        else:
            logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
        entropy = -plogp.sum(dim=-1)
        second = torch.where(p > 0, p * logp * logp, torch.zeros_like(p)).sum(dim=-1)
        variance = (second - entropy * entropy).clamp(min=0)
        eos = tok.eos_token_id
        return Scores(
            tuple(gap.tolist()),
            tuple(logp.gather(1, chosen[:, None])[:, 0].tolist()),
            tuple(entropy.tolist()),
            tuple(variance.tolist()),
            str(tok.decode(token_ids, skip_special_tokens=True)),
            int(eos) if eos is not None else None,
        )

    async def close(self) -> None:
        """Drop the model."""
        self._model = None
        self._tokenizer = None


def _nucleus(logp: Any, top_p: float) -> Any:
    """Log-probabilities renormalised over the smallest set of tokens whose mass reaches ``top_p``."""
    import torch

    sorted_lp, order = logp.sort(dim=-1, descending=True)
    mass_before = sorted_lp.exp().cumsum(dim=-1) - sorted_lp.exp()
    keep_sorted = mass_before < top_p  # the first token is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, logp, torch.full_like(logp, float("-inf")))
    return torch.log_softmax(kept, dim=-1)
