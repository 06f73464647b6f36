"""Starting, hardening and scaling SGLang with this model: the SGLang plugin (registration), the CPU
runtime, the in-process engine, the server supervisor, its hardening (hardening/, one module per
concern), the replica cluster and its gateway. Imports model/ and sglang_models/, never programs/
or training/."""
