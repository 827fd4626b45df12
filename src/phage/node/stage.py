"""One stage of a sharded model: a contiguous block range of a decoder checkpoint, in process.

A node serving blocks ``start:end`` loads only those blocks' weights from the
checkpoint's safetensors files (plus the token embeddings when its range starts
at block 0, and the final norm and head when it ends at the last block), builds
them with transformers' own classes for the architecture (Llama, Qwen2, Mistral
— every decoder whose blocks live under ``model.layers``), and keeps one
attention cache per session. Chaining stages that cover every block reproduces
the whole model's forward pass operation for operation, so greedy decoding
through a chain gives the whole model's tokens.

Torch work is synchronous; callers run it in a worker thread.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from phage.domain.blocks import BlockRange
from phage.errors import InvalidInput, NotFound

LAYER_PREFIX = "model.layers."
EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
HEAD = "lm_head.weight"


def checkpoint_blocks(path: Path) -> int:
    """The number of decoder blocks in a checkpoint (its config's ``num_hidden_layers``)."""
    config = path / "config.json"
    if not config.is_file():
        raise InvalidInput(f"{path} holds no config.json: not a Hugging Face checkpoint", field="checkpoint")
    return int(json.loads(config.read_text())["num_hidden_layers"])


def _tensor_names(path: Path) -> dict[str, Path]:
    """Every tensor name in the checkpoint, mapped to the safetensors file that holds it."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InvalidInput(f"{path} holds no .safetensors weights", field="checkpoint")
    names: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                names[name] = f
    return names


class StageModel:
    """Blocks ``blocks`` of the checkpoint at ``path``, with a per-session attention cache."""

    def __init__(self, path: Path, blocks: BlockRange, *, max_sessions: int = 64) -> None:
        total = checkpoint_blocks(path)
        if blocks.end > total:
            raise InvalidInput(
                f"block range {blocks} is outside the checkpoint, which has blocks 0:{total}", field="blocks"
            )
        self.path = path
        self.blocks = blocks
        self.total_blocks = total
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._load()

    @property
    def first(self) -> bool:
        """True when this stage embeds tokens (its range starts at block 0)."""
        return self.blocks.start == 0

    @property
    def last(self) -> bool:
        """True when this stage ends in the head and returns logits."""
        return self.blocks.end == self.total_blocks

    def _load(self) -> None:
        import torch
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.path)
        stage_config = copy.deepcopy(config)
        stage_config.num_hidden_layers = len(self.blocks)
        # Build the stage's skeleton without allocating or initialising weights, then assign the real ones.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(stage_config, attn_implementation="sdpa")  # type: ignore[no-untyped-call]
        wanted: dict[str, str] = {}  # checkpoint name -> stage name
        names = _tensor_names(self.path)
        for name in names:
            if name.startswith(LAYER_PREFIX):
                index, _, rest = name[len(LAYER_PREFIX) :].partition(".")
                if int(index) in self.blocks:
                    wanted[name] = f"{LAYER_PREFIX}{int(index) - self.blocks.start}.{rest}"
        if self.first:
            wanted[EMBED] = EMBED
        if self.last:
            wanted[NORM] = NORM
            wanted[HEAD if HEAD in names else EMBED] = HEAD  # tied embeddings: the head is the embedding
        state: dict[str, Any] = {}
        for file in {names[n] for n in wanted}:
            with safe_open(str(file), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if name in wanted:
                        state[wanted[name]] = fh.get_tensor(name)
        if EMBED in wanted.values() and self.first and EMBED not in state and HEAD in state:
            state[EMBED] = state[HEAD]
        model.load_state_dict(state, strict=False, assign=True)
        inner = model.model
        # Rotary frequencies are buffers computed from the config, not weights: rebuild them for real.
        inner.rotary_emb = type(inner.rotary_emb)(config=stage_config)
        if not self.first:
            inner.embed_tokens = None
        if not self.last:
            inner.norm = None
            model.lm_head = None
        leftover = [n for n, p in model.named_parameters() if p.is_meta]
        if leftover:
            raise InvalidInput(
                f"the checkpoint lacks weights for {', '.join(leftover[:4])}", field="checkpoint"
            )
        model.eval()
        self._config = stage_config
        self._model = model
        self.dtype = next(model.parameters()).dtype
        self.hidden_size = int(stage_config.hidden_size)

    def memory_bytes(self) -> int:
        """Bytes the stage's weights take."""
        return int(sum(p.numel() * p.element_size() for p in self._model.parameters()))

    def session_length(self, session: str) -> int:
        """Tokens this stage has cached for ``session`` in its last block (0 for a new one)."""
        cache = self._sessions.get(session)
        return int(cache.get_seq_length(len(self.blocks) - 1)) if cache is not None else 0

    def forward(self, session: str, inputs: Any, *, start: int | None = None) -> Any:
        """Run the stage for the next positions of ``session``.

        ``inputs`` is a 1-D tensor of token ids when the run starts at block 0, else the
        previous stage's hidden states shaped ``(1, n, hidden)``. ``start`` (a block of
        this range; default its first) skips blocks a previous stage of the chain ran
        already. Returns hidden states of the same shape, or on the last stage the
        logits of the final position (``(vocab,)``).
        """
        import torch
        from transformers import DynamicCache
        from transformers.masking_utils import create_causal_mask

        with self._lock:
            cache = self._sessions.get(session)
            if cache is None:
                cache = DynamicCache(config=self._config)
                self._sessions[session] = cache
                while len(self._sessions) > self.max_sessions:  # the oldest idle session goes first
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(session)
        begin = self.blocks.start if start is None else start
        if begin not in self.blocks:
            raise InvalidInput(f"block {begin} is not in this stage's range {self.blocks}", field="start")
        skip = begin - self.blocks.start
        inner = self._model.model
        with torch.no_grad():
            hidden = inner.embed_tokens(inputs.reshape(1, -1)) if begin == 0 else inputs.to(self.dtype)
            past = int(cache.get_seq_length(skip))
            positions = torch.arange(past, past + hidden.shape[1]).unsqueeze(0)
            mask = create_causal_mask(
                config=self._config,
                inputs_embeds=hidden,
                attention_mask=None,
                cache=cache,
                position_ids=positions,
                layer_idx=skip,
            )
            rotary = inner.rotary_emb(hidden, position_ids=positions)
            for layer in inner.layers[skip:]:
                hidden = layer(
                    hidden,
                    attention_mask=mask,
                    position_embeddings=rotary,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                )
            if not self.last:
                return hidden
            return self._model.lm_head(inner.norm(hidden[:, -1:, :]))[0, -1]

    def end_session(self, session: str) -> None:
        """Drop ``session``'s cache."""
        with self._lock:
            if self._sessions.pop(session, None) is None:
                raise NotFound(f"no session {session!r} on this stage", field="session")

    @property
    def sessions(self) -> int:
        """Sessions with a cache here."""
        return len(self._sessions)
