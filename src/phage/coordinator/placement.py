"""Model-aware placement: which node may hold which model, and who should load what.

Work for a model goes only to nodes that have it loaded (sticky routing: a node
keeps its model and keeps getting its work; switching costs minutes on a GPU).
When queued work needs a model that no live node has loaded — or its queue
outgrows the nodes serving it — an idle node that can switch models and has the
memory for it is told so in its next ``HeartbeatResponse.load_model``. A model
that fits no node is refused at submit, naming what it needs and what the pool
offers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from phage.coordinator.chat import ChatRouter
from phage.coordinator.pool import LiveNode, LivePool
from phage.errors import InvalidInput
from phage.scheduler import ReadyQueue
from phage.scheduler.models import describe, estimate_bytes

GROW_FACTOR = 2
"""A model's queue 'grows' past its nodes when it holds more than this many tasks per serving slot."""


class ModelPlacement:
    """Memory fit, load requests, and the measured sizes nodes report."""

    def __init__(
        self,
        pool: LivePool,
        queue: ReadyQueue,
        chat: ChatRouter,
        clock: Callable[[], float],
        *,
        load_timeout_s: float = 600.0,
    ) -> None:
        self.pool, self.queue, self.chat, self.clock = pool, queue, chat, clock
        self.measured: dict[str, int] = {}
        """Model -> bytes, as measured by a node that has it loaded."""
        self.loading: dict[str, tuple[str, float]] = {}
        """Node id -> (model it was asked to load, when)."""
        self.load_timeout_s = load_timeout_s
        self.failed: dict[tuple[str, str], float] = {}
        """(node id, model) -> when a load there did not land in time; not asked again for a while."""

    # ---- facts -------------------------------------------------------------

    def observe(self, live: LiveNode) -> None:
        """Learn from a heartbeat: the loaded model's measured size; a finished load."""
        model, size = live.node.loaded_model, int(live.metrics.get("loaded_model_bytes") or 0)
        if model and size and live.node.trusted:  # an untrusted node's figure could shut a model out
            self.measured[model] = size
        asked = self.loading.get(live.node.id)
        if asked is None:
            return
        if asked[0] in live.models():
            del self.loading[live.node.id]
        elif self.clock() - asked[1] > self.load_timeout_s:
            del self.loading[live.node.id]
            self.failed[(live.node.id, asked[0])] = self.clock()

    @staticmethod
    def memory_of(live: LiveNode) -> int | None:
        """Bytes a model may use on the node (0/None: it did not say)."""
        value = live.metrics.get("model_memory_bytes") or live.node.hardware.get("model_memory_bytes")
        return int(value) if value else None

    @staticmethod
    def can_load(live: LiveNode) -> bool:
        """The node's engine switches models when asked."""
        return bool(live.node.hardware.get("can_load_models"))

    def need(self, model: str) -> int | None:
        """Bytes ``model`` needs, as best known."""
        return estimate_bytes(model, self.measured)

    def fits(self, model: str, live: LiveNode) -> bool:
        """Could the node hold ``model``? (Unknown sizes or memory are given the benefit of the doubt.)"""
        need, have = self.need(model), self.memory_of(live)
        return need is None or have is None or need <= have

    # ---- submit ------------------------------------------------------------

    def check_submit(self, model: str) -> None:
        """Refuse a model no registered node serves or could load, naming what it needs."""
        nodes = [n for n in self.pool.nodes.values() if n.node.state.value != "removed"]
        if any(model in n.models() for n in nodes):
            return
        loaders = [n for n in nodes if self.can_load(n)]
        if any(self.fits(model, n) for n in loaders):
            return
        served = ", ".join(sorted({m for n in nodes for m in n.models()})) or "none"
        if loaders:
            biggest = max((self.memory_of(n) or 0) for n in loaders)
            raise InvalidInput(
                f"model {model!r} needs about {describe(self.need(model))}; the largest node that can load "
                f"models offers {describe(biggest)} (served now: {served}); "
                "set wait_for_model to queue the task until a node that fits joins",
                field="model",
            )
        raise InvalidInput(
            f"no node in this pool serves model {model!r} (served: {served}) and none can load models; "
            "set wait_for_model to queue the task until one joins",
            field="model",
        )

    # ---- load requests -----------------------------------------------------

    def load_hint(self, live: LiveNode) -> str:
        """The model this node should load now, or "" (called on each of its heartbeats)."""
        if not (live.online and self.can_load(live)) or live.node.quarantined or live.node.draining:
            return ""
        if live.attempts or self.chat.active_on(live.node.id):
            return ""  # busy: a switch would kill its work and its chats
        if live.node.id in self.loading:
            return self.loading[live.node.id][0]  # repeat the ask until it lands
        demand = self.queue.depth_by_model()
        if not demand:
            return ""
        mine = live.models()
        if any(demand.get(m) for m in mine):
            return ""  # its own model still has queued work: stay (sticky)
        serving: Counter[str] = Counter()
        for other in self.pool.online_nodes():
            if other.node.quarantined or other.node.draining:
                continue  # takes no work: not capacity
            for m in other.models():
                serving[m] += max(1, other.node.max_concurrency)
        for node_id, (m, _) in list(self.loading.items()):
            loader = self.pool.nodes.get(node_id)
            if loader is None or not loader.online:
                del self.loading[node_id]  # it died or left while loading
            elif node_id != live.node.id:
                serving[m] += 1
        # Models nobody serves first, then the longest queue per serving slot.
        ranked = sorted(demand, key=lambda m: (serving[m] > 0, -demand[m] / max(1, serving[m]), m))
        for model in ranked:
            starved = serving[model] == 0 or demand[model] > GROW_FACTOR * serving[model]
            failed_at = self.failed.get((live.node.id, model))
            if failed_at is not None and self.clock() - failed_at < self.load_timeout_s:
                continue  # it could not load this model lately; ask another node
            if starved and self.fits(model, live):
                self.loading[live.node.id] = (model, self.clock())
                return model
        return ""
