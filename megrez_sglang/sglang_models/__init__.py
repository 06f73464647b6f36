"""SGLang model classes of this project, one module per architecture (each with ``EntryClass``).

SGLang finds them through this project's plugin entry point (megrez_sglang.serving.registration) or,
alternatively, through ``SGLANG_EXTERNAL_MODEL_PACKAGE=megrez_sglang.sglang_models``.
"""
