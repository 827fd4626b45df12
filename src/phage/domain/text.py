"""Text rules every generator shares: the prompt a causal LM continues, and stop strings.

Pure functions, used by the in-process engine and by generation through a chain of
nodes, so a sharded model stops, streams and renders chats exactly as a whole one does.
"""

from __future__ import annotations

from typing import Any


def prompt_text(tokenizer: Any, prompt: str, messages: tuple[tuple[str, str], ...]) -> str:
    """The raw ``prompt``, or the chat ``messages`` ((role, content) pairs) in the tokenizer's template."""
    if not messages:
        return prompt
    chat = [{"role": role, "content": content} for role, content in messages]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    # No template (tiny local models): a plain transcript the model continues.
    return "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:"


def apply_stops(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` cut at the first stop string, and whether one was found."""
    hits = [text.index(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def safe_prefix(text: str, stops: list[str]) -> str:
    """The part of ``text`` that cannot turn out to be the start of a stop string (or a torn character)."""
    keep = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = min(keep, len(text) - k)
                break
    while keep > 0 and text[keep - 1] == "\ufffd":
        keep -= 1
    return text[:keep]
