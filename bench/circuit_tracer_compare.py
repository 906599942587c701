"""Compare saescope's attribution graphs with circuit-tracer's on the same model, transcoders and prompt.

For each case it runs saescope's `attribute` here and circuit-tracer's (TransformerLens backend) in a second venv as a
subprocess (this same file with `--ct-worker`; circuit-tracer needs transformers<=4.57.3 and transformer-lens<4), and
prints: model, transcoders, tokens, feature nodes, max |ΔA| / max |A|, selected features equal, seconds of each
attribution call on `--threads` threads (each tool alone, min over `--reps`), and the ratio.

Cases: `tiny-plt` / `tiny-pltneg` / `tiny-skip` (the tests' random 3-layer GPT-2 with random per-layer TopK /
TopK with non-positive top-k pre-activations / JumpReLU+skip transcoders, written in circuit-tracer's local layout),
`gemma` and `gemma-skip` (gemma-3-270m with the trained per-layer TopK set `--gemma_tc` (runs/graph/tc) or the TopK skip
transcoders of the default run, exported with saescope's `export_circuit_tracer`, i.e. `saescope export
circuit-tracer`). saescope reads the same circuit-tracer-layout files, so its TopK keeps top-k values ≤ 0 as
circuit-tracer's does (`graph/transcoders.py`); its own layout would ReLU them, as saescope trains them. circuit-tracer's transcoders are loaded with `load_transcoders(config.yaml + "transcoders": [the
layer files])`, which honours `activation: topk` and `k`.

Set up the circuit-tracer venv (offline: source from a code mirror of github.com/decoderesearch/circuit-tracer at
4bb8c0e = v0.4.1, e.g. the session tool `fetch` -> /work/.mirror/decoderesearch+circuit-tracer/repo; the
safety-research/circuit-tracer mirror is the June 2025 0.1.0 snapshot; packages from PyPI, torch from the local wheel;
uv is /work/main/.venv/bin/uv):

    mkdir -p /work/ct/src
    git --git-dir=/work/.mirror/decoderesearch+circuit-tracer/repo archive 4bb8c0e | tar x -C /work/ct/src
    uv venv -p /usr/bin/python3.11 /work/ct/venv
    uv pip install --python /work/ct/venv/bin/python --find-links /opt/wheels "torch==2.13.0" \
        "transformer-lens>=2.16.0,<3" "transformers>=4.56.0,<=4.57.3" "pyarrow<20" -e /work/ct/src

(`pyarrow<20`: transformer-lens 2.x pins numpy<2 and the newest pyarrow needs numpy 2.) Then, from /work/main:

    .venv/bin/python bench/circuit_tracer_compare.py --ct-python /work/ct/venv/bin/python \
        [--cases tiny-plt tiny-skip gemma] [--max-feature-nodes 512] [--batch-size 256] [--threads 2] [--reps 2]

circuit-tracer is patched in the worker (not in its source) so that Gemma 3 keeps per-layer RoPE; `--ct-as-is` runs
it unpatched (see ct_worker). Timings: with 2 threads on a machine where anything else is running, both tools' times
jump by up to 100x (OpenMP threads waiting on a descheduled peer); check `uptime` and compare with `--threads 1`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GEMMA_DIR = Path.home() / ".cache/saescope/models/gemma-3-270m-253113024"  # where `saescope run` converts the model
GEMMA_TC = {"gemma": Path("runs/graph/tc"), "gemma-skip": Path("runs/default/transcoders")}  # --gemma_tc / --gemma_skip_tc
PROMPT_TINY = "def reverse(s): return s[::-1]  # code is"
PROMPT_GEMMA = "The capital of the state containing Dallas is"


# ----------------------------------------------------------------------------------------------- circuit-tracer side
def ct_load_model(spec: dict, transcoders):
    """A TransformerLensReplacementModel built offline: GPT-2 by converting the HF weights by hand (its config is
    not one of TransformerLens' official names), Gemma 3 270M through from_pretrained with a local hf_model."""
    import torch
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec["fix_rope"]:  # see ct_worker
        TransformerLensReplacementModel._deduplicate_attention_buffers = lambda self: None
    hf = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(spec["model_dir"]) if spec["arch"] == "gemma3" else tiny_tokenizer(spec)
    if spec["arch"] == "gemma3":
        return TransformerLensReplacementModel.from_pretrained_and_transcoders(
            "google/gemma-3-270m", transcoders, hf_model=hf, tokenizer=tok, device="cpu", dtype=torch.float32)
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head, d_mlp=4 * c.n_embd,
        n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn=c.activation_function, eps=c.layer_norm_epsilon,
        normalization_type="LN", positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        model_name="tiny-gpt2", device="cpu", dtype=torch.float32)
    model = TransformerLensReplacementModel(cfg, tokenizer=tok)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False)
    model._configure_replacement_model(transcoders)
    return model


def tiny_tokenizer(spec: dict):
    """transformers 5 saves the tests' tokenizer as `TokenizersBackend`, which 4.57 does not know: load its json."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["model_dir"]) / "tokenizer.json"), bos_token="<bos>",
                                   eos_token="<eos>", pad_token="<pad>", add_bos_token=True,
                                   name_or_path=spec["model_dir"])  # TransformerLens reads both


def ct_worker(spec_path: str) -> None:
    """Runs in the circuit-tracer venv: load, attribute `spec["reps"]` times, write the graph as an .npz.
    spec["fix_rope"]: skip `_deduplicate_attention_buffers` (replacement_model_transformerlens.py:252-273), which
    gives every layer the last layer's rotary sin/cos; on Gemma 3 (local layers θ=1e4, global 1e6) that changes the
    model (gemma-3-270m: max |Δlogit| 2.95 vs the HF model); models with one RoPE base are unaffected."""
    import numpy as np
    import torch
    import yaml
    from circuit_tracer import attribute
    from circuit_tracer.utils.hf_utils import load_transcoders

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    tc_dir = Path(spec["tc_dir"])
    config = yaml.safe_load((tc_dir / "config.yaml").read_text())
    config["transcoders"] = [str(tc_dir / f"layer_{i}.safetensors") for i in range(spec["n_layers"])]
    tcs = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False,
                           lazy_decoder=False)
    model = ct_load_model(spec, tcs)
    ids = torch.tensor(spec["ids"])
    with torch.no_grad():
        clean = model(ids[None])[0, -1].float()
    times = []
    for _ in range(spec["reps"]):
        t0 = time.perf_counter()
        g = attribute(ids, model, max_n_logits=spec["max_n_logits"], desired_logit_prob=spec["desired_logit_prob"],
                      batch_size=spec["batch_size"], max_feature_nodes=spec["max_feature_nodes"])
        times.append(time.perf_counter() - t0)
    np.savez(spec["out"], adjacency=g.adjacency_matrix.numpy(), active_features=g.active_features.numpy(),
             activation_values=g.activation_values.float().numpy(), selected=g.selected_features.numpy(),
             logit_tokens=np.array([t.vocab_idx for t in g.logit_targets]),
             logit_probs=g.logit_probabilities.float().numpy(), clean_logits=clean.numpy(), seconds=np.array(times))


# ----------------------------------------------------------------------------------------------------- saescope side
def random_transcoders(hm, kind: str, F: int = 64, k: int = 6, seed: int = 1):
    """Random per-layer transcoders in circuit-tracer's tensor names, and its config.yaml.
    kind: "plt" TopK with positive encoder biases (the k largest pre-activations are > 0), "pltneg" TopK with biases
    around −3 (some of the k largest are ≤ 0: saescope ReLUs them, circuit-tracer's TopK keeps them), "skip"
    JumpReLU with an affine skip."""
    import torch

    g = torch.Generator().manual_seed(seed)
    L, d = hm.n_layers, hm.d_model
    W_enc = [torch.randn(d, F, generator=g) / d**0.5 for _ in range(L)]
    shift = {"plt": 0.5, "pltneg": -3.0, "skip": -0.1}[kind]
    b_enc = [torch.rand(F, generator=g) * 0.2 + shift for _ in range(L)]
    W_dec = [torch.randn(F, 1, d, generator=g) * 0.05 for _ in range(L)]
    b_dec = [torch.randn(d, generator=g) * 0.05 for _ in range(L)]
    skip = [torch.randn(d, d, generator=g) * 0.005 for _ in range(L)] if kind == "skip" else None
    theta = [torch.rand(F, generator=g) * 0.3 for _ in range(L)]
    ct = []
    for l in range(L):
        t = {"W_enc": W_enc[l].T, "b_enc": b_enc[l], "W_dec": W_dec[l][:, 0], "b_dec": b_dec[l]}
        if kind == "skip":
            t.update({"activation_function.threshold": theta[l], "W_skip": skip[l].T})  # ct applies x @ W_skip.T
        ct.append({n: v.contiguous() for n, v in t.items()})
    conf = {"model_kind": "transcoder_set", "scan": f"tiny-{kind}", "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "mlp.hook_out"}
    if kind != "skip":
        conf.update(activation="topk", k=k)
    return ct, conf


def tiny_case(kind: str, work: Path):
    """(hm, tc, spec) for the tests' tiny GPT-2 and random transcoders, both written under `work`."""
    import yaml
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_model

    from saescope.graph.transcoders import from_transcoder_set
    from saescope.sae.transcoder_io import load_transcoders

    hm = make_model("gpt2")
    model_dir, tc_dir = work / "tiny-gpt2", work / f"tc-tiny-{kind}"
    hm.model.save_pretrained(model_dir)
    hm.tokenizer.save_pretrained(model_dir)
    ct, conf = random_transcoders(hm, kind)
    tc_dir.mkdir(parents=True, exist_ok=True)
    for l, t in enumerate(ct):
        save_file(t, str(tc_dir / f"layer_{l}.safetensors"))
    (tc_dir / "config.yaml").write_text(yaml.safe_dump(conf))
    tc = from_transcoder_set(load_transcoders(tc_dir), hm.n_layers)  # saescope reads the same files (TopK as ct)
    return hm, tc, {"arch": "gpt2", "model_dir": str(model_dir), "tc_dir": str(tc_dir), "prompt": PROMPT_TINY,
                    "model": "tiny-gpt2 (random)", "transcoders": f"random {kind}"}


def gemma_case(case: str, work: Path):
    """(hm, tc, spec) for gemma-3-270m and the trained set GEMMA_TC[case], exported to circuit-tracer's layout."""
    from saescope.config import ModelConfig
    from saescope.graph.transcoders import from_transcoder_set
    from saescope.sae.transcoder_io import export_circuit_tracer, load_transcoders

    hm = ModelConfig(model=str(GEMMA_DIR), device="cpu").load()
    ts = load_transcoders(GEMMA_TC[case])
    tc_dir = export_circuit_tracer(ts, work / f"tc-{case}", scan=f"saescope-{case}")
    tc = from_transcoder_set(load_transcoders(tc_dir), hm.n_layers)  # both tools read the exported files
    return hm, tc, {"arch": "gemma3", "model_dir": str(GEMMA_DIR), "tc_dir": str(tc_dir), "prompt": PROMPT_GEMMA,
                    "model": "gemma-3-270m",
                    "transcoders": f"{GEMMA_TC[case]} ({ts[0].cfg.architecture}, {tc.W_enc[0].shape[1]})"}


def run_saescope(hm, tc, spec: dict):
    import torch

    from saescope.graph.attribute import attribute

    torch.set_num_threads(spec["threads"])
    times = []
    for _ in range(spec["reps"]):
        t0 = time.perf_counter()
        g = attribute(hm, tc, spec["prompt"], max_feature_nodes=spec["max_feature_nodes"],
                      max_n_logits=spec["max_n_logits"], desired_logit_prob=spec["desired_logit_prob"],
                      batch_size=spec["batch_size"])
        times.append(time.perf_counter() - t0)
    return g, min(times)


def run_ct(ct_python: str, spec: dict, work: Path) -> dict:
    import numpy as np

    spec_path = work / f"spec-{spec['case']}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([ct_python, __file__, "--ct-worker", str(spec_path)], check=True, env=env)
    return dict(np.load(spec["out"]))


def compare(hm, g, ct: dict) -> dict:
    """Selected features as (layer, pos, index) triples in node order, logit tokens, adjacency difference."""
    import numpy as np
    import torch

    ours = g.active_features[g.selected_features].numpy()
    theirs = ct["active_features"][ct["selected"]]
    A, B = g.adjacency.to_dense().numpy(), ct["adjacency"]
    same_feats = ours.shape == theirs.shape and bool((ours == theirs).all())
    same_logits = np.array_equal(g.logit_tokens.numpy(), ct["logit_tokens"])
    out = {"tokens": int(g.n_pos), "features": f"{len(ours)}/{len(g.active_features)}",
           "ct_features": f"{len(theirs)}/{len(ct['active_features'])}", "same_features": same_feats,
           "same_logits": same_logits, "shape": (A.shape, B.shape)}
    if A.shape == B.shape and same_feats and same_logits:
        out["rel_diff"] = float(np.abs(A - B).max() / np.abs(B).max())
        out["rel_diff_by_kind"] = diff_by_kind(g, A, B)
    with torch.no_grad():
        ids = torch.tensor([[int(t) for t in g.tokens.reshape(-1)]])
        logits = hm.model(ids).logits[0, -1].float().numpy()
    out["clean_logit_diff"] = float(np.abs(logits - ct["clean_logits"]).max())
    return out


def diff_by_kind(g, A, B) -> dict:
    """max |ΔA| / max |A| per (target kind ← source kind) block."""
    import numpy as np

    n_f, n_e = len(g.selected_features), g.n_layers * g.n_pos
    spans = {"feature": slice(0, n_f), "error": slice(n_f, n_f + n_e), "embed": slice(n_f + n_e, n_f + n_e + g.n_pos),
             "logit": slice(n_f + n_e + g.n_pos, A.shape[0])}
    scale = np.abs(B).max()
    return {f"{t}<-{s}": float(np.abs(A[spans[t], spans[s]] - B[spans[t], spans[s]]).max(initial=0) / scale)
            for t in ("feature", "logit") for s in ("feature", "error", "embed")}


def run_case(case: str, args, work: Path) -> dict:
    from saescope.debug.trace import prompt_ids

    hm, tc, spec = gemma_case(case, work) if case.startswith("gemma") else tiny_case(case.split("-")[1], work)
    spec.update(case=case, threads=args.threads, reps=args.reps, max_feature_nodes=args.max_feature_nodes,
                max_n_logits=10, desired_logit_prob=0.95, batch_size=args.batch_size, n_layers=hm.n_layers,
                fix_rope=not args.ct_as_is, ids=prompt_ids(hm, spec["prompt"])[0].tolist(),
                out=str(work / f"ct-{case}.npz"))
    g, t_ours = run_saescope(hm, tc, spec)
    ct = run_ct(args.ct_python, spec, work)
    row = {"model": spec["model"], "transcoders": spec["transcoders"], "s_saescope": t_ours,
           "s_ct": float(ct["seconds"].min()), **compare(hm, g, ct)}
    row["ratio"] = row["s_ct"] / row["s_saescope"]
    return row


def print_table(rows: list[dict]) -> None:
    cols = [("model", "model", "s"), ("transcoders", "transcoders", "s"), ("tokens", "tokens", "d"),
            ("features", "feature nodes", "s"), ("ct_features", "ct feature nodes", "s"),
            ("rel_diff", "max|dA|/max|A|", ".2e"),
            ("same_features", "same features", "s"), ("s_saescope", "s saescope", ".2f"),
            ("s_ct", "s circuit-tracer", ".2f"), ("ratio", "ct/saescope", ".2f")]
    print("| " + " | ".join(h for _, h, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [format(r[k], f) if isinstance(r.get(k), (int, float)) and f != "s" else str(r.get(k, "n/a"))
                 for k, _, f in cols]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct-python", default="/work/ct/venv/bin/python")
    ap.add_argument("--cases", nargs="+", default=["tiny-plt", "tiny-pltneg", "tiny-skip", "gemma", "gemma-skip"])
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--work", default="/work/ct/bench")
    ap.add_argument("--ct-as-is", action="store_true",
                    help="keep circuit-tracer's shared RoPE buffers (wrong on Gemma 3, see ct_worker)")
    ap.add_argument("--ct-worker", help=argparse.SUPPRESS)
    ap.add_argument("--gemma_tc", default=str(GEMMA_TC["gemma"]), help="a per-layer TopK set on all 18 layers "
                    "(docs/graphs.md: `saescope train --kind transcoder --arch topk -k 32 --width 4096`)")
    ap.add_argument("--gemma_skip_tc", default=str(GEMMA_TC["gemma-skip"]), help="the default run's skip transcoders")
    args = ap.parse_args()
    GEMMA_TC.update({"gemma": Path(args.gemma_tc), "gemma-skip": Path(args.gemma_skip_tc)})
    if args.ct_worker:
        return ct_worker(args.ct_worker)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases:
        rows.append(run_case(case, args, work))
        print(json.dumps(rows[-1], default=str), flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
