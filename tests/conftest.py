"""Shared fixtures: tiny random HF models (GPT-2, Gemma 3, Llama) with a small trained BPE tokenizer. No network."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

TEXT = (
    "The quick brown fox jumps over the lazy dog. A small cat sat on the warm mat near the door. "
    "In the beginning the city was a village by the river, and the people built houses of stone. "
    "Numbers like 1, 2, 3 and 42 appear in text; so do names like Alice, Bob and Paris. "
    "def reverse(s): return s[::-1]  # code is text too. "
) * 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def free_port() -> int:
    """A free loopback port (torchrun masters, test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<eos>", "<bos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def make_config(arch: str, vocab: int):
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=3, n_head=4, bos_token_id=2,
                          eos_token_id=1, pad_token_id=0)
    if arch == "gemma":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                                sliding_window=16, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=2,
                       eos_token_id=1, pad_token_id=0)


def make_model(arch: str):
    from transformers import AutoModelForCausalLM

    from saescope.models import HookedModel

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config(arch, len(tok)))
    model.eval()
    return HookedModel(model, tok, name=f"tiny-{arch}")


@pytest.fixture(params=["gpt2", "gemma", "llama"])
def tiny(request):
    return make_model(request.param)


@pytest.fixture
def tiny_gpt2():
    return make_model("gpt2")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a HF directory (model + tokenizer), loadable with load_model(dir)."""
    hm = make_model("llama")
    d = tmp_path_factory.mktemp("tiny-llama")
    hm.model.save_pretrained(d)
    hm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT * 4)
    return p


def one_process_and_two_ranks(args: list[str], one: Path, two: Path) -> None:
    """Run `saescope *args` once in one process (--out one) and once under torchrun with 2 gloo ranks (--out two)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SAESCOPE_LOG": "WARNING", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "saescope", *args, "--out", str(one)], check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), "-m", "saescope", *args, "--out", str(two)], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
