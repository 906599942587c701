"""Transcoder files: saescope's layout, circuit-tracer's local layout, Gemma Scope 2 (load).

saescope (SAELens-style, `cfg.json` + `sae_weights.safetensors`):
    per-layer set   DIR/layer_{L}/{cfg.json, sae_weights.safetensors}   (architecture `<act>_[skip_]transcoder`,
                    metadata hook_name mlp_in.L, hook_name_out mlp_out.L; W_enc [d, F], W_dec [F, d_out], W_skip [d, d_out])
    CLT             DIR/{cfg.json, sae_weights.safetensors}             (architecture `clt_<act>`; W_enc [L, d, F],
                    b_enc [L, F], W_dec_{l} [F, L − l, d_out], b_dec [L, d_out], threshold [L, F], W_skip [L, d, d_out])
circuit-tracer (reference/circuit_tracing.md): `config.yaml` + `layer_{i}.safetensors` (W_enc [F, d], b_enc, W_dec
[F, d], b_dec, activation_function.threshold, W_skip [d_out, d_in] applied as x W_skipᵀ) or, for a CLT,
`W_enc_{i}.safetensors` (W_enc_i [F, d], b_enc_i, b_dec_i, threshold_i, W_skip_i [d_in, d_out]) and
`W_dec_{i}.safetensors` (W_dec_i [F, L − i, d]).
Gemma Scope 2: per-layer `params.safetensors` (w_enc [d, F], w_dec [F, d], b_enc, b_dec, threshold, optional
affine_skip_connection [d, d]); a CLT is one such file per layer with w_dec [F, L, d] (only rows l.. are used).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.sae.base import CFG_FILE, WEIGHTS_FILE, read_cfg
from saescope.sae.transcoder import CLTConfig, CrossLayerTranscoder, TranscoderSet, transcoder_class

log = logging.getLogger(__name__)
CT_CONFIG = "config.yaml"


def _load(path: Path) -> dict[str, Tensor]:
    from saescope.sae.loading import _safetensors

    return _safetensors(path)


def _save(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    from saescope.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def _layer_of(name: str) -> int | None:
    m = re.search(r"layer_(\d+)", name)
    return int(m.group(1)) if m else None


# ---- saescope layout ------------------------------------------------------------------------------------------

def save_transcoders(ts: TranscoderSet, out: str | Path, sparsity: Tensor | None = None) -> Path:
    """Write a TranscoderSet in saescope's layout (module docstring); `sparsity`: a CLT's log10 densities [L, F]."""
    from saescope.io import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if ts.clt is not None:
        arch, tensors, _ = ts.clt.inference_state()
        _save(tensors, out / WEIGHTS_FILE)
        if sparsity is not None:
            from saescope.sae.base import SPARSITY_FILE

            _save({"sparsity": sparsity}, out / SPARSITY_FILE)
        cfg = asdict(ts.clt.cfg)
        cfg.update(architecture=arch, activation=arch.removeprefix("clt_"), d_out=ts.clt.d_out,
                   metadata={**ts.metadata, **cfg["metadata"]})
        write_json(out / CFG_FILE, cfg)
        return out
    for layer in ts.layers:
        t = ts[layer]
        t.cfg.metadata.setdefault("hook_name", f"mlp_in.{layer}")
        t.cfg.metadata.setdefault("hook_name_out", f"mlp_out.{layer}")
        t.save(out / f"layer_{layer}")
    return out


def _load_clt(path: Path) -> TranscoderSet:
    raw = read_cfg(path / CFG_FILE)
    t = _load(path / WEIGHTS_FILE)
    act = raw.get("activation") or raw["architecture"].removeprefix("clt_")
    for key in ("n_layers", "d_in", "d_sae"):
        if key not in raw:
            raise SaescopeError(f"{path / CFG_FILE}: a cross-layer transcoder's cfg.json lacks '{key}'")
    cfg = CLTConfig(act, int(raw["n_layers"]), int(raw["d_in"]), int(raw["d_sae"]), d_out=int(raw.get("d_out") or 0),
                    k=int(raw.get("k", 32)), skip="W_skip" in t, metadata=raw.get("metadata") or {})
    return TranscoderSet(clt=_fill_clt(cfg, t, path), metadata=cfg.metadata)


def _fill_clt(cfg: CLTConfig, t: dict[str, Tensor], where: Path) -> CrossLayerTranscoder:
    """A CLT from tensors named as in saescope's layout (W_enc [L, d, F], W_dec_{l}, …), shapes checked."""
    clt = CrossLayerTranscoder(cfg)
    want = {"W_enc": clt.W_enc, "b_enc": clt.b_enc, "b_dec": clt.b_dec,
            **{f"W_dec_{l}": w for l, w in enumerate(clt.W_dec)}}
    if cfg.skip:
        want["W_skip"] = clt.W_skip
    if cfg.activation == "jumprelu":
        want["threshold"] = clt.threshold
    with torch.no_grad():
        for key, param in want.items():
            if key not in t:
                raise SaescopeError(f"{where}: cross-layer transcoder weights lack '{key}'")
            if tuple(t[key].shape) != tuple(param.shape):
                raise SaescopeError(f"{where}: '{key}' has shape {tuple(t[key].shape)}, expected "
                                    f"{tuple(param.shape)}")
            param.copy_(t[key].float())
    return clt.eval()


def load_transcoders(path: str | Path) -> TranscoderSet:
    """Any supported transcoder set: saescope's layout (a CLT dir or layer_{L}/ subdirs), circuit-tracer's
    (`config.yaml`), or Gemma Scope 2 (a folder of per-layer `params.safetensors` files or folders)."""
    from saescope.sae.loading import load_sae

    path = Path(path).expanduser()
    if not path.is_dir():
        raise SaescopeError(f"{path}: no such transcoder directory")
    if (path / CT_CONFIG).is_file():
        return load_circuit_tracer(path)
    if (path / CFG_FILE).is_file():
        arch = str(read_cfg(path / CFG_FILE).get("architecture", ""))
        if arch.startswith("clt_"):
            return _load_clt(path)
        raise SaescopeError(f"{path}: one dictionary ({arch}), not a transcoder set; load it with load_sae")
    subdirs = {_layer_of(p.name): p for p in path.iterdir() if p.is_dir() and (p / CFG_FILE).is_file()}
    subdirs.pop(None, None)
    if subdirs:
        plts = {l: load_sae(p) for l, p in subdirs.items()}
        not_tc = [str(p) for l, p in subdirs.items() if not plts[l].is_transcoder]
        if not_tc:
            raise SaescopeError(f"{not_tc[0]}: an SAE, not a transcoder (architecture "
                                f"{plts[_layer_of(Path(not_tc[0]).name)].cfg.architecture})")
        return TranscoderSet(plts=plts)
    return load_gemma_scope_2(path)


# ---- circuit-tracer -------------------------------------------------------------------------------------------

def export_circuit_tracer(ts: TranscoderSet, out: str | Path, scan: str = "", model_name: str = "") -> Path:
    """Write `ts` in circuit-tracer's local layout (module docstring) with a config.yaml naming its hooks."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # where the set writes (graph/transcoders.py): saescope's own sets are trained on mlp_out.L, after Gemma's
    # post-MLP norm (TransformerLens `hook_mlp_out`); circuit-tracer's and Gemma Scope 2's before it (`mlp.hook_out`)
    out_hook = ts.metadata.get("feature_output_hook") or (
        "mlp.hook_out" if ts.metadata.get("source") == "gemma_scope_2" else "hook_mlp_out")
    conf: dict[str, Any] = {
        "model_name": model_name or ts.metadata.get("model_name", ""), "scan": scan or str(out.name),
        "feature_input_hook": "mlp.hook_in", "feature_output_hook": out_hook,
        "model_kind": "cross_layer_transcoder" if ts.is_clt else "transcoder_set"}
    if ts.clt is not None:
        arch, t, _ = ts.clt.inference_state()
        if arch == "clt_topk":
            conf.update(activation="topk", k=ts.clt.cfg.k)
        for i in ts.layers:
            enc = {f"W_enc_{i}": t["W_enc"][i].T, f"b_enc_{i}": t["b_enc"][i], f"b_dec_{i}": t["b_dec"][i]}
            if "threshold" in t:
                enc[f"threshold_{i}"] = t["threshold"][i]
            if "W_skip" in t:
                enc[f"W_skip_{i}"] = t["W_skip"][i]  # a CLT's skip is applied as x @ W_skip[i]
            _save(enc, out / f"W_enc_{i}.safetensors")
            _save({f"W_dec_{i}": t[f"W_dec_{i}"]}, out / f"W_dec_{i}.safetensors")
    else:
        if ts.layers != list(range(len(ts.layers))):
            raise SaescopeError(f"circuit-tracer needs a transcoder on every layer from 0; this set covers {ts.layers}")
        for i in ts.layers:
            arch, t, _ = ts[i].inference_state()
            if arch.startswith("topk"):
                conf.update(activation="topk", k=ts[i].cfg.k)
            ct = {"W_enc": t["W_enc"].T, "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
            if "threshold" in t:
                ct["activation_function.threshold"] = t["threshold"]
            if "W_skip" in t:
                ct["W_skip"] = t["W_skip"].T  # a per-layer transcoder's skip is applied as x @ W_skip.T
            _save(ct, out / f"layer_{i}.safetensors")
    if conf.get("activation") == "topk":
        log.warning("%s: TopK transcoders. circuit-tracer 0.4.1 keeps `activation: topk` and `k` when it loads them "
                    "with circuit_tracer.utils.hf_utils.load_transcoders(config) and a `transcoders:` list of these "
                    "layer files (its local-cache route falls back to ReLU), and its TopK keeps top-k values ≤ 0, which "
                    "saescope's ReLU drops: docs/graphs.md#circuit-tracer", out)
    (out / CT_CONFIG).write_text(yaml.safe_dump(conf, sort_keys=False))
    return out


def load_circuit_tracer(path: Path) -> TranscoderSet:
    import yaml

    from saescope.sae.base import SAEConfig
    from saescope.sae.registry import sae_class

    conf = yaml.safe_load((path / CT_CONFIG).read_text()) or {}
    kind = conf.get("model_kind", "transcoder_set")
    meta = {"model_name": conf.get("model_name", ""), "scan": conf.get("scan", ""), "source": "circuit-tracer",
            "feature_output_hook": conf.get("feature_output_hook") or "mlp.hook_out"}
    if kind == "cross_layer_transcoder":
        n = len(list(path.glob("W_enc_*.safetensors")))
        if n == 0:
            raise SaescopeError(f"{path}: config.yaml says cross_layer_transcoder but there are no W_enc_*.safetensors")
        enc = [_load(path / f"W_enc_{i}.safetensors") for i in range(n)]
        dec = [_load(path / f"W_dec_{i}.safetensors") for i in range(n)]
        F_, d = enc[0]["W_enc_0"].shape
        t = {"W_enc": torch.stack([e[f"W_enc_{i}"].T for i, e in enumerate(enc)]),
             "b_enc": torch.stack([e[f"b_enc_{i}"] for i, e in enumerate(enc)]),
             "b_dec": torch.stack([e[f"b_dec_{i}"] for i, e in enumerate(enc)]),
             **{f"W_dec_{i}": dc[f"W_dec_{i}"] for i, dc in enumerate(dec)}}
        act = conf.get("activation") or ("jumprelu" if "threshold_0" in enc[0] else "relu")
        if act == "relu":
            raise SaescopeError(f"{path}: ReLU cross-layer transcoders are not supported (jumprelu or topk)")
        if act == "jumprelu":
            t["threshold"] = torch.stack([e[f"threshold_{i}"].reshape(-1) for i, e in enumerate(enc)])
        skip = "W_skip_0" in enc[0]
        if skip:
            t["W_skip"] = torch.stack([e[f"W_skip_{i}"] for i, e in enumerate(enc)])
        d_out = t["b_dec"].shape[1]
        cfg = CLTConfig(act, n, d, F_, d_out=d_out, k=int(conf.get("k", 32)), skip=skip, metadata=meta)
        return TranscoderSet(clt=_fill_clt(cfg, t, path), metadata=meta)
    files = {_layer_of(p.name): p for p in path.glob("layer_*.safetensors")}
    files.pop(None, None)
    if not files:
        raise SaescopeError(f"{path}: config.yaml but no layer_*.safetensors files")
    plts = {}
    for layer, f in sorted(files.items()):
        ct = _load(f)
        F_, d = ct["W_enc"].shape
        t = {"W_enc": ct["W_enc"].T, "b_enc": ct["b_enc"], "W_dec": ct["W_dec"], "b_dec": ct["b_dec"]}
        base = conf.get("activation") or ("jumprelu" if "activation_function.threshold" in ct else "standard")
        if "activation_function.threshold" in ct:
            t["threshold"] = ct["activation_function.threshold"].reshape(-1)
        if "W_skip" in ct:
            t["W_skip"] = ct["W_skip"].T
        cls = transcoder_class(sae_class(base), "W_skip" in t)
        cfg = SAEConfig(cls.architecture, d, F_, k=int(conf.get("k", 32)), apply_b_dec_to_input=False,
                        d_out=t["W_dec"].shape[1], metadata={**meta, "hook_name": f"mlp_in.{layer}",
                                                             "hook_name_out": f"mlp_out.{layer}"})
        plts[layer] = _fill_plt(cls, cfg, t, f)
    return TranscoderSet(plts=plts, metadata=meta)


def _fill_plt(cls: type, cfg: Any, t: dict[str, Tensor], where: Path) -> Any:
    from saescope.sae.loading import _build

    return _build(cfg, t, where, cls=cls)


# ---- Gemma Scope 2 --------------------------------------------------------------------------------------------

def load_gemma_scope_2(path: Path) -> TranscoderSet:
    """Gemma Scope 2 transcoders: `path` holds one params file per layer (files or folders named *layer_{L}*). Per-layer
    files (w_dec [F, d]) make a per-layer set; files with w_dec [F, L, d] a cross-layer transcoder."""
    from saescope.sae.loading import load_gemma_scope

    files: dict[int, Path] = {}
    for p in sorted(path.iterdir()):
        layer = _layer_of(p.name)
        f = p / "params.safetensors" if p.is_dir() else p
        if layer is not None and f.is_file() and f.suffix in (".safetensors", ".npz"):
            files[layer] = f
    if not files:
        raise SaescopeError(f"{path}: no transcoders found (saescope layer_*/cfg.json, circuit-tracer config.yaml, "
                            "or Gemma Scope 2 per-layer params files)")
    first = _load(files[min(files)]) if files[min(files)].suffix == ".safetensors" else {}
    if first.get("w_dec", torch.empty(0, 0)).dim() == 3:
        return _load_gemma_scope_2_clt(files, path)
    plts = {}
    for layer, f in files.items():
        t = load_gemma_scope(f, transcoder=True)
        t.cfg.metadata.update(hook_name=f"mlp_in.{layer}", hook_name_out=f"mlp_out.{layer}")
        plts[layer] = t
    return TranscoderSet(plts=plts, metadata={"source": "gemma_scope_2"})


def _load_gemma_scope_2_clt(files: dict[int, Path], path: Path) -> TranscoderSet:
    L = len(files)
    if sorted(files) != list(range(L)):
        raise SaescopeError(f"{path}: a cross-layer transcoder needs params for layers 0..{L - 1}, found {sorted(files)}")
    raw = [_load(files[l]) for l in range(L)]
    d, F_ = raw[0]["w_enc"].shape
    if raw[0]["w_dec"].shape[1] != L:
        raise SaescopeError(f"{files[0]}: w_dec writes to {raw[0]['w_dec'].shape[1]} layers but there are {L} files")
    t = {"W_enc": torch.stack([r["w_enc"] for r in raw]), "b_enc": torch.stack([r["b_enc"] for r in raw]),
         "b_dec": torch.stack([r["b_dec"] for r in raw]), "threshold": torch.stack([r["threshold"] for r in raw]),
         **{f"W_dec_{l}": raw[l]["w_dec"][:, l:] for l in range(L)}}
    skip = "affine_skip_connection" in raw[0]
    if skip:
        t["W_skip"] = torch.stack([r["affine_skip_connection"] for r in raw])
    meta = {"source": "gemma_scope_2"}
    cfg = CLTConfig("jumprelu", L, d, F_, d_out=t["b_dec"].shape[1], skip=skip, metadata=meta)
    return TranscoderSet(clt=_fill_clt(cfg, t, path), metadata=meta)
