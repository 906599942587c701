"""Generate mode: the seed activation dataset (7 prompts, greedy generation, activations of generated tokens)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from saescope.errors import SaescopeError
from saescope.models import HookedModel
from saescope.store.seed import write_seed_dataset

log = logging.getLogger(__name__)

SEED_PROMPTS = [
    "Once upon a time in a distant land",
    "What is the capital of France?",
    "Write a Python function to reverse a string.",
    "Alice: Hi Bob! How are you?",
    "The theory of relativity explains...",
    "Tell me a joke that would make even a robot laugh.",
    "If we were both code, I'd say you're the syntax to my logic.",
]


def read_prompts(path: str) -> list[str]:
    if not path:
        return list(SEED_PROMPTS)
    p = Path(path)
    if not p.is_file():
        raise SaescopeError(f"--prompts {path}: no such file; give a text file with one prompt per line")
    prompts = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]
    for n, line in enumerate(prompts, 1):
        if not line.strip():
            raise SaescopeError(f"{path}:{n}: empty prompt; remove the blank line")
    if not prompts:
        raise SaescopeError(f"{path}: no prompts")
    return prompts


def _stop_ids(hm: HookedModel) -> set[int]:
    tok = hm.tokenizer
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    for t in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
        tid = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    gen_eos = getattr(getattr(hm.model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return ids


GENERATE_BATCH = 8
"""Prompts decoded together: one decoding step reads every weight once for the whole batch, and on a CPU a step is
bound by reading the weights (1 GB a step for gemma-3-270m in float32, the 262k-token unembedding included), so
seven seed prompts decode about 7x faster together than one by one."""


@torch.no_grad()
def greedy_generate(hm: HookedModel, prompt_ids: list[list[int]], max_new_tokens: int, stops: set[int],
                    batch: int = GENERATE_BATCH) -> list[list[int]]:
    """Greedy continuations of each prompt (the new token ids, up to max_new_tokens; cut where the model emits a
    stop token), decoded `batch` prompts at a time with left padding. A test holds it equal to decoding each
    prompt alone."""
    tok = hm.tokenizer
    device = next(hm.model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch):
        group = prompt_ids[start:start + batch]
        width = max(len(p) for p in group)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in group], device=device)  # [B, width], left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
        res = hm.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=sorted(stops) or None, pad_token_id=pad)
        for row in res[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))  # the stop token itself is not kept
            out.append(row[:cut])
    return out


@torch.no_grad()
def generate_seed_dataset(
    hm: HookedModel, out: str | Path, hookpoint: str, prompts: list[str], max_new_tokens: int = 50,
    chat_template: bool = False,
) -> dict[str, Any]:
    """Greedy-generate up to `max_new_tokens` per prompt; save activations of the generated tokens (seed format)."""
    from tqdm.auto import tqdm

    if any(not p.strip() for p in prompts):
        raise SaescopeError("empty prompt given; every prompt needs some text")
    tok = hm.tokenizer
    stops = _stop_ids(hm)
    device = next(hm.model.parameters()).device
    prompt_ids = []
    for prompt in prompts:
        if chat_template:
            if not getattr(tok, "chat_template", None):
                raise SaescopeError(f"model {hm.name}: tokenizer has no chat template; drop --chat_template")
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt").input_ids
        prompt_ids.append(ids[0].tolist())
    generated = greedy_generate(hm, prompt_ids, max_new_tokens, stops)
    tensors, entries = [], []
    for i, (prompt, ids_list, gen) in enumerate(tqdm(list(zip(prompts, prompt_ids, generated)),
                                                     desc=f"activations {hm.name}", unit="prompt")):
        ids = torch.tensor([ids_list], device=device)
        if not gen:
            log.warning("prompt %d generated no tokens before a stop token; its file is empty", i)
        full = torch.tensor([ids[0].tolist() + gen], device=device)
        acts = hm.run_with_cache(full, None, [hookpoint])[hookpoint][0, ids.shape[1]:].float().cpu()  # [n_gen, d]
        tensors.append(acts)
        entries.append({
            "file": f"activations_{i}.pt", "prompt": prompt, "generated_text": tok.decode(gen),
            "tokens": hm.token_strings(gen), "token_ids": gen, "prompt_token_ids": ids[0].tolist(),
            "model": hm.name, "hookpoint": hookpoint, "shape": list(acts.shape),
        })
    metadata = {
        "model": hm.name, "hookpoint": hookpoint, "hidden_size": hm.width(hookpoint), "num_prompts": len(prompts),
        "max_new_tokens": max_new_tokens, "decoding": "greedy", "chat_template": chat_template, "files": entries,
    }
    write_seed_dataset(Path(out), tensors, metadata)
    return metadata
