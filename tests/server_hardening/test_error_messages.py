"""9. Client errors SGLang answered with 500 get 400 with a message; validation errors name the
field and the problem, never the server's code."""

from __future__ import annotations

import pytest

from megrez_sglang.serving.hardening.error_messages import validation_message

from .replies import (
    CHAT,
    SERVER_CODE_LOCATION,
    error_message,
    healthy,
    post,
)


def test_validation_messages_name_fields_the_way_clients_write_them():
    """pydantic's error locations, as FastAPI reports them for SGLang's request models: the union
    member pydantic tried is left out, list indexes are brackets, "body" is implied."""
    errors = [
        {"loc": ("body", "messages", 0, "function-after[validate_role(), ChatCompletionMessageGenericParam]",
                 "role"), "msg": "Value error, 'role' must be one of 'system', 'assistant'"},
        {"loc": ("body", "messages", 0, "ChatCompletionMessageUserParam", "content"),
         "msg": "Field required"},
        {"loc": ("body", "prompt", "list[int]", 2), "msg": "Input should be a valid integer"},
        {"loc": ("header", "content-type"),
         "msg": "Unsupported Media Type: Only 'application/json' is allowed"},
        {"loc": ("body",), "msg": "Field required"},
        {"loc": ("body", "messages", 0, "ChatCompletionMessageUserParam", "content"),  # once only
         "msg": "Field required"},
    ]
    assert validation_message(errors) == (
        "messages[0].role: Value error, 'role' must be one of 'system', 'assistant'; "
        "messages[0].content: Field required; prompt[2]: Input should be a valid integer; "
        "header.content-type: Unsupported Media Type: Only 'application/json' is allowed; "
        "the request body: Field required")
    many = [{"loc": ("body", f"f{i}"), "msg": "Field required"} for i in range(8)]
    assert validation_message(many).endswith("f4: Field required; and 3 more")


# Each was a 500 (the server stayed up), or a 200 stream that broke off.
CLIENT_ERRORS = {
    "/api/chat without messages": (
        "/api/chat", {"messages": [], "model": ""}, "Cannot apply chat template to an empty conversation"),
    "/api/generate streaming past the context": (
        "/api/generate", {"prompt": "你好", "model": "", "stream": True, "options": {"num_predict": 5000}},
        "exceeds the model's maximum context length of 4096 tokens"),
    "/api/chat with a seed it would drop": (
        "/api/chat", {"messages": [{"role": "user", "content": "你好"}], "model": "", "stream": False,
                      "options": {"seed": 42, "num_predict": 4}}, "seed is not honoured by this server"),
    "/parse_function_call without a parser": (
        "/parse_function_call", {"text": "hi", "tool_call_parser": "", "tools": []},
        "tool_call_parser '' is not a parser this server knows; one of: "),
    "/parse_function_call with an unknown parser": (
        "/parse_function_call", {"text": "hi", "tool_call_parser": "nope", "tools": []},
        "tool_call_parser 'nope' is not a parser this server knows; one of: "),
    "/separate_reasoning without a parser": (
        "/separate_reasoning", {"text": "hi", "reasoning_parser": ""},
        "reasoning_parser '' is not a parser this server knows; one of: "),
    "/separate_reasoning with an unknown parser": (
        "/separate_reasoning", {"text": "hi", "reasoning_parser": "nope"},
        "reasoning_parser 'nope' is not a parser this server knows"),
    "/generate with an empty input_embeds vector": (
        "/generate", {"input_embeds": [[]]}, "input_embeds[0] has 0 values; each position is a vector of "
        "this model's hidden size, 64"),
    "/generate with an empty list of prompts": ("/generate", {"text": []}, "text is an empty list"),
    "/classify with an empty list of prompts": (
        "/classify", {"input_ids": []}, "input_ids is an empty list: send at least one prompt"),
}


@pytest.mark.parametrize("case", CLIENT_ERRORS)
def test_client_errors_that_were_500s_get_400_with_a_message(server, case):
    path, body, message = CLIENT_ERRORS[case]
    r = post(server, path, body)
    assert r.status_code == 400 and message in error_message(r), r.text[:400]
    assert healthy(server.url)


def test_the_same_calls_written_right_are_served(server):
    r = post(server, "/parse_function_call", {"text": "hi", "tool_call_parser": "qwen25", "tools": []})
    assert r.status_code == 200 and r.json()["normal_text"] == "hi", r.text[:300]
    r = post(server, "/separate_reasoning", {"text": "<think>a</think>b", "reasoning_parser": "qwen3"})
    assert r.status_code == 200 and (r.json()["reasoning_text"], r.json()["text"]) == ("a", "b"), r.text[:300]


@pytest.mark.parametrize("path, body, message", [
    ("/v1/chat/completions", {**CHAT, "max_tokens": "many"},
     "max_tokens: Input should be a valid integer, unable to parse string as an integer"),
    ("/v1/chat/completions", {"model": "megrez-moe", "messages": [{"role": "user"}]},
     "messages[0].content: Field required"),
    ("/v1/completions", {"model": "megrez-moe"}, "prompt: Field required"),
])
def test_validation_errors_name_the_field_and_the_problem_and_no_server_file(server, path, body, message):
    r = post(server, path, body)
    assert r.status_code == 400 and message in error_message(r), r.text[:400]
    assert not SERVER_CODE_LOCATION.search(r.text), r.text[:400]
