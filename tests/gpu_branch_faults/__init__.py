"""A copy of the model path with the publisher's CUDA defect, for the GPU-branch test's negative
control. SGLang loads it as an external model package (SGLANG_EXTERNAL_MODEL_PACKAGE): it scans the
package's top-level modules for ``EntryClass``."""
