"""Ollama's routes: an unset num_predict caps the reply to the context (SGLang asked for 2048
tokens whatever the context), and a refused request fails before its stream starts.
"""

from __future__ import annotations


def ollama_sampling_params(params: dict, _serving, options: dict | None = None, *_args, **_kwargs) -> dict:
    """AFTER-hook of OllamaServing._convert_options_to_sampling_params. Without options.num_predict
    SGLang asked for 2048 new tokens whatever the context (above it: 500, or a stream that broke
    off); unset, SGLang caps a reply to what the context leaves, as /v1/* do without max_tokens.
    Ollama's `seed` is SGLang's sampling_seed (as `seed` it was an unknown sampling parameter)."""
    if not options or options.get("num_predict") is None:
        params["max_new_tokens"] = None
    if "seed" in params:
        params["sampling_seed"] = params.pop("seed")
    return params


async def first_chunk_before_the_response(original, *args, **kwargs):
    """AROUND-hook of OllamaServing's _stream_*_response: the stream's first chunk is computed
    before the response starts, so that a request SGLang refuses (a ValueError: the prompt is too
    long, a parameter out of range) is answered 400 instead of a 200 stream that breaks off."""
    response = await original(*args, **kwargs)
    chunks = response.body_iterator
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        return response

    async def the_whole_stream():
        yield first
        async for chunk in chunks:
            yield chunk

    response.body_iterator = the_whole_stream()
    return response
