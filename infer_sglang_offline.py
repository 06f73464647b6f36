"""Offline generation with Megrez2 on SGLang: the model card's two demos, or your own prompts.

    python infer_sglang_offline.py [MODEL_PATH] [--prompt TEXT] [--chat TEXT] [--stream] [--json] ...

Without MODEL_PATH it uses the tiny Megrez2 trained in this project and shipped with it
(megrez_sglang/checkpoints/tiny-trained: every Megrez2 feature, ~2 M parameters, trained on the
card's demos, short facts, two-digit arithmetic and multiple choice), so the demos print real
answers. MODEL_PATH is a local Megrez2 checkpoint directory or a Hugging Face hub id (downloaded
where the machine is online). Sampling defaults to the card's temperature 0.7 and top_p 0.9. The
device is CUDA with FlashInfer attention when torch sees a GPU, otherwise SGLang's CPU path
(--device overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CARD_COMPLETION = "世界上最高的山峰是"
CARD_CHAT = "世界上最高的山峰是哪座？"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_path", nargs="?", help="Megrez2 checkpoint directory or hub id "
                   "(default: the project's trained tiny checkpoint)")
    p.add_argument("--prompt", action="append", help="text to complete (repeatable)")
    p.add_argument("--chat", action="append",
                   help="a user message, sent through the chat template (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible samples)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    p.add_argument("--dp", type=int, default=1, help="data parallel size (replicas; the prompts are "
                   "spread over them)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="one JSON object per result on stdout")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.tp < 1:
        p.error(f"--tp must be >= 1, got {args.tp}")
    if args.dp < 1:
        p.error(f"--dp must be >= 1, got {args.dp}")
    return args


def requests_from(args: argparse.Namespace, tokenizer) -> list[tuple[str, str, str]]:
    """(kind, what the user asked, the text sent to the model)."""
    completions = args.prompt if args.prompt or args.chat else [CARD_COMPLETION]
    chats = args.chat if args.prompt or args.chat else [CARD_CHAT]
    out = [("completion", p, p) for p in completions or []]
    for message in chats or []:
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                             tokenize=False, add_generation_prompt=True)
        out.append(("chat", message, text))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "auto":
        os.environ["MEGREZ_DEVICE"] = args.device  # read when megrez_sglang configures SGLang
    try:
        import megrez_sglang  # noqa: F401  (configures SGLang for this host first)
        from megrez_sglang.model.model_path import ModelPathError, resolve_model_path
        from megrez_sglang.serving.engine import start_engine

        model = resolve_model_path(args.model_path)
    except ModelPathError as e:
        print(f"infer_sglang_offline.py: error: {e}", file=sys.stderr)
        return 2

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    engine_kwargs = {"tp_size": args.tp, "dp_size": args.dp, "log_level": "error"}
    if args.seed is not None:
        engine_kwargs["random_seed"] = args.seed
    engine = start_engine(model, **engine_kwargs)
    try:
        sampling = {"temperature": args.temperature, "top_p": args.top_p,
                    "max_new_tokens": args.max_new_tokens}
        if args.seed is not None:
            sampling["sampling_seed"] = args.seed
        for kind, asked, text in requests_from(args, tokenizer):
            if args.stream:
                if not args.json:
                    print(f"[{kind}] {asked}\n", end="", flush=True)
                shown = ""
                for chunk in engine.generate(text, sampling, stream=True):
                    # each chunk carries the whole text so far: print what is new
                    if not args.json:
                        print(chunk["text"][len(shown):], end="", flush=True)
                    shown = chunk["text"]
                result = chunk
                if not args.json:
                    print("\n")
            else:
                result = engine.generate(text, sampling)
                if not args.json:
                    print(f"[{kind}] {asked}\n{result['text']}\n")
            if args.json:
                meta = result["meta_info"]
                print(json.dumps({
                    "kind": kind, "input": asked, "text": result["text"], "model": model,
                    "prompt_tokens": meta["prompt_tokens"], "completion_tokens": meta["completion_tokens"],
                    "finish_reason": meta["finish_reason"],
                }, ensure_ascii=False), flush=True)
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
