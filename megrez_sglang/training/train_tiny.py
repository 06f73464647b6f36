"""Train the tiny Megrez2 that has learned something (weights committed under checkpoints/).

    python -m megrez_sglang.training.train_tiny OUT_DIR [--seed 0] [--steps N] [--threads 2]

Every Megrez2 feature is on: a dense first layer, cross-layer expert sharing (3 MoE layers per
expert pool), pre-gated routing, sigmoid scores with noaux_tc selection and a correction bias per
layer, shared experts. The model is the project's reference (``megrez_sglang.model.reference``) in
float32, trained with AdamW on a corpus generated here (``megrez_sglang.training.tiny_corpus``: column
arithmetic with ``\\boxed{}``, multiple choice with an answer object, the card's demos and short
facts), written in the chat template this checkpoint ships. The correction biases are trained as
DeepSeek-V3 does (aux-loss-free balancing): after every step each layer's bias moves by
``BIAS_RATE`` towards the experts that got fewer than their share of tokens.

OUT_DIR gets the checkpoint in the real layout (bfloat16 safetensors, the biases float32),
config.json, generation_config.json, its own tokenizer (BPE trained on this corpus) and chat
template, ``megrez_sglang.json`` (provenance: recipe, command, seed, threads, the first steps'
losses, held-out accuracy of the reference model) and a README. Deterministic: the same seed and
thread count give the same weights on the same machine.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model.build_checkpoint import make_config, write_checkpoint
from ..model.prompts import load_prompt
from ..model.tokenizer import STOP_TOKENS, save_tokenizer, train_tokenizer
from .tiny_corpus import OTHER_SYSTEM_PROMPTS, TaskItem, fact_items, held_out_items, training_item

CHECKPOINT_NAME = "tiny-trained"
COMMITTED_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / CHECKPOINT_NAME

# Every Megrez2 feature on (layer 0 dense, layers 1-3 and 4-6 two expert-sharing groups).
MODEL = dict(
    hidden_size=128, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, intermediate_size=384, moe_intermediate_size=64, n_routed_experts=8,
    num_experts_per_tok=2, n_shared_experts=2, first_k_dense_replace=1,
    experts_shared_frequency=3, pre_gate=True, topk_method="noaux_tc", scoring_func="sigmoid",
    n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0,
    max_position_embeddings=1024, rope_theta=10000.0,
)
TOKENIZER_VOCAB = 2000
# The share of each kind in a batch (the rest: facts, demos and greetings).
MIX = {"math": 0.45, "choice": 0.47}
OTHER_SYSTEM_SHARE = 0.1  # chats sent with a system prompt other than the template's default
BIAS_RATE = 1e-3  # DeepSeek-V3's bias update speed
HELD_OUT_ITEMS = 64  # per kind, as the eval's tiny_math / tiny_choice


@dataclass
class Recipe:
    seed: int = 0
    steps: int = 4000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    threads: int = 1


# --- the corpus as token ids -----------------------------------------------------------------------


def tokenizer_texts(seed: int) -> list[str]:
    """What the BPE is trained on: the system prompts, training items and facts (never the
    held-out split)."""
    rng = random.Random(f"tokenizer/{seed}")
    texts = [load_prompt("system_default"), *OTHER_SYSTEM_PROMPTS, "system user assistant"] * 50
    for kind in ("math", "choice"):
        for _ in range(3000):
            item = training_item(rng, kind)
            texts += [item.prompt, item.reply]
    for item in fact_items():
        texts += [item.prompt, item.reply] * 100
    return texts


class Encoder:
    """Token ids and loss masks of items, as the server will see them: chats through the
    checkpoint's chat template, completions as the prompt's tokens then the continuation's."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.turn_end = tokenizer.convert_tokens_to_ids(STOP_TOKENS[0])
        self.eos = tokenizer.convert_tokens_to_ids(STOP_TOKENS[1])
        self.pad = tokenizer.pad_token_id

    def prompt_ids(self, item: TaskItem, system: str | None = None) -> list[int]:
        if item.kind == "completion":
            return self.tok(item.prompt, add_special_tokens=False)["input_ids"]
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": item.prompt})
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode(self, item: TaskItem, system: str | None = None) -> tuple[list[int], list[bool]]:
        """(ids, which ids are trained on): the reply and its end token; for a completion the
        whole text (the prompt is ordinary text too)."""
        prompt = self.prompt_ids(item, system)
        end = self.eos if item.kind == "completion" else self.turn_end
        reply = self.tok(item.reply, add_special_tokens=False)["input_ids"] + [end]
        trained = [item.kind == "completion"] * len(prompt) + [True] * len(reply)
        return prompt + reply, trained


def sample_batch(rng: random.Random, encoder: Encoder, facts: list[TaskItem], size: int):
    """A batch of `size` training examples, right-padded: (ids [B, T], loss mask [B, T])."""
    rows = []
    for _ in range(size):
        r = rng.random()
        if r < MIX["math"]:
            item = training_item(rng, "math")
        elif r < MIX["math"] + MIX["choice"]:
            item = training_item(rng, "choice")
        else:
            item = rng.choice(facts)
        system = rng.choice(OTHER_SYSTEM_PROMPTS) if rng.random() < OTHER_SYSTEM_SHARE else None
        rows.append(encoder.encode(item, system))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((size, width), encoder.pad, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.bool)
    for i, (row, trained) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = torch.tensor(trained)
    return ids, mask


# --- training --------------------------------------------------------------------------------------


class BiasBalancer:
    """Aux-loss-free load balancing (DeepSeek-V3): counts the tokens each layer's router sends to
    each expert, then moves the layer's correction bias up for under-used experts, down for
    over-used ones. Padding tokens are not counted."""

    def __init__(self, model, rate: float):
        self.rate, self.token_mask, self.counts = rate, None, {}
        self.routers = [layer.mlp.gate for layer in model.model.layers if layer.is_moe]
        for router in self.routers:
            router.register_forward_hook(self._count)

    def _count(self, router, _inputs, output):
        if not router.training:
            return
        _, expert_ids = output
        chosen = expert_ids[self.token_mask] if self.token_mask is not None else expert_ids
        counts = torch.bincount(chosen.flatten(), minlength=router.weight.shape[0])
        self.counts[router] = self.counts.get(router, 0) + counts

    @torch.no_grad()
    def update(self) -> float:
        """Apply one update; returns the worst layer's max load / mean load."""
        worst = 0.0
        for router in self.routers:
            load = self.counts[router].float()
            router.e_score_correction_bias += self.rate * torch.sign(load.mean() - load)
            worst = max(worst, (load.max() / load.mean()).item())
        self.counts.clear()
        return worst


def learning_rate(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def build_tokenizer(seed: int):
    """The checkpoint's tokenizer as transformers loads it (BPE trained on this corpus)."""
    import tempfile

    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(TOKENIZER_VOCAB, tokenizer_texts(seed))
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tokenizer, Path(tmp), model_max_length=MODEL["max_position_embeddings"])
        return tokenizer, AutoTokenizer.from_pretrained(tmp)


def parameter_digest(model) -> float:
    """A cheap fingerprint of the weights: the sum of |w| over every parameter (float64)."""
    return sum(p.detach().double().abs().sum().item() for p in model.parameters())


@contextmanager
def deterministic_torch(threads: int):
    """A fixed thread count and deterministic kernels for the duration; the caller's settings after."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def train(recipe: Recipe, stop_after: int | None = None, log=print, eval_every: int = 0):
    """Trains the model; returns (model, config, raw tokenizer, HF tokenizer, per-step losses,
    the parameter digest after each of the first steps). `stop_after` ends the run early (the
    reproduction test); the learning-rate schedule still follows `recipe.steps`."""
    with deterministic_torch(recipe.threads):
        return _train(recipe, stop_after, log, eval_every)


def _train(recipe: Recipe, stop_after: int | None, log, eval_every: int):
    from ..model.reference import MegrezMoeForCausalLM

    raw_tokenizer, tokenizer = build_tokenizer(recipe.seed)
    config = make_config("tiny", raw_tokenizer, MODEL)
    torch.manual_seed(recipe.seed)
    model = MegrezMoeForCausalLM(config).float().train()
    encoder = Encoder(tokenizer)
    balancer = BiasBalancer(model, BIAS_RATE)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "gate.weight" not in n]
    no_decay = [p for n, p in model.named_parameters()
                if not (p.ndim == 2 and "gate.weight" not in n) and "e_score_correction_bias" not in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8)
    rng = random.Random(f"train/{recipe.seed}")
    facts = fact_items()
    losses, digests = [], []
    start = time.perf_counter()
    steps = recipe.steps if stop_after is None else min(stop_after, recipe.steps)
    for step in range(steps):
        ids, mask = sample_batch(rng, encoder, facts, recipe.batch_size)
        balancer.token_mask = (ids != encoder.pad).flatten()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        hidden, _ = model.model(ids)
        target_mask = mask[:, 1:]
        # lm_head only where there is a loss: the same logits, a tenth less work
        logits = model.lm_head(hidden[:, :-1][target_mask])
        loss = F.cross_entropy(logits, ids[:, 1:][target_mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        imbalance = balancer.update()
        losses.append(loss.item())
        if step < 5:
            digests.append(parameter_digest(model))
        if step % 50 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            log(f"step {step:5d}  loss {loss.item():.4f}  lr {learning_rate(recipe, step):.2e}  "
                f"max/mean expert load {imbalance:.2f}  {elapsed:.0f} s")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            model.eval()
            log(f"held-out at step {step + 1}: {held_out_accuracy(model, encoder, n=32)}")
            model.train()
    model.eval()
    return model, config, raw_tokenizer, tokenizer, losses, digests


# --- held-out accuracy with the reference model ----------------------------------------------------


@torch.no_grad()
def greedy_replies(model, encoder: Encoder, items: list[TaskItem], max_new_tokens: int = 96,
                   batch_size: int = 32) -> list[str]:
    """The reference model's greedy replies (left-padded batches, stopping at the stop tokens)."""
    replies = []
    for i in range(0, len(items), batch_size):
        prompts = [encoder.prompt_ids(item) for item in items[i : i + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([[encoder.pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=[encoder.turn_end, encoder.eos],
                             pad_token_id=encoder.pad)
        replies += encoder.tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return replies


def held_out_accuracy(model, encoder: Encoder, n: int = 100) -> dict:
    """Greedy accuracy (%) and well-formed-reply share (%) on the first `n` held-out items of
    each kind, graded as the eval's tiny_heldout benchmarks grade."""
    from ..programs.answers import extract_choice, last_boxed

    result = {}
    for kind in ("math", "choice"):
        items = held_out_items(kind, n)
        replies = greedy_replies(model, encoder, items)
        if kind == "math":
            answers = [last_boxed(r) for r in replies]
        else:
            answers = [extract_choice(r, item.letters) for r, item in zip(replies, items, strict=True)]
        correct = sum(a is not None and a.strip() == item.gold
                      for a, item in zip(answers, items, strict=True))
        result[kind] = {"accuracy": round(100 * correct / n, 1),
                        "well_formed": round(100 * sum(a is not None for a in answers) / n, 1), "n": n}
    return result


# --- the checkpoint --------------------------------------------------------------------------------


def state_dict_bf16(model) -> dict[str, torch.Tensor]:
    """The real checkpoint's dtypes: bfloat16, the correction biases float32."""
    return {name: t.detach().to(torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16)
            .contiguous() for name, t in model.state_dict().items()}


def write_trained_checkpoint(out_dir: Path, model, config, raw_tokenizer, provenance: dict) -> None:
    """The builder's layout with the trained bfloat16 weights, plus the model card (README.md)."""
    write_checkpoint(out_dir, config, raw_tokenizer, state_dict_bf16(model), provenance)
    (out_dir / "README.md").write_text(model_card(config, provenance))


def model_card(config, provenance: dict) -> str:
    """The checkpoint's README: what it is, how it was made, what it scores."""
    from ..model.param_count import count_parameters

    c, counts = config, count_parameters(config)
    recipe, accuracy = provenance["recipe"], provenance["held_out_reference_bf16"]
    math_acc, choice_acc = accuracy["math"], accuracy["choice"]
    return f"""# tiny-trained: a {counts.stored / 1e6:.1f} M-parameter Megrez2 trained in this project

Every Megrez2 feature of the real model, at a tiny size: {c.num_hidden_layers} layers (layer 0 \
dense, then {c.num_expert_groups} groups of {c.experts_shared_frequency} MoE layers, each group sharing \
one pool of {c.n_routed_experts} experts, top-{c.num_experts_per_tok}), pre-gated routing, sigmoid \
scores with noaux_tc selection and a trained correction bias per layer, {c.n_shared_experts} shared \
experts; hidden size {c.hidden_size}, vocabulary {c.vocab_size} (its own byte-level BPE). \
{counts.stored:,} parameters stored, {counts.activated:,} activated per token; bfloat16 weights \
(correction biases float32).

It was trained from scratch on a corpus generated by `megrez_sglang.training.tiny_corpus`, in the chat
template shipped here (`tokenizer_config.json`; default system prompt
「{load_prompt("system_default")}」): the model card's two demos and a few dozen short facts;
two-digit addition and subtraction word problems (Chinese and English, the card's math
instruction, column working, the answer in `\\boxed{{}}`); four-option multiple choice (the
card's answer-field instruction; the reply writes, for each option, its value, the value looked
for, yes or no and the letter, then the letter of the yes, then `{{"answer": "<letter>"}}`). It
knows nothing else.

## How it was made

```
{provenance["command"]}
```

Seed {provenance["seed"]}, `torch.set_num_threads({provenance["threads"]})`, torch \
{provenance["torch"]}, float32 on CPU: {recipe["steps"]} steps of {recipe["batch_size"]} sequences in \
{provenance["train_seconds"]} s on a shared 2-core machine. The same command, seed and thread count
give the same weights on the same machine; `tests/test_trained_tiny.py` checks that the script
still reproduces the first steps recorded in `megrez_sglang.json` (the provenance: recipe,
command, losses, figures).

## Held-out split

Generated by the same generator from numbers and items never trained on
(`python -m eval --benchmarks tiny_math,tiny_choice`). The reference model, bfloat16, greedy,
{math_acc["n"]} items each: arithmetic {math_acc["accuracy"]} %, multiple choice \
{choice_acc["accuracy"]} % (chance: 25 %).
"""


def main(argv: list[str] | None = None) -> int:
    defaults = Recipe()
    p = argparse.ArgumentParser(prog="python -m megrez_sglang.training.train_tiny",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="torch threads (part of what makes a run reproducible)")
    p.add_argument("--eval-every", type=int, default=0, help="print held-out accuracy every N steps")
    args = p.parse_args(argv)
    recipe = Recipe(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    threads=args.threads)
    started = time.perf_counter()
    model, config, raw_tokenizer, tokenizer, losses, digests = train(
        recipe, log=lambda line: print(line, flush=True), eval_every=args.eval_every)
    train_s = time.perf_counter() - started
    # What is served: the bfloat16 weights.
    served = type(model)(config)
    served.load_state_dict({k: v.float() for k, v in state_dict_bf16(model).items()})
    with deterministic_torch(recipe.threads):
        accuracy = held_out_accuracy(served.to(torch.bfloat16).eval(), Encoder(tokenizer), n=HELD_OUT_ITEMS)
    print(f"held-out (reference model, bfloat16, greedy): {accuracy}", flush=True)
    command = "python -m megrez_sglang.training.train_tiny OUT_DIR " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in
        (("seed", recipe.seed), ("steps", recipe.steps), ("batch_size", recipe.batch_size),
         ("lr", recipe.lr), ("threads", recipe.threads)))
    provenance = {
        "weights": "trained",
        "command": command,
        "seed": recipe.seed,
        "threads": recipe.threads,
        "recipe": {**asdict(recipe), "model": MODEL, "tokenizer_vocab": TOKENIZER_VOCAB, "mix": MIX,
                   "bias_rate": BIAS_RATE, "corpus": "megrez_sglang.training.tiny_corpus"},
        "torch": torch.__version__,
        "train_seconds": round(train_s),
        "first_losses": losses[:5],
        "first_digests": digests,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "held_out_reference_bf16": accuracy,
    }
    write_trained_checkpoint(args.out_dir, model, config, raw_tokenizer, provenance)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
