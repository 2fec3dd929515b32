"""Chat templates: the Jinja program that ships with a checkpoint and turns messages into prompt text.

A template comes from whoever published the model, so we treat it as untrusted code, in two layers:

1. **What it may touch.** It runs in Jinja's ``ImmutableSandboxedEnvironment``: it cannot reach attributes
   that start with an underscore (``__class__``, ``__globals__``, ...), call unsafe methods, or modify the
   lists and dicts we pass in, and nothing it can reach opens files or runs programs.
2. **How much it may use.** The sandbox stops code, not loops or memory: ``{{ 'a' * 10**10 }}`` or two nested
   ``range(100000)`` loops would take the machine down. So the template renders in a forked child process
   with an address-space cap (``RLIMIT_AS``) and a deadline, the way a browser runs a page's scripts; the
   text comes back through a pipe, at most ``max_chars`` characters of it. (Without ``os.fork``, e.g. on
   Windows, it renders in this process with the sandbox only.)

Every failure is a :class:`ChatTemplateError` (a ``ValueError``) whose message names the template; when the
template itself refuses a conversation with ``raise_exception("...")`` -- Mistral, Gemma and Llama-2 templates
do this for a system message -- it is a :class:`ChatTemplateRefusal` carrying the template's own words.

The environment matches what transformers gives templates (``trim_blocks``, ``lstrip_blocks``, the
``loopcontrols`` extension, ``raise_exception``, ``strftime_now`` and a ``tojson`` that does not escape HTML),
so a template renders here exactly as with ``tokenizer.apply_chat_template`` there.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SECONDS = 0.5  # real templates compile and render in milliseconds
MAX_CHARS = 2_000_000  # ~500k tokens: more than the context windows this project runs
MAX_EXTRA_BYTES = 96 * 2**20  # address space the rendering child may add to what it inherits


class ChatTemplateError(ValueError):
    """A chat template that cannot be compiled or rendered, or that broke a limit."""


class ChatTemplateRefusal(ChatTemplateError, jinja2.TemplateError):
    """The template called ``raise_exception(message)``: the conversation is not one it can format."""


def _raise_exception(message: str) -> None:
    """Lets a template reject a conversation it cannot format, e.g. two user turns in a row."""
    raise ChatTemplateRefusal(message)


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
        if message["content"] is None and "tool_calls" not in message:  # None is for a turn that only calls tools
            raise ValueError(f'messages[{i}]["content"] is None: give the text as a string ("" for an empty turn).')


def render_chat_template(
    template: str,
    messages: Sequence[dict],
    add_generation_prompt: bool = True,
    template_name: str = "the chat template",
    max_seconds: float = MAX_SECONDS,
    max_chars: int = MAX_CHARS,
    **kwargs,
) -> str:
    """Render ``messages`` with ``template``; ``kwargs`` (bos_token, eos_token, tools, ...) reach the template.

    ``template_name`` (e.g. the file it came from) names it in errors. Raises :class:`ChatTemplateError`
    when it does not compile, fails, takes longer than ``max_seconds``, needs more than ``MAX_EXTRA_BYTES``
    of memory, writes more than ``max_chars`` characters, or writes nothing.
    """
    check_messages(messages)
    variables = dict(messages=list(messages), add_generation_prompt=add_generation_prompt, **kwargs)
    if hasattr(os, "fork"):
        kind, text = _render_in_child(template, variables, max_seconds, max_chars)
    else:
        kind, text = _render(template, variables, max_chars)
    if kind == "refused":
        raise ChatTemplateRefusal(f"{template_name} refused these messages: {text}")
    if kind == "syntax":
        raise ChatTemplateError(f"{template_name} does not compile: {text}")
    if kind == "error":
        raise ChatTemplateError(f"{template_name} failed: {text}")
    if kind == "timeout":
        raise ChatTemplateError(f"{template_name} took longer than {max_seconds:g} s to render (a loop that "
                                "does not end?): use another template (chat_template=...) or --no-chat")
    if not text.strip():
        raise ChatTemplateError(f"{template_name} rendered nothing for these messages: check the template, "
                                "or encode the prompt as plain text (--no-chat)")
    return text


def _render(template: str, variables: dict, max_chars: int) -> tuple[str, str]:
    """Compile and render; -> ("ok", text) or ("syntax" | "refused" | "error", message). Never raises.

    Compiling is untrusted work too: Jinja computes constant expressions such as ``'a' * 10**10`` then."""
    try:
        compiled = compile_chat_template(template)
    except (jinja2.TemplateSyntaxError, RecursionError, MemoryError) as err:
        return "syntax", f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 -- e.g. a constant expression that fails while it is folded
        return "error", f"{type(err).__name__}: {err}"
    try:
        pieces, size = [], 0
        for piece in compiled.generate(**variables):  # the output arrives piece by piece: stop when too long
            pieces.append(piece)
            size += len(piece)
            if size > max_chars:
                return "error", f"its output is longer than {max_chars} characters"
        return "ok", "".join(pieces)
    except ChatTemplateRefusal as err:
        return "refused", str(err)
    except MemoryError:
        return "error", f"it needs more than {MAX_EXTRA_BYTES // 2**20} MB of memory"
    except Exception as err:  # noqa: BLE001 -- anything the template does wrong is reported, by type and words
        return "error", f"{type(err).__name__}: {err}"


def _render_in_child(template: str, variables: dict, max_seconds: float,
                     max_chars: int) -> tuple[str, str]:
    """Fork; the child caps its memory, renders, and writes JSON [kind, text] to a pipe; the parent reads it
    before the deadline, or kills the child. -> (kind, text), kind "timeout" when the deadline passed."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() in a process with threads (torch's): the
        warnings.simplefilter("ignore", DeprecationWarning)  # child only runs Jinja on objects already in memory
        pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers (os._exit)
        try:
            os.close(read_end)
            _limit_memory(MAX_EXTRA_BYTES)
            reply = json.dumps(_render(template, variables, max_chars)).encode()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(reply)
        finally:
            os._exit(0)
    os.close(write_end)
    data = None
    try:
        data = _read_until(read_end, time.monotonic() + max_seconds)
    finally:
        os.close(read_end)
        if data is None:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if data is None:
        return "timeout", ""
    try:
        kind, text = json.loads(data)
    except ValueError:  # the child died before writing everything
        return "error", "the process rendering it stopped before answering (out of memory?)"
    return kind, text


def _limit_memory(extra_bytes: int) -> None:
    """Cap this (child) process's address space at what it has now plus ``extra_bytes`` (Linux only)."""
    import resource  # POSIX only, like os.fork

    try:
        with open("/proc/self/statm") as statm:  # the first field is the virtual size in pages
            current = int(statm.read().split()[0]) * resource.getpagesize()
    except OSError:  # no /proc (macOS): the deadline still holds
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _read_until(fd: int, deadline: float) -> bytes | None:
    """Read ``fd`` to its end (the child checked the size); None when the deadline passes first."""
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    return None
