"""Serving: starting, hardening and scaling SGLang with this model. The SGLang plugin
(registration), the host's CPU runtime, the in-process engine, the server supervisor, its
hardening (hardening/: one module per concern), the replica cluster and its gateway.
Depends on model/ only, never on programs/ or training/ (tests/test_layout.py)."""
