"""The frontend language formats conversations exactly as the checkpoint's own chat template does.

Three templates: the project's (what the tiny checkpoint ships), Megrez-3B's published one (another
default system prompt), and one without any default system turn (newlines after the role header
and the turn end). For single-turn, system-first and multi-turn conversations, the text a real
``sgl.function`` writes (SGLang's interpreter, with the template SGLang's own lookup returns for the
checkpoint) equals ``apply_chat_template(..., add_generation_prompt=True)`` of an independently
loaded tokenizer, byte for byte, and so do their token ids. Server round trips are in
test_chat_template_server.py.
"""

import json
import shutil
from pathlib import Path

import pytest
import sglang as sgl
from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.chat_template import get_chat_template_by_model_path
from transformers import PreTrainedTokenizerFast

from megrez_sglang.programs import chat_template
from megrez_sglang.programs.chat_template import ChatTemplateError, checkpoint_chat_template, frontend_text

# Megrez-3B-Instruct's template as published (llama.cpp's chat-template tests carry it verbatim).
MEGREZ_3B_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|role_start|>system<|role_end|>你是Megrez-3B-Instruct，将针对用户的问题给出详细的、积极的回答。"
    "<|turn_end|>' }}{% endif %}{{ '<|role_start|>' + message['role'] + '<|role_end|>' + "
    "message['content'] + '<|turn_end|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|role_start|>assistant<|role_end|>' }}{% endif %}"
)
# No default system turn; a newline after each role header and after each turn end.
NO_DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{{ '<|role_start|>' + message['role'] + '<|role_end|>\\n' + "
    "message['content'] + '<|turn_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|role_start|>assistant<|role_end|>\\n' }}{% endif %}"
)
TEMPLATES = {"project": None, "megrez-3b": MEGREZ_3B_TEMPLATE,
             "no-default-system": NO_DEFAULT_SYSTEM_TEMPLATE}

CONVERSATIONS = {
    "single-turn": [{"role": "user", "content": "世界上最高的山峰是哪座？"}],
    "system-first": [{"role": "system", "content": "You are a math tutor. Answer briefly."},
                     {"role": "user", "content": "What is 12 * 7?\nPut the answer in \\boxed{}."}],
    "multi-turn": [{"role": "user", "content": "小明有3个苹果，又买了5个，现在有多少个？"},
                   {"role": "assistant", "content": "3 + 5 = 8，所以是 $\\boxed{8}$ 个。"},
                   {"role": "user", "content": 'And in JSON? {"answer": "8"}'}],
}


def checkpoint_with_template(source: str, folder: Path, template: str | None) -> str:
    """A copy of `source` whose tokenizer_config.json carries `template` (None: the copy keeps
    what `source` has). The copy's chat_template.jinja is removed: transformers prefers it."""
    if template is None:
        return source
    if not folder.exists():
        shutil.copytree(source, folder)
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    return str(folder)


@pytest.fixture(scope="module")
def template_checkpoints(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("megrez-templates")
    return {name: checkpoint_with_template(tiny_checkpoint, root / f"megrez-{name}", t)
            for name, t in TEMPLATES.items()}


class TemplateOnly(BaseBackend):
    """A backend that only formats: programs that never call gen() run on it unchanged."""

    def __init__(self, template):
        super().__init__()
        self.chat_template = template

    def get_chat_template(self):
        return self.chat_template


@sgl.function
def conversation_program(s, messages):
    role = {"system": sgl.system, "user": sgl.user, "assistant": sgl.assistant}
    for m in messages:
        s += role[m["role"]](m["content"])
    s += sgl.assistant_begin()


def program_text(model_path: str, messages) -> str:
    template = get_chat_template_by_model_path(model_path)  # SGLang's own lookup
    return conversation_program.run(messages=messages, backend=TemplateOnly(template)).text()


def reference_tokenizer(model_path: str):
    return PreTrainedTokenizerFast.from_pretrained(model_path)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_program_text_is_the_checkpoints_chat_rendering(template_checkpoints, template, conversation):
    path, messages = template_checkpoints[template], CONVERSATIONS[conversation]
    tokenizer = reference_tokenizer(path)
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert program_text(path, messages) == expected
    expected_ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                 return_dict=False)
    assert tokenizer.encode(program_text(path, messages)) == list(expected_ids)


def test_each_template_keeps_its_own_default_system_turn(template_checkpoints):
    single = CONVERSATIONS["single-turn"]
    texts = {name: program_text(path, single) for name, path in template_checkpoints.items()}
    assert texts["project"].startswith(
        "<|role_start|>system<|role_end|>你是Megrez2，将针对用户的问题给出详细的、积极的回答。<|turn_end|>")
    assert texts["megrez-3b"].startswith(
        "<|role_start|>system<|role_end|>你是Megrez-3B-Instruct，将针对用户的问题给出详细的、积极的回答。")
    assert texts["no-default-system"] == ("<|role_start|>user<|role_end|>\n世界上最高的山峰是哪座？"
                                          "<|turn_end|>\n<|role_start|>assistant<|role_end|>\n")
    no_default = get_chat_template_by_model_path(template_checkpoints["no-default-system"])
    assert no_default.default_system_prompt is None


def test_the_stop_string_is_the_assistant_turn_end(template_checkpoints):
    for path in template_checkpoints.values():
        assert get_chat_template_by_model_path(path).stop_str == ("<|turn_end|>",)


def test_frontend_text_is_what_the_interpreter_writes(template_checkpoints):
    for path in template_checkpoints.values():
        template = get_chat_template_by_model_path(path)
        for messages in CONVERSATIONS.values():
            assert frontend_text(template, messages) == program_text(path, messages)


def test_a_checkpoint_without_a_template_gets_the_projects(tiny_checkpoint, tmp_path):
    path = tmp_path / "megrez-no-template"
    shutil.copytree(tiny_checkpoint, path)
    (path / "chat_template.jinja").unlink()
    assert "chat_template" not in json.loads((path / "tokenizer_config.json").read_text())
    assert program_text(str(path), CONVERSATIONS["multi-turn"]) == program_text(
        tiny_checkpoint, CONVERSATIONS["multi-turn"])


@pytest.mark.parametrize("template, reason", [
    # trims the content: a program's content would reach the model unchanged, a chat request's not
    ("{% for m in messages %}<|role_start|>{{ m['role'] }}<|role_end|>{{ m['content'] | trim }}"
     "<|turn_end|>{% endfor %}{% if add_generation_prompt %}<|role_start|>assistant<|role_end|>{% endif %}",
     "cannot be expressed as role prefix/suffix pairs"),
    # Llama-2 style: the system prompt goes inside the first user turn
    ("{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
     "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
     "{% for m in msgs %}{% if m['role'] == 'user' %}<|role_start|>user<|role_end|>"
     "{% if loop.first and sys %}<<SYS>>{{ sys }}<</SYS>>{% endif %}{{ m['content'] }}<|turn_end|>"
     "{% else %}<|role_start|>assistant<|role_end|>{{ m['content'] }}<|turn_end|>{% endif %}"
     "{% endfor %}{% if add_generation_prompt %}<|role_start|>assistant<|role_end|>{% endif %}",
     "does not render message content as given"),
    # the generation prompt is not the assistant turn's prefix
    ("{% for m in messages %}<|role_start|>{{ m['role'] }}<|role_end|>{{ m['content'] }}<|turn_end|>"
     "{% endfor %}{% if add_generation_prompt %}<|role_start|>assistant<|role_end|><think>{% endif %}",
     "generation prompt"),
])
def test_a_template_without_a_prefix_suffix_form_is_an_error_naming_the_checkpoint(
        tiny_checkpoint, tmp_path, template, reason):
    path = checkpoint_with_template(tiny_checkpoint, tmp_path / "megrez-odd", template)
    with pytest.raises(ChatTemplateError, match=reason) as error:
        get_chat_template_by_model_path(path)
    assert str(Path(path).resolve()) in str(error.value)


def test_a_rewritten_template_is_read_again(tiny_checkpoint, tmp_path):
    path = Path(checkpoint_with_template(tiny_checkpoint, tmp_path / "megrez-rewritten", MEGREZ_3B_TEMPLATE))
    assert "Megrez-3B" in checkpoint_chat_template(path).default_system_prompt
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = NO_DEFAULT_SYSTEM_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert checkpoint_chat_template(path).default_system_prompt is None


def test_an_unreadable_megrez_path_is_an_error_not_sglangs_default(tmp_path):
    with pytest.raises(ChatTemplateError, match="not a checkpoint folder on this machine"):
        get_chat_template_by_model_path("/models/on-another-host/Megrez2-3x7B-A3B")


def test_other_models_keep_sglangs_own_matching(tmp_path):
    assert get_chat_template_by_model_path("Qwen/Qwen2.5-7B-Instruct").name == "qwen"
    assert chat_template.match_checkpoint_chat_template(str(tmp_path)) is None  # no config.json
