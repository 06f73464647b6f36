"""The model card's demo as a browser page: a chat with the served model, and its two answer
formats one click away.

    python -m megrez_sglang.demo                          # starts the server on the trained tiny checkpoint
    python -m megrez_sglang.demo --server-url http://127.0.0.1:30000   # a running launch_server.sh

* replies.py: what the page asks the server, through its OpenAI API (the openai client; the key
  from MEGREZ_API_KEY), and the server's errors as one readable line;
* page.py: the page (a Streamlit script);
* __main__.py: the command: the server (given or started), then the page on 127.0.0.1.

Streamlit, not Gradio: every Gradio release since 4.0 caps a dependency below this project's
pinned environment (Gradio 5 and 6: pillow<13 and an older tomlkit; Gradio 4: markupsafe~=2.0), and
the environment's pins are SGLang's; Streamlit 1.67 installs on them unchanged and brings its own
test client (streamlit.testing.v1.AppTest), which the suite drives the page with.
"""
