"""The frontend language's chat format, taken from the checkpoint's own chat template.

SGLang's frontend language (``sgl.system/user/assistant``) formats a conversation with a
``ChatTemplate`` of role prefixes and suffixes, while ``/v1/chat/completions`` renders the
tokenizer's Jinja ``chat_template``. If the two differ, a program asks the model something else
than a chat request does. So the ``ChatTemplate`` is derived from the checkpoint's template by
rendering it (``apply_chat_template`` on probe conversations; the Jinja source is never parsed),
and the derived form is checked: on a set of probe conversations (single-turn, system-first,
multi-turn, with and without the generation prompt) it must reproduce the rendering byte for byte
and the token ids ``tokenizer.encode`` gives the program text (what ``/generate`` does) must equal
those of the chat rendering. A template that cannot be written as role prefix/suffix pairs (one
that trims or rewrites the content, moves the system prompt into the first user turn, depends on
the position of a message, ...) is a ``ChatTemplateError`` naming the checkpoint.

Where the template comes from:

* a readable Megrez2 checkpoint (config.json ``model_type`` ``megrez_moe``): its
  ``chat_template.jinja`` or ``tokenizer_config.json`` ``chat_template``, loaded by SGLang's own
  tokenizer loader (as the server loads it). A matching function registered FIRST in SGLang's
  registry makes ``sglang.lang.chat_template.get_chat_template_by_model_path(path)`` return it,
  so ``sgl.RuntimeEndpoint``, ``sgl.Runtime`` and ``endpoint()``/``runtime()`` all use it;
* a checkpoint without a chat template: the project's (``megrez_sglang/model/tokenizer/chat_template.jinja``,
  what the project's checkpoints ship);
* a server whose model path is not readable here (another machine): the client cannot read the
  template, and SGLang's lookup would fall back to its ``default`` format (``USER:``/``ASSISTANT:``),
  which is silently wrong. So ``endpoint()`` always derives the template from the server itself:
  SGLang's ``/v1/tokenize`` renders messages exactly as ``/v1/chat/completions`` does, and the
  derived form is checked there in token ids. A bare ``sgl.RuntimeEndpoint`` on such a server
  gets a ``ChatTemplateError`` when the path names a Megrez model (for other paths SGLang's own
  matching applies, as it would without this project).
* sglang-router in front of servers (``python -m megrez_sglang.serving.cluster``): its own ``/v1/tokenize``
  renders no messages, so ``endpoint()`` takes the template of the checkpoint the workers report,
  which must then be readable here (a ``ChatTemplateError`` says how to proceed otherwise).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from sglang.lang.chat_template import (
    ChatTemplate,
    matching_function_registry,
    register_chat_template,
)

Messages = list[dict]
# render(messages, add_generation_prompt) -> the text the chat template makes of them
Render = Callable[[Messages, bool], str]
# encode(text) -> the token ids the server's /generate makes of a program's text
Encode = Callable[[str], list[int]]
# chat_ids(messages) -> the token ids /v1/chat/completions makes of them (generation prompt added)
ChatIds = Callable[[Messages], list[int]]

MEGREZ_MODEL_TYPE = "megrez_moe"

# Markers the derivation renders as message contents and finds again in the rendered text.
_MARK = {"system": "MEGREZ-PROBE-SYSTEM", "user": "MEGREZ-PROBE-USER", "user2": "MEGREZ-PROBE-USER-2",
         "assistant": "MEGREZ-PROBE-ASSISTANT"}

# Conversations the derived form must reproduce: single-turn, system-first, multi-turn; contents
# with newlines, braces, quotes, Chinese and edge whitespace (a template that trims or escapes the
# content does not render a program's text as given, so it must fail here).
_SYSTEM = "You are a careful assistant.\n回答要简洁。"
_QUESTION = "小明有3个苹果，又买了5个，现在有多少个？\nPut the answer in \\boxed{}."
_REPLY = "  3 + 5 = 8，所以答案是 $\\boxed{8}$。\n"
_FOLLOW_UP = 'And with "4" more? {"answer": "C"} '
PROBE_CONVERSATIONS: list[tuple[Messages, bool]] = [
    ([{"role": "user", "content": _QUESTION}], True),
    ([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _QUESTION}], True),
    ([{"role": "user", "content": _QUESTION}, {"role": "assistant", "content": _REPLY},
      {"role": "user", "content": _FOLLOW_UP}], True),
    ([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _QUESTION},
      {"role": "assistant", "content": _REPLY}, {"role": "user", "content": _FOLLOW_UP}], True),
    ([{"role": "user", "content": _QUESTION}, {"role": "assistant", "content": _REPLY}], False),
]


class ChatTemplateError(ValueError):
    """A chat template that SGLang's frontend language cannot reproduce, or cannot read."""


def frontend_text(template: ChatTemplate, messages: Messages, add_generation_prompt: bool = True) -> str:
    """The text SGLang's interpreter writes for `messages` (sglang/lang/interpreter.py,
    ``_execute_role_begin``/``_execute_role_end``): the default system turn first when the
    conversation does not open with a system message, then prefix + content + suffix per message,
    then the assistant prefix (``sgl.assistant_begin()``)."""
    text = ""
    if messages and messages[0]["role"] != "system" and template.default_system_prompt:
        prefix, suffix = template.role_prefix_and_suffix["system"]
        text += prefix + template.default_system_prompt + suffix
    for message in messages:
        prefix, suffix = template.role_prefix_and_suffix[message["role"]]
        text += prefix + message["content"] + suffix
    if add_generation_prompt:
        text += template.role_prefix_and_suffix["assistant"][0]
    return text


def _gaps(text: str, markers: Sequence[str], source: str) -> list[str]:
    """`text` split around `markers` (in order): the len(markers) + 1 pieces between them."""
    gaps, rest = [], text
    for marker in markers:
        head, found, rest = rest.partition(marker)
        if not found:
            raise ChatTemplateError(
                f"{source}: the chat template does not render message content as given (content "
                f"{marker!r} is missing from its output {text!r}), so it cannot be expressed as "
                "role prefix/suffix pairs for SGLang's frontend language")
        gaps.append(head)
    return gaps + [rest]


def _remove_prefix(text: str, prefix: str, what: str, source: str) -> str:
    if not text.startswith(prefix):
        raise ChatTemplateError(
            f"{source}: the chat template cannot be expressed as role prefix/suffix pairs for "
            f"SGLang's frontend language: {what} ({text!r} does not start with {prefix!r})")
    return text[len(prefix):]


def derive_chat_template(render: Render, name: str, source: str) -> ChatTemplate:
    """Role prefixes and suffixes, the default system turn and the stop string, read off
    renderings of probe conversations; then checked with `check_chat_template`."""
    S, U, U2, A = (_MARK[k] for k in ("system", "user", "user2", "assistant"))

    def gaps(messages: Messages, generation: bool) -> list[str]:
        try:
            text = render(messages, generation)
        except Exception as e:  # noqa: BLE001 - the template itself raised (e.g. raise_exception)
            raise ChatTemplateError(f"{source}: the chat template fails on {messages}: {e}") from e
        return _gaps(text, [m["content"] for m in messages], source)

    def msg(role, content):
        return {"role": role, "content": content}

    # A conversation that ends with a message ends with that message's suffix.
    system_prefix, system_suffix = gaps([msg("system", S)], False)
    user_head, user_suffix = gaps([msg("user", U)], False)
    *_, between, assistant_suffix = gaps([msg("user", U), msg("assistant", A)], False)
    assistant_prefix = _remove_prefix(between, user_suffix, "the user suffix followed by the "
                                      "assistant prefix", source)
    _, between = gaps([msg("system", S), msg("user", U)], False)[:2]
    user_prefix = _remove_prefix(between, system_suffix, "the system suffix followed by the user "
                                 "prefix", source)
    # What comes before the first user message without a system one: the default system turn.
    if not user_head.endswith(user_prefix):
        raise ChatTemplateError(f"{source}: a conversation without a system message does not open "
                                f"with the user prefix {user_prefix!r} (it opens {user_head!r})")
    default_turn = user_head[: len(user_head) - len(user_prefix)]
    default_system = None
    if default_turn:
        if not (default_turn.startswith(system_prefix) and default_turn.endswith(system_suffix)
                and len(default_turn) >= len(system_prefix) + len(system_suffix)):
            raise ChatTemplateError(
                f"{source}: the text before the first user message ({default_turn!r}) is not a "
                f"system turn ({system_prefix!r} ... {system_suffix!r}), so it cannot be expressed "
                "as SGLang's default system prompt")
        default_system = default_turn[len(system_prefix): len(default_turn) - len(system_suffix)]
    _, generation_tail = gaps([msg("user", U2)], True)
    if generation_tail != user_suffix + assistant_prefix:
        raise ChatTemplateError(
            f"{source}: the generation prompt ({generation_tail!r} after the user message) is not "
            f"the user suffix {user_suffix!r} followed by the assistant prefix {assistant_prefix!r}")
    stop = assistant_suffix.strip()
    template = ChatTemplate(
        name=name,
        default_system_prompt=default_system,
        role_prefix_and_suffix={"system": (system_prefix, system_suffix),
                                "user": (user_prefix, user_suffix),
                                "assistant": (assistant_prefix, assistant_suffix)},
        stop_str=(stop,) if stop else (),
    )
    return template


def check_chat_template(template: ChatTemplate, render: Render | None, source: str, *,
                        encode: Encode | None = None, chat_ids: ChatIds | None = None) -> None:
    """`template` reproduces the chat template on every probe conversation: the text byte for byte
    (`render`), and the token ids (`encode` of the program text == `chat_ids` of the messages)."""
    for messages, generation in PROBE_CONVERSATIONS:
        program = frontend_text(template, messages, generation)
        if render is not None:
            expected = render(messages, generation)
            if program != expected:
                raise ChatTemplateError(
                    f"{source}: the chat template cannot be expressed as role prefix/suffix pairs "
                    f"for SGLang's frontend language: for {[m['role'] for m in messages]} "
                    f"(add_generation_prompt={generation}) it renders\n{expected!r}\nbut prefixes "
                    f"and suffixes give\n{program!r}")
        if encode is not None and chat_ids is not None and generation:
            program_ids, expected_ids = encode(program), chat_ids(messages)
            if program_ids != expected_ids:
                raise ChatTemplateError(
                    f"{source}: the program text's token ids differ from the chat request's for "
                    f"{[m['role'] for m in messages]}: {program_ids} vs {expected_ids} (e.g. a "
                    "BOS token added once by the template and again by the tokenizer)")


def _template_name(source: str, template: ChatTemplate) -> str:
    fields = json.dumps([template.default_system_prompt, template.role_prefix_and_suffix,
                         list(template.stop_str)], ensure_ascii=False, sort_keys=True)
    return f"derived:{source}:{hashlib.sha256(fields.encode()).hexdigest()[:12]}"


def _register(template: ChatTemplate, source: str) -> ChatTemplate:
    template.name = _template_name(source, template)
    register_chat_template(template)
    return template


# ---------------------------------------------------------------------------------------------
# From a checkpoint on this machine


def project_chat_template() -> str:
    """The project's Jinja template (for checkpoints that carry none)."""
    from ..model.tokenizer import chat_template

    return chat_template()


def is_megrez_checkpoint(model_path: str | Path) -> bool:
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("model_type") == MEGREZ_MODEL_TYPE


def _template_files(path: Path) -> tuple:
    """What the template is read from, with modification times (a rewritten checkpoint is read again)."""
    names = ("tokenizer_config.json", "chat_template.jinja", "chat_template.json", "tokenizer.json")
    return tuple((n, (path / n).stat().st_mtime_ns) for n in names if (path / n).is_file())


def load_tokenizer(model_path: str | Path):
    """The checkpoint's tokenizer as the server loads it (SGLang's loader), with the project's
    chat template when the checkpoint has none."""
    from sglang.srt.utils.hf_transformers.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(str(model_path))
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = project_chat_template()
    return tokenizer


def checkpoint_chat_template(model_path: str | Path) -> ChatTemplate:
    """The frontend-language template for a checkpoint on this machine (registered in SGLang's
    registry under its name); ChatTemplateError if it cannot be derived."""
    path = Path(model_path).resolve()
    return _checkpoint_chat_template(str(path), _template_files(path))


@cache
def _checkpoint_chat_template(path: str, files: tuple) -> ChatTemplate:
    tokenizer = load_tokenizer(path)
    source = f"checkpoint {path}"

    def render(messages, add_generation_prompt):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    def chat_ids(messages):  # what SGLang's chat serving does (serving_chat.py)
        return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                  return_dict=False))

    template = derive_chat_template(render, "", source)
    check_chat_template(template, render, source, encode=tokenizer.encode, chat_ids=chat_ids)
    return _register(template, source)


def match_checkpoint_chat_template(model_path: str) -> str | None:
    """SGLang matching function: the derived template's name for a Megrez2 checkpoint; None for
    other models (SGLang's own matching then applies). A path that names a Megrez model but is not
    readable here (a server on another machine) is an error, not SGLang's default format."""
    path = Path(model_path)
    if not (path / "config.json").is_file():
        if "megrez" in str(model_path).lower():
            raise ChatTemplateError(
                f"model path {model_path!r} (as the server reports it) is not a checkpoint folder "
                "on this machine, so its chat template cannot be read here and SGLang's frontend "
                "language would format programs in its 'default' template. Use "
                "megrez_sglang.programs.endpoint(url), which derives the template from the "
                "server's own rendering, or pass chat_template_name= a template registered from "
                "a local copy (checkpoint_chat_template(copy).name)")
        return None
    if not is_megrez_checkpoint(path):
        return None
    return checkpoint_chat_template(path).name


# ---------------------------------------------------------------------------------------------
# From a running server (its model path may not be readable here)


def server_chat_template(base_url: str, api_key: str | None = None, timeout_s: float = 30) -> ChatTemplate:
    """The frontend-language template of the model a server serves, derived from the server's own
    rendering (SGLang's /v1/tokenize renders messages as /v1/chat/completions does, /v1/detokenize
    gives the text back) and checked in token ids: the program text tokenized as /generate
    tokenizes it equals the chat request's ids, for every probe conversation."""
    import requests

    base_url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    source = f"server {base_url}"

    def post(route: str, body: dict) -> dict:
        r = requests.post(f"{base_url}{route}", json=body, headers=headers, timeout=timeout_s)
        if r.status_code != 200:
            raise ChatTemplateError(f"{source}: {route} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def render(messages, add_generation_prompt):
        ids = post("/v1/tokenize", {"messages": messages,
                                    "add_generation_prompt": add_generation_prompt})["tokens"]
        return post("/v1/detokenize", {"tokens": ids, "skip_special_tokens": False})["text"]

    def encode(text):  # /generate tokenizes a text prompt with the tokenizer's special tokens
        return post("/v1/tokenize", {"prompt": text})["tokens"]

    def chat_ids(messages):  # rendered as for a chat completion
        return post("/v1/tokenize", {"messages": messages})["tokens"]

    probe = requests.post(f"{base_url}/v1/tokenize", headers=headers, timeout=timeout_s,
                          json={"messages": [{"role": "user", "content": _MARK["user"]}]})
    if probe.status_code in (400, 404, 422):
        return _router_chat_template(base_url, headers, timeout_s, source,
                                     f"{probe.status_code}: {probe.text[:200]}")
    template = derive_chat_template(render, "", source)
    # The text went through detokenize: the token ids are what must agree.
    check_chat_template(template, None, source, encode=encode, chat_ids=chat_ids)
    return _register(template, source)


def _router_chat_template(base_url: str, headers: dict, timeout_s: float, source: str,
                          answer: str) -> ChatTemplate:
    """A load balancer in front of SGLang servers (sglang-router: its own /v1/tokenize takes a
    prompt, not messages, so nothing renders a conversation there): the template of the checkpoint
    its workers report (/get_model_info, which the router passes to a worker), when that
    checkpoint is readable here (workers on this machine, or the same path on every machine)."""
    import requests

    r = requests.get(f"{base_url}/get_model_info", headers=headers, timeout=timeout_s)
    model_path = r.json().get("model_path") if r.status_code == 200 else None
    if model_path and (Path(model_path) / "config.json").is_file():
        return checkpoint_chat_template(model_path)
    raise ChatTemplateError(
        f"{source}: /v1/tokenize does not render messages as SGLang's server does (it answered {answer}; "
        f"sglang-router's own /v1/tokenize takes only a prompt), and the checkpoint its /get_model_info "
        f"reports ({model_path!r}) is not a folder on this machine, so the chat template cannot be derived. "
        "Derive it from one of the workers (chat_template.server_chat_template(worker_url)) and pass "
        "its .name as chat_template_name= to sgl.RuntimeEndpoint(router_url, ...)")


# First in SGLang's registry: for a Megrez2 checkpoint its own template wins over SGLang's
# name-based guesses (which look only at the path, e.g. "qwen.*chat" -> qwen).
if match_checkpoint_chat_template not in matching_function_registry:
    matching_function_registry.insert(0, match_checkpoint_chat_template)
