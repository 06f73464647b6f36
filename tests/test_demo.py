"""The demo page (python -m megrez_sglang.demo): its functions through Streamlit's own test client
(streamlit.testing.v1.AppTest runs the page script as a browser session does), and once in a real
headless browser (Debian's Chromium, driven by Selenium).

Quick: a server that is down, a choice question without options, the command's arguments.
Trained server (lane 3, the shared float32 server): the chat streams the card's demo answer; math
shows the boxed answer of a held-out item the tiny model gets right (greedy, for determinism);
multiple choice shows the letter; a wrong key shows the server's 401 message, never the key;
Chromium loads the page, sends the card's question and sees 珠穆朗玛峰 in the rendered reply.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from megrez_sglang.demo.__main__ import PAGE, parse_args, streamlit_options
from megrez_sglang.demo.replies import SERVER_URL_ENV
from megrez_sglang.programs.openai_recipes import openai_choice, openai_math
from megrez_sglang.serving.hardening import API_KEY_ENV
from megrez_sglang.serving.server import free_port
from megrez_sglang.training.tiny_corpus import CARD_CHAT, held_out_items

from .conftest import API_KEY, ROOT

EVEREST = "珠穆朗玛峰"
SECRET = "sk-demo-secret-7d1e0c"  # a key that must never appear in the page
# The held-out items the tests ask (of the first 16 the eval tests run, ones the trained
# checkpoint answers right greedily through the page's requests; checked when chosen).
MATH_ITEM, CHOICE_ITEM = 1, 2  # 34 + 57 (a carry); B among four
REPLY_TIMEOUT_S = 300
APT_COMMAND = "apt-get install -y chromium chromium-driver"


def page(server_url: str, api_key: str | None, monkeypatch) -> AppTest:
    monkeypatch.setenv(SERVER_URL_ENV, server_url)
    if api_key is None:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(API_KEY_ENV, api_key)
    at = AppTest.from_file(str(PAGE), default_timeout=REPLY_TIMEOUT_S)
    at.run()
    assert not at.exception, at.exception
    return at


def ask(at: AppTest, question: str, mode: str = "chat", *, options: list[str] = (), greedy: bool = False):
    at.radio(key="mode").set_value(mode)
    if greedy:
        at.slider(key="temperature").set_value(0.0)
    at.run()
    if mode == "choice":
        at.text_area(key="options").set_value("\n".join(options))
    at.chat_input[0].set_value(question)
    at.run()
    assert not at.exception, at.exception
    return at


def rendered_text(at: AppTest) -> str:
    """Every text the page shows (markdown, captions, errors, metrics, the sidebar)."""
    parts = [e.value for kind in ("markdown", "caption", "error", "title") for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(map(str, parts))


def held_out_question(item) -> str:
    """The question of a held-out math item (its prompt is the question, then the instruction)."""
    return item.prompt.rsplit("\n", 1)[0]


# --- quick -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["chat", "math", "choice"])
def test_a_server_that_is_down_is_one_readable_line(mode, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    at = ask(page(url, SECRET, monkeypatch), "1 + 1 = ?", mode, options=["2", "3"])
    assert len(at.error) == 1
    message = at.error[0].value
    assert message.startswith(f"the server at {url} is not reachable"), message
    assert "launch_server.sh" in message and "Traceback" not in message and "\n" not in message
    assert SECRET not in rendered_text(at)
    # The question stays on the page; the error is the assistant's turn.
    assert [m.name for m in at.chat_message] == ["user", "assistant"]


def test_a_choice_question_needs_two_options(monkeypatch):
    at = ask(page(f"http://127.0.0.1:{free_port()}", None, monkeypatch), "Which is a fruit?", "choice",
             options=["apple"])
    assert [e.value for e in at.error] == [
        "a multiple-choice question needs at least 2 options (one a line), got 1"]


def test_the_page_listens_on_localhost_by_default():
    args = parse_args([])
    assert (args.host, args.port, args.server_url, args.model) == ("127.0.0.1", 8501, None, None)
    options = streamlit_options(args.host, args.port)
    assert options["server.address"] == "127.0.0.1" and options["browser.gatherUsageStats"] is False
    assert options["client.showErrorDetails"] == "none"


def test_bad_arguments_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--server-url", "127.0.0.1:30000"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m megrez_sglang.demo: error: --server-url must start with http:// or https://, "
        "got '127.0.0.1:30000'")


# --- the trained checkpoint's shared server ------------------------------------------------------------


def streamed_pieces(at: AppTest) -> int:
    caption = next(c.value for c in at.caption if "pieces streamed" in c.value)
    return int(re.match(r"(\d+) pieces streamed", caption).group(1))


def test_chat_streams_the_card_demo_answer(trained_server, monkeypatch):
    at = ask(page(trained_server.url, API_KEY, monkeypatch), CARD_CHAT)
    assert not at.error
    reply = at.chat_message[1].markdown[0].value
    assert at.chat_message[1].name == "assistant" and EVEREST in reply, reply
    assert streamed_pieces(at) > 5  # the reply arrived piece by piece, not in one block


def test_math_mode_shows_the_boxed_answer(trained_server, monkeypatch):
    item = held_out_items("math", 16)[MATH_ITEM]
    at = ask(page(trained_server.url, API_KEY, monkeypatch), held_out_question(item), "math", greedy=True)
    assert not at.error
    assert [(m.label, m.value) for m in at.metric] == [("Answer", item.gold)], rendered_text(at)
    reasoning = at.chat_message[1].markdown[0].value
    assert reasoning.endswith(f"\\boxed{{{item.gold}}}"), reasoning  # the box, generated under the grammar
    assert streamed_pieces(at) > 5


def test_choice_mode_shows_the_letter(trained_server, monkeypatch):
    item = held_out_items("choice", 16)[CHOICE_ITEM]
    _, _, question, options = item.key
    at = ask(page(trained_server.url, API_KEY, monkeypatch), question, "choice", options=list(options),
             greedy=True)
    assert not at.error
    assert [(m.label, m.value) for m in at.metric] == [("Choice", item.gold)], rendered_text(at)
    reply = at.chat_message[1].markdown[0].value
    assert reply.endswith(f'{{"answer": "{item.gold}"}}'), reply


def test_streamed_recipes_return_what_the_plain_ones_do(trained_server):
    """on_text (the page's streaming) changes how the replies arrive, not what they are: greedy,
    the streamed math and choice results equal the plain requests', tokens included, and the
    pieces put together are the math reply."""
    import openai

    client = openai.OpenAI(base_url=f"{trained_server.url}/v1", api_key=API_KEY)
    item = held_out_items("math", 16)[MATH_ITEM]
    question, pieces = held_out_question(item), []
    streamed = openai_math(client, "megrez-moe", question, lang=item.lang, temperature=0,
                           on_text=pieces.append)
    assert streamed == openai_math(client, "megrez-moe", question, lang=item.lang, temperature=0)
    assert streamed.answer == item.gold
    assert "".join(pieces) == streamed.text and len(pieces) > 5 and streamed.completion_tokens > 5
    _, lang, question, options = held_out_items("choice", 16)[CHOICE_ITEM].key
    budget = {"reasoning_max_tokens": 256, "temperature": 0}  # the tiny model's context: 1024 tokens
    streamed = openai_choice(client, "megrez-moe", question, options, lang=lang, on_text=pieces.append,
                             **budget)
    assert streamed == openai_choice(client, "megrez-moe", question, options, lang=lang, **budget)


def test_a_wrong_key_shows_the_servers_401_message_not_the_key(trained_server, monkeypatch):
    at = ask(page(trained_server.url, SECRET, monkeypatch), CARD_CHAT)
    assert len(at.error) == 1
    message = at.error[0].value
    assert message == f"the server answered 401: Unauthorized (set {API_KEY_ENV} to the server's API key)"
    assert SECRET not in rendered_text(at)


# --- a real browser ------------------------------------------------------------------------------------


def chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip(f"Debian's Chromium and its driver are not installed (as root: apt-get update; "
                    f"{APT_COMMAND}); .ci/run installs them")
    return browser, driver


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the demo exited with status {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def test_the_page_in_chromium(trained_server, tmp_path):
    """`python -m megrez_sglang.demo --server-url` in a headless Chromium: the card's demo question
    typed into the page, 珠穆朗玛峰 in the rendered reply. The screenshot: tmp_path/demo.png, and
    MEGREZ_DEMO_SCREENSHOT (e.g. docs/demo.png, the README's) when set; it needs a CJK font for the
    Chinese (docs/demo.png: Debian's fonts-wqy-zenhei), the assertions only the page's text."""
    browser, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    log = tmp_path / "demo.log"
    demo = subprocess.Popen([sys.executable, "-m", "megrez_sglang.demo", "--server-url", trained_server.url,
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, API_KEY_ENV: API_KEY})
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(flag)
    driver = None
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health", demo, 120)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        driver.get(f"http://127.0.0.1:{port}")
        box = WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']"))
        box.send_keys(CARD_CHAT + Keys.ENTER)

        def finished_reply(d):
            messages = d.find_elements(By.CSS_SELECTOR, "[data-testid='stChatMessage']")
            done = d.find_elements(By.XPATH, "//*[contains(text(), 'pieces streamed')]")
            return messages[-1].text if len(messages) >= 2 and done else False

        reply = WebDriverWait(driver, REPLY_TIMEOUT_S).until(finished_reply)
        assert EVEREST in reply, reply
        screenshot = tmp_path / "demo.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("MEGREZ_DEMO_SCREENSHOT"):
            shutil.copyfile(screenshot, Path(os.environ["MEGREZ_DEMO_SCREENSHOT"]))
        assert API_KEY not in driver.page_source
    finally:
        if driver is not None:
            driver.quit()
        demo.terminate()
        demo.wait(timeout=60)
    assert API_KEY not in log.read_text()
