"""Chat prompts: a list of {"role", "content"} messages that each member renders with its own chat template.

lm-eval hands models a prompt string, so a chat it builds (a system instruction, few-shot examples as turns)
travels as CHAT_PREFIX + JSON and is read back where members render their prompts (Member.render_prompt).
"""

from __future__ import annotations

import json

from mixens.errors import ConfigError

ROLES = ("system", "user", "assistant")
CHAT_PREFIX = "\x1emixens-chat\x1e"  # an ASCII record separator: no prompt text starts with it


def check_messages(messages, where: str = "a chat prompt") -> list[dict[str, str]]:
    """The messages as a list of {"role", "content"} dicts, or a ConfigError naming what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConfigError(f"{where} must be a non-empty list of {{'role', 'content'}} messages, got {messages!r}.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ConfigError(
                f"{where}: message {i} must be a dict with exactly 'role' and 'content', got {message!r}."
            )
        if message["role"] not in ROLES or not isinstance(message["content"], str):
            raise ConfigError(f"{where}: message {i} needs a role in {list(ROLES)} and text content, got {message!r}.")
    return [dict(m) for m in messages]


def chat_prompt(messages) -> str:
    """A chat as the one string lm-eval can carry."""
    return CHAT_PREFIX + json.dumps(check_messages(messages), ensure_ascii=False)


def as_messages(prompt) -> list[dict[str, str]] | None:
    """The messages of a chat prompt (a list of messages, or a string from chat_prompt); None for plain text."""
    if isinstance(prompt, str):
        return json.loads(prompt[len(CHAT_PREFIX) :]) if prompt.startswith(CHAT_PREFIX) else None
    return check_messages(prompt)
