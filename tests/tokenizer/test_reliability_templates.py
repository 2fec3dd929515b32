"""Hostile and broken chat templates (tokenizer/chat.py): refused in under a second, with less than 100 MB of
extra memory, by a ChatTemplateError that names the template.

Each hostile template runs in its own Python process, under an address-space cap (RLIMIT_AS) and a timeout, so
that if the limits in chat.py ever regress this test fails instead of taking the machine down. The process
measures its own peak memory (VmHWM) against its memory before, and the peak of the child chat.py forks
(RUSAGE_CHILDREN) against that of a child that does nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import MEASURE_PRELUDE
from tokenizer import ChatTemplateError, render_chat_template

ROOT = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "hi"}]

MEASURE = MEASURE_PRELUDE + textwrap.dedent("""
    virtual, _ = statm()
    resource.setrlimit(resource.RLIMIT_AS, (virtual + 2**30, virtual + 2**30))  # the safety net: 1 GB more
    from tokenizer.chat import ChatTemplateError, render_chat_template
    _, before = statm()
    if os.fork() == 0:  # a child that does nothing: what a forked child's peak is before it renders anything
        os._exit(0)
    os.wait()
    child_before = 1024 * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    try:
        render_chat_template(sys.argv[1], [{"role": "user", "content": "hi"}])
        error = None
    except ChatTemplateError as err:
        error = str(err)
    seconds = time.perf_counter() - start
    child_peak = 1024 * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    extra = max(peak_rss() - before, child_peak - child_before)
    print(json.dumps({"error": error, "seconds": seconds, "extra_mb": extra / 2**20}))
""")

HOSTILE = {  # name: (template, a piece of the error)
    "repeat_constant": ("{{ 'a' * 10**10 }}", "memory"),  # Jinja folds constants while compiling
    "doubling_loop": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                      "{% endfor %}{{ ns.s | length }}", "memory"),
    "center": ("{{ 'a'.center(10**9) }}", "memory"),
    # Whichever limit trips first depends on the machine's speed: each is a refusal within the bounds.
    "tojson_of_references": ("{{ ([messages] * 10**6) | tojson }}", "memory|longer than 0.5 s|output is longer"),
    "nested_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "longer than 0.5 s"),
    "huge_power": ("{{ 10 ** (10 ** 9) }}", "longer than 0.5 s"),
    "long_output": ("{% for i in range(100000) %}{% for j in range(100) %}{{ 'xxxxxxxxxx' }}{% endfor %}"
                    "{% endfor %}", "output is longer than 2000000 characters"),
    "lipsum": ("{{ lipsum(10**6) }}", "memory|longer than 0.5 s|output is longer"),
}


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures memory through /proc (Linux)")
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_template_is_refused_fast_and_small(name):
    template, message = HOSTILE[name]
    run = subprocess.run([sys.executable, "-c", MEASURE, template], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["error"] is not None and result["error"].startswith("the chat template ")
    assert re.search(message, result["error"]), result["error"]
    assert result["seconds"] < 1.0, result
    assert result["extra_mb"] < 100, result


def test_limits_are_arguments_and_leave_real_templates_alone():
    # A long conversation renders in full: 3000 turns of 500 characters (1.5M characters) fit the limits.
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"{i:04d}" + "x" * 496} for i in range(3000)]
    text = render_chat_template("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", turns)
    assert text == "".join(f"{m['role']}: {m['content']}\n" for m in turns)
    with pytest.raises(ChatTemplateError, match="output is longer than 100 characters"):
        render_chat_template("{{ 'x' * 101 }}", USER, max_chars=100)
    assert render_chat_template("{{ 'x' * 100 }}", USER, max_chars=100) == "x" * 100
    with pytest.raises(ChatTemplateError, match="my.jinja took longer than 0.05 s"):
        render_chat_template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                             USER, template_name="my.jinja", max_seconds=0.05)


@pytest.mark.parametrize("template, message", [
    ("{% if messages %}{% endif %}", "rendered nothing for these messages"),
    ("  \n ", "rendered nothing for these messages"),
    ("{% for m in messages %}{{ m.content }", "does not compile: TemplateSyntaxError"),
    ("{{ messages[0].content + none }}", "failed: TypeError: can only concatenate str"),
    ("{{ raise_exception('System role not supported') }}", "refused these messages: System role not supported"),
])
def test_broken_templates_get_one_clear_error(template, message):
    with pytest.raises(ChatTemplateError, match=message) as caught:
        render_chat_template(template, USER, template_name="the chat template of x/tokenizer_config.json")
    assert str(caught.value).startswith("the chat template of x/tokenizer_config.json ")


def test_content_none_is_named_unless_the_turn_calls_tools():
    with pytest.raises(ValueError, match=r'messages\[1\]\["content"\] is None: give the text as a string'):
        render_chat_template("{{ messages }}", [*USER, {"role": "assistant", "content": None}])
    calls = [{"type": "function", "function": {"name": "f", "arguments": {}}}]
    text = render_chat_template("{% for m in messages %}{{ m.content is none }}{% endfor %}",
                                [*USER, {"role": "assistant", "content": None, "tool_calls": calls}])
    assert text == "FalseTrue"

