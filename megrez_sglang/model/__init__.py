"""The model: what Megrez2 is and how it is checked. Its config, the plain-PyTorch reference, its
tokenizer, prompt formats and checkpoint builder, parameter counts, model-path checks, and the
checks of SGLang's output against the reference (fidelity, routing peers, GPU branches on the CPU).
Nothing here imports serving/, programs/ or training/ (tests/test_layout.py)."""
