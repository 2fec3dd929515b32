"""Chat templates: the Jinja program that ships with a checkpoint and turns messages into prompt text.

A template comes from whoever published the model, so we treat it as untrusted code. It runs in
Jinja's ``ImmutableSandboxedEnvironment``: it cannot reach attributes that start with an underscore
(``__class__``, ``__globals__``, ...), call unsafe methods, or modify the lists and dicts we pass in,
and nothing it can reach opens files or runs programs. Any attempt raises ``jinja2.sandbox.SecurityError``.

The environment matches what transformers gives templates (``trim_blocks``, ``lstrip_blocks``, the
``loopcontrols`` extension, ``raise_exception``, ``strftime_now`` and a ``tojson`` that does not escape HTML),
so a template renders here exactly as with ``tokenizer.apply_chat_template`` there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str) -> None:
    """Lets a template reject a conversation it cannot format, e.g. two user turns in a row."""
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """Jinja's own ``tojson`` escapes "<" and ">" for HTML; a prompt wants the plain JSON."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a template once in a fresh sandboxed environment (cached by its source text)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def check_messages(messages: Sequence[dict]) -> None:
    """Fail early, with the position of the bad message, instead of deep inside the template."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError('messages must be a list like [{"role": "user", "content": "Hi"}].')
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f'messages[{i}] must be a dict with "role" and "content" keys, got {message!r}.')


def render_chat_template(
    template: str, messages: Sequence[dict], add_generation_prompt: bool = True, **kwargs
) -> str:
    """Render ``messages`` with ``template``; ``kwargs`` (bos_token, eos_token, tools, ...) reach the template."""
    check_messages(messages)
    compiled = compile_chat_template(template)
    return compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt, **kwargs)
