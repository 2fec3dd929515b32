"""Chat templates (tokenizer/chat.py) and the Llama-3 / Qwen2 flavours of byte-level BPE, against transformers.

A tiny Llama-3-style tokenizer is trained here with the `tokenizers` library (see `save_tiny_bpe`) and
saved by transformers with a chat template. Templates must render exactly as transformers'
`apply_chat_template` renders them, and a hostile template must hit the sandbox, not run.
"""

from __future__ import annotations

import json

import jinja2
import pytest
from text_corpus import make_corpus

from tokenizer import ChatTemplateError, ChatTemplateRefusal, load_tokenizer

# The Split regex of Llama-3's tokenizer.json.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "You are helpful." %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Conversation roles must be user or assistant, not ' + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
SMOLLM2_TEMPLATE = (  # as shipped in SmolLM2-135M-Instruct's GGUF (tokenizer.chat_template)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
FEATURES_TEMPLATE = """{% set ns = namespace(n=0) %}
{% for m in messages %}
  {% if m.role == 'skip' %}{% continue %}{% endif %}
  {% set ns.n = ns.n + 1 %}
{{ ns.n }}: {{ m | tojson }}
  {% if ns.n >= 3 %}{% break %}{% endif %}
{% endfor %}
{{ eos_token }}"""
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "  Answer briefly.  "}, {"role": "user", "content": "2 + 2 = ?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 你好 🤖"},
     {"role": "user", "content": "Write <b>code</b>:\n\tprint('x')"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "<|eot_id|> inside"}],
]


def save_tiny_bpe(folder, split_regex: str, nfc: bool = False):
    """Train a tiny byte-level BPE with `tokenizers` (a regex Split, then ByteLevel without its own regex,
    ignore_merges, BOS added by a TemplateProcessing post-processor; NFC normalizer like Qwen2 if ``nfc``),
    save it with transformers into ``folder``; return the transformers tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC() if nfc else None
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(make_corpus(600, seed=7), trainer)
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", 0)])
    spec = json.loads(backend.to_str())
    spec["model"]["ignore_merges"] = True  # Llama-3: a piece that is a whole token is not merged up
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                 bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE)
    hf.save_pretrained(folder)
    return hf


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(folder, transformers tokenizer) of the tiny Llama-3-style tokenizer."""
    folder = tmp_path_factory.mktemp("llama3-style")
    return folder, save_tiny_bpe(folder, LLAMA3_SPLIT)


def assert_same_as_transformers(ours, hf, corpus: list[str], add_special_tokens: bool) -> None:
    for text, want in zip(corpus, hf(corpus, add_special_tokens=add_special_tokens)["input_ids"]):
        assert ours.encode(text, add_special_tokens) == want, text
        assert ours.decode(want) == hf.decode(want), text
        assert ours.decode(want, skip_special_tokens=True) == hf.decode(want, skip_special_tokens=True), text


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_llama3_style_bpe_matches_transformers(folders, add_special_tokens):
    folder, hf = folders
    assert_same_as_transformers(load_tokenizer(folder), hf, make_corpus(1000, seed=8), add_special_tokens)


def test_qwen2_style_nfc_bpe_matches_transformers(tmp_path):
    hf = save_tiny_bpe(tmp_path, LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"), nfc=True)
    assert_same_as_transformers(load_tokenizer(tmp_path), hf, make_corpus(500, seed=9), add_special_tokens=True)


@pytest.mark.parametrize("template", [None, SMOLLM2_TEMPLATE, FEATURES_TEMPLATE], ids=["llama3", "smollm2", "features"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_template_matches_transformers(folders, template, add_generation_prompt, conversation):
    folder, hf = folders
    ours = load_tokenizer(folder)
    kwargs = dict(add_generation_prompt=add_generation_prompt, chat_template=template)
    assert ours.apply_chat_template(conversation, **kwargs) == hf.apply_chat_template(conversation, tokenize=False, **kwargs)
    assert ours.apply_chat_template(conversation, tokenize=True, **kwargs) == hf.apply_chat_template(
        conversation, tokenize=True, **kwargs)


def test_template_raise_exception_reaches_the_caller(folders):
    folder, hf = folders
    bad = [{"role": "tool", "content": "x"}]
    with pytest.raises(jinja2.TemplateError, match="roles must be user or assistant, not tool"):
        hf.apply_chat_template(bad)
    with pytest.raises(ChatTemplateRefusal, match="chat_template.jinja refused these messages: Conversation "
                       "roles must be user or assistant, not tool") as refused:
        load_tokenizer(folder).apply_chat_template(bad)
    assert isinstance(refused.value, jinja2.TemplateError)  # what transformers raises, so callers catch either


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ lipsum.__globals__['os'].system('echo pwned') }}",
    "{{ messages.append({'role': 'system', 'content': 'injected'}) }}",
    "{{ messages[0].update(role='system') }}",
])
def test_hostile_templates_hit_the_sandbox(folders, template):
    ours = load_tokenizer(folders[0])
    with pytest.raises(ChatTemplateError, match="the chat_template argument failed: SecurityError"):
        ours.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template)


def test_templates_cannot_read_files(folders, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET", encoding="utf-8")
    ours = load_tokenizer(folders[0])
    for template in (f"{{% include '{secret}' %}}", f"{{% import '{secret}' as s %}}"):
        with pytest.raises(ChatTemplateError, match="no loader"):
            ours.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template)


def test_missing_template_and_bad_messages_get_clear_errors(folders, tmp_path):
    folder, hf = folders
    ours = load_tokenizer(folder)
    with pytest.raises(ValueError, match=r'messages\[1\] must be a dict with "role" and "content"'):
        ours.apply_chat_template([{"role": "user", "content": "a"}, {"content": "no role"}])
    with pytest.raises(TypeError, match="messages must be a list"):
        ours.apply_chat_template("hello")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (tmp_path / "tokenizer.json").write_text((folder / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match="no chat template.*--no-chat"):
        load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "a"}])
