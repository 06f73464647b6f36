"""The token ids a frontend-language program sends equal those of the same /v1/chat/completions
request, for each of the three templates of test_chat_template.py.

Both sides ask the server itself for the ids it tokenized: the program's /generate requests
(recorded on their way out) and the chat request carry ``return_prompt_token_ids``. The project's
template runs on the shared server; Megrez-3B's and the one without a default system turn each
get a server of their own (one at a time). The last one also plays a server on another machine:
its checkpoint folder is moved away, so the model path it reports is unreadable here.
"""

import shutil

import pytest
import sglang as sgl
import sglang.lang.backend.runtime_endpoint as runtime_endpoint

from megrez_sglang.programs import endpoint
from megrez_sglang.programs.chat_template import ChatTemplateError
from megrez_sglang.serving.server import ServerProcess

from .conftest import API_KEY
from .test_chat_template import CONVERSATIONS, TEMPLATES, checkpoint_with_template


@sgl.function
def reply_program(s, messages):
    role = {"system": sgl.system, "user": sgl.user, "assistant": sgl.assistant}
    for m in messages:
        s += role[m["role"]](m["content"])
    s += sgl.assistant(sgl.gen("reply", max_tokens=1))


@pytest.fixture
def sent_prompt_ids(monkeypatch):
    """The prompt token ids of every /generate request the frontend language sends, as the
    server tokenized them."""
    ids = []
    send = runtime_endpoint.http_request

    def recording(url, json=None, **kwargs):
        if not (url.endswith("/generate") and json is not None):
            return send(url, json=json, **kwargs)
        response = send(url, json={**json, "return_prompt_token_ids": True}, **kwargs)
        ids.append(response.json()["prompt_token_ids"])
        return response

    monkeypatch.setattr(runtime_endpoint, "http_request", recording)
    return ids


def chat_prompt_ids(client, messages) -> list[int]:
    r = client.chat.completions.create(model="megrez-moe", messages=messages, max_tokens=1,
                                       extra_body={"return_prompt_token_ids": True})
    return r.choices[0].model_extra["prompt_token_ids"]


def assert_programs_send_the_chat_ids(backend, client, sent_prompt_ids):
    for name, messages in CONVERSATIONS.items():
        sent_prompt_ids.clear()
        reply_program.run(messages=messages, backend=backend, temperature=0).sync()
        assert len(sent_prompt_ids) == 1, name
        assert sent_prompt_ids[0] == chat_prompt_ids(client, messages), name


def test_program_ids_equal_chat_ids_with_the_projects_template(server, client, sent_prompt_ids):
    by_lookup = sgl.RuntimeEndpoint(server.url, api_key=API_KEY)  # SGLang's own lookup
    assert_programs_send_the_chat_ids(by_lookup, client, sent_prompt_ids)
    assert_programs_send_the_chat_ids(endpoint(server.url, api_key=API_KEY), client, sent_prompt_ids)


@pytest.fixture(scope="module", params=[t for t in TEMPLATES if TEMPLATES[t] is not None])
def template_server(request, tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"megrez-{request.param}")
    path = checkpoint_with_template(tiny_checkpoint, root / "checkpoint", TEMPLATES[request.param])
    with ServerProcess(path, env={"MEGREZ_API_KEY": API_KEY}, log_path=root / "server.log") as s:
        yield request.param, s, path


@pytest.mark.slow
def test_program_ids_equal_chat_ids_with_the_checkpoints_template(template_server, sent_prompt_ids):
    import openai

    name, server, path = template_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    by_lookup = sgl.RuntimeEndpoint(server.url, api_key=API_KEY)
    assert by_lookup.chat_template.name.startswith("derived:checkpoint")
    assert_programs_send_the_chat_ids(by_lookup, client, sent_prompt_ids)
    if name != "no-default-system":
        return
    # The same server seen from a machine where its model path does not exist.
    shutil.move(path, path + "-elsewhere")
    try:
        with pytest.raises(ChatTemplateError, match="not a checkpoint folder on this machine"):
            sgl.RuntimeEndpoint(server.url, api_key=API_KEY)
        remote = endpoint(server.url, api_key=API_KEY)
        assert remote.chat_template.name.startswith("derived:server")
        assert remote.chat_template.default_system_prompt is None
        assert_programs_send_the_chat_ids(remote, client, sent_prompt_ids)
    finally:
        shutil.move(path + "-elsewhere", path)
