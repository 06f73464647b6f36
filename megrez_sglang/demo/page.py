"""The demo page (a Streamlit script: Streamlit runs it top to bottom on every interaction).

The server: MEGREZ_DEMO_SERVER_URL (python -m megrez_sglang.demo sets it); the key: MEGREZ_API_KEY,
read here and sent only to the server. The sidebar picks the mode (chat, math, multiple choice) and
the sampling (the card's defaults: temperature 0.7, top_p 0.9); the conversation is kept per
browser session.
"""

from __future__ import annotations

import os
import time

import streamlit as st

from megrez_sglang.demo.replies import MODES, SERVER_URL_ENV, DemoClient, DemoError, parse_options
from megrez_sglang.model.prompts import OPTION_LETTERS
from megrez_sglang.programs.openai_recipes import CARD_SAMPLING
from megrez_sglang.serving.hardening import API_KEY_ENV
from megrez_sglang.serving.server import DEFAULT_PORT

MODE_LABELS = {"chat": "Chat", "math": "Math (answer in \\boxed{})", "choice": "Multiple choice"}
ANSWER_LABELS = {"math": "Answer", "choice": "Choice"}
PLACEHOLDERS = {"chat": "世界上最高的山峰是哪座？", "math": "计算：35 + 47 = ?",
                "choice": "下列哪一项是水果？ (the options go in the box above)"}


def as_markdown(text: str) -> str:
    """Model text for st.markdown: its line breaks kept (Markdown joins single lines)."""
    return text.replace("\n", "  \n")


def show_turn(turn: dict) -> None:
    with st.chat_message(turn["role"]):
        if "error" in turn:
            st.error(turn["error"])
        elif turn["role"] == "assistant" and turn["mode"] in ANSWER_LABELS:
            reasoning, answer = st.columns([4, 1])
            reasoning.markdown(as_markdown(turn["content"]))
            answer.metric(ANSWER_LABELS[turn["mode"]], turn["answer"] or "—")
        else:
            st.markdown(as_markdown(turn["content"]))
        if "streamed" in turn:
            st.caption(turn["streamed"])


def chat_messages(history: list[dict]) -> list[dict]:
    """The free chat so far, as OpenAI messages (math and choice turns stand alone)."""
    return [{"role": t["role"], "content": t["content"]} for t in history
            if t["mode"] == "chat" and "error" not in t]


def answer(client: DemoClient, mode: str, question: str, options: list[str], history: list[dict],
           sampling: dict) -> dict:
    """Ask the server; show the reply as it streams in; the assistant's turn."""
    pieces: list[str] = []
    started = time.monotonic()
    if mode == "chat":
        target = st.empty()
    else:
        reasoning_column, answer_column = st.columns([4, 1])
        target = reasoning_column.empty()
        answer_slot = answer_column.empty()
        answer_slot.metric(ANSWER_LABELS[mode], "…")

    def on_text(piece: str) -> None:
        pieces.append(piece)
        target.markdown(as_markdown("".join(pieces)))

    turn = {"role": "assistant", "mode": mode}
    if mode == "chat":
        turn["content"] = client.chat(history + [{"role": "user", "content": question}], on_text, **sampling)
    elif mode == "math":
        result = client.math(question, on_text, **sampling)
        turn.update(content=result.text, answer=result.answer)
    else:
        result = client.choice(question, options, on_text, **sampling)
        turn.update(content=result.text, answer=result.letter)
    # The reply as the recipes return it: a choice reply loses a brace the model opened before
    # the grammar wrote the whole answer object (programs/choice.py).
    target.markdown(as_markdown(turn["content"]))
    if mode != "chat":
        answer_slot.metric(ANSWER_LABELS[mode], turn["answer"] or "—")
    turn["streamed"] = f"{len(pieces)} pieces streamed in {time.monotonic() - started:.1f} s"
    return turn


def main() -> None:
    st.set_page_config(page_title="Megrez2 demo", layout="wide")
    server_url = os.environ.get(SERVER_URL_ENV, f"http://127.0.0.1:{DEFAULT_PORT}")
    history = st.session_state.setdefault("history", [])

    with st.sidebar:
        mode = st.radio("Mode", MODES, format_func=MODE_LABELS.get, key="mode")
        temperature = st.slider("temperature", 0.0, 1.5, CARD_SAMPLING["temperature"], 0.05,
                                key="temperature")
        top_p = st.slider("top_p", 0.05, 1.0, CARD_SAMPLING["top_p"], 0.05, key="top_p")
        st.caption(f"Server: {server_url} (OpenAI API, key from {API_KEY_ENV})")
        if st.button("Clear the conversation"):
            history.clear()

    st.title("Megrez2-3x7B-A3B")
    options_text = ""
    if mode == "choice":
        options_text = st.text_area("Options, one a line (lettered A, B, C, ...)", key="options",
                                    placeholder="苹果\n汽车\n老虎\n足球")
    for turn in history:
        show_turn(turn)

    question = st.chat_input(PLACEHOLDERS[mode])
    if not question:
        return
    options = parse_options(options_text)
    shown = question
    if mode == "choice":  # the options as the prompt letters them
        lettered = zip(OPTION_LETTERS, options, strict=False)
        shown += "".join(f"  \n{letter}. {text}" for letter, text in lettered)
    user_turn = {"role": "user", "mode": mode, "content": shown}
    show_turn(user_turn)
    client = DemoClient(server_url, os.environ.get(API_KEY_ENV) or None)
    with st.chat_message("assistant"):
        try:
            turn = answer(client, mode, question, options, chat_messages(history),
                          {"temperature": temperature, "top_p": top_p})
        except DemoError as e:
            turn = {"role": "assistant", "mode": mode, "error": str(e)}
            st.error(turn["error"])
        else:
            st.caption(turn["streamed"])
    history += [user_turn, turn]


main()
