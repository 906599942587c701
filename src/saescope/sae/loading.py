"""Load SAEs from saescope/SAELens, sparsify, OpenAI sparse_autoencoder and Gemma Scope files.

Every loader returns a saescope SAE whose `encode`/`forward` on raw activations equals the source's.
Only safetensors, npz and `torch.load(weights_only=True)` are read: no arbitrary unpickling.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.sae.base import CFG_FILE, WEIGHTS_FILE, BaseSAE, SAEConfig, cfg_from_dict, check_weights, read_cfg
from saescope.sae.jumprelu import JumpReLUSAE
from saescope.sae.registry import sae_class

if TYPE_CHECKING:  # pragma: no cover
    from saescope.models import HookedModel

log = logging.getLogger(__name__)


def _safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise SaescopeError(f"{path}: unreadable safetensors file ({e})") from None


def _build(cfg: SAEConfig, tensors: dict[str, Tensor], path: Path, cls: type[BaseSAE] | None = None) -> BaseSAE:
    cls = cls or sae_class(cfg.architecture)
    if "log_threshold" in tensors and "threshold" not in tensors:  # SAELens ≤ 6.47 training checkpoints
        tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}
    required = ("W_enc", "W_dec", "b_enc", "b_dec") + (("threshold",) if issubclass(cls, JumpReLUSAE) else ())
    check_weights(path, tensors, cfg, required)
    sae = cls(cfg)
    with torch.no_grad():
        for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, key).copy_(tensors[key].float())
        if isinstance(sae, JumpReLUSAE):
            sae.load_threshold(tensors["threshold"].float())
        if cfg.lista_iters:
            if "lista_step" not in tensors:
                raise SaescopeError(f"{path}: cfg.json has lista_iters={cfg.lista_iters} but the weights lack "
                                    "'lista_step'")
            sae.lista_step.copy_(tensors["lista_step"].float().reshape(()))
        if getattr(sae, "skip_connection", False):
            if "W_skip" not in tensors or tuple(tensors["W_skip"].shape) != tuple(sae.W_skip.shape):
                raise SaescopeError(f"{path}: a skip transcoder needs W_skip of shape {tuple(sae.W_skip.shape)}")
            sae.W_skip.copy_(tensors["W_skip"].float())
    return sae.eval()


def load_saelens_dir(path: Path) -> BaseSAE:
    raw = read_cfg(path / CFG_FILE)
    cfg = cfg_from_dict(raw, path / CFG_FILE)
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise SaescopeError(
            f"{path / CFG_FILE}: normalize_activations={raw['normalize_activations']!r} is not folded into the "
            "weights; fold it in SAELens (fold_activation_norm_scaling_factor) and save again"
        )
    return _build(cfg, _safetensors(path / WEIGHTS_FILE), path / WEIGHTS_FILE)


def load_sparsify_dir(path: Path) -> BaseSAE:
    raw = read_cfg(path / CFG_FILE)
    t = _safetensors(path / "sae.safetensors")
    if "encoder.weight" not in t:
        raise SaescopeError(f"{path / 'sae.safetensors'}: no 'encoder.weight'; not a sparsify SAE")
    n_lat, d = t["encoder.weight"].shape
    if raw.get("activation", "topk") != "topk":
        raise SaescopeError(f"{path / CFG_FILE}: activation {raw.get('activation')!r} is not supported (topk only)")
    if raw.get("transcode") or "W_skip" in t:
        raise SaescopeError(f"{path}: sparsify transcoders are not SAEs; not supported yet")
    cfg = SAEConfig("topk", d_in=int(raw.get("d_in", d)), d_sae=n_lat, k=int(raw.get("k", 32)),
                    metadata={"source": "sparsify"})
    tensors = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    return _build(cfg, tensors, path / "sae.safetensors")


def load_openai_pt(path: Path) -> BaseSAE:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise SaescopeError(f"{path}: not a weights-only state dict ({type(e).__name__})") from None
    if not isinstance(sd, dict) or "encoder.weight" not in sd or "pre_bias" not in sd:
        raise SaescopeError(f"{path}: not an OpenAI sparse_autoencoder state dict (needs encoder.weight, pre_bias)")
    n_lat, d = sd["encoder.weight"].shape
    act = str(sd.get("activation", "ReLU"))
    k = int((sd.get("activation_state_dict") or {}).get("k", 0) or 0)
    arch = "topk" if act == "TopK" else "standard"
    cfg = SAEConfig(arch, d_in=d, d_sae=n_lat, k=k or 32,
                    metadata={"source": "openai", "note": "OpenAI v5 SAEs expect per-token layer-normed inputs"})
    tensors = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["latent_bias"], "W_dec": sd["decoder.weight"].T,
               "b_dec": sd["pre_bias"]}
    return _build(cfg, tensors, path)


def load_gemma_scope(path: Path, transcoder: bool = False) -> BaseSAE:
    """A Gemma Scope (1: .npz, 2: .safetensors) params file. A file with an affine_skip_connection, or in a
    `transcoder*` folder, or with `transcoder` set, is a (skip) transcoder reading mlp_in.L."""
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as z:
            raw = {k: torch.from_numpy(z[k]) for k in z.files}
    else:
        raw = _safetensors(path)
    t = {k.replace("w_enc", "W_enc").replace("w_dec", "W_dec"): v for k, v in raw.items()}
    if "W_enc" not in t:
        raise SaescopeError(f"{path}: no W_enc/w_enc; not a Gemma Scope params file")
    arch = "jumprelu"
    transcoder = transcoder or path.parent.parent.name.startswith("transcoder")
    if "affine_skip_connection" in t:  # Gemma Scope 2 skip transcoder
        t["W_skip"], arch = t.pop("affine_skip_connection"), "jumprelu_skip_transcoder"
    elif transcoder:
        arch = "jumprelu_transcoder"
    d, n_lat = t["W_enc"].shape
    if t["W_dec"].ndim != 2 or t["W_dec"].shape[0] != n_lat or (t["W_dec"].shape[1] != d and arch == "jumprelu"):
        raise SaescopeError(f"{path}: w_dec {tuple(t['W_dec'].shape)} does not map {n_lat} latents back to d={d} "
                            "(a cross-layer transcoder: load its folder with load_transcoders)")
    meta: dict[str, Any] = {"source": "gemma_scope_2" if path.suffix == ".safetensors" else "gemma_scope"}
    # Gemma Scope 2 folders name the site and layer: resid_post/layer_9_width_16k_l0_medium/params.safetensors
    m = re.match(r"layer_(\d+)(?:_|$)", path.parent.name)
    if m and path.parent.parent.name in ("resid_post", "attn_out", "mlp_out"):
        meta["hook_name"] = f"{path.parent.parent.name}.{int(m.group(1))}"
    elif m:
        meta["layer"] = int(m.group(1))
    cfg = SAEConfig(arch, d_in=d, d_sae=n_lat, apply_b_dec_to_input=False, metadata=meta,
                    d_out=t["W_dec"].shape[1] if arch != "jumprelu" else 0)
    return _build(cfg, t, path)


def load_sae(path: str | Path) -> BaseSAE:
    """Load any supported SAE: a directory (saescope/SAELens or sparsify), a file (.pt OpenAI, .npz/.safetensors Gemma
    Scope), or `saelens:<release>:<sae id>` from a SAELens registry entry whose files are on disk."""
    if str(path).startswith("saelens:"):
        from saescope.sae.releases import resolve_release

        parts = str(path).split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise SaescopeError(f"{path}: write saelens:<release>:<sae id>, e.g. saelens:gpt2-small-res-jb:blocks.8.hook_resid_pre")
        return load_sae(resolve_release(parts[1], parts[2]))
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file() and (path / CFG_FILE).is_file():
            return load_saelens_dir(path)
        if (path / "sae.safetensors").is_file():
            return load_sparsify_dir(path)
        for name in ("params.safetensors", "params.npz"):
            if (path / name).is_file():
                return load_gemma_scope(path / name)
        raise SaescopeError(
            f"{path}: no SAE found (expected cfg.json + {WEIGHTS_FILE}, sparsify sae.safetensors, or params.npz)"
        )
    if not path.is_file():
        raise SaescopeError(f"{path}: no such SAE file or directory")
    if path.suffix == ".pt":
        return load_openai_pt(path)
    if path.suffix in (".npz", ".safetensors"):
        return load_gemma_scope(path)
    raise SaescopeError(f"{path}: unknown SAE file type; give a directory, .pt, .npz or .safetensors")


def load_saes_at(spec: str, hm: HookedModel) -> list[tuple[BaseSAE, str, Path]]:
    """'DIR,FILE@HOOKPOINT,...' → [(SAE on the model's device, its hookpoint, its path)], each checked against the
    model; `@HOOKPOINT` names where files that do not record it (OpenAI .pt) read their input (TDB names work)."""
    from saescope.models.hookpoints import canonical_hookpoint, parse_hookpoint

    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        path, _, where = item.partition("@")
        sae = load_sae(path)
        hp = canonical_hookpoint(where or sae.cfg.metadata.get("hook_name") or "")
        if not hp:
            raise SaescopeError(f"{path}: the SAE does not record its hookpoint; pass {path}@<hookpoint> "
                                f"(e.g. @resid_delta_mlp.{hm.n_layers // 2})")
        parse_hookpoint(hp)
        if hm.width(hp) != sae.cfg.d_in:
            raise SaescopeError(f"{path}: d_in={sae.cfg.d_in} but {hp} of {hm.name} has width {hm.width(hp)}")
        out.append((sae.to(next(hm.model.parameters()).device).eval(), hp, Path(path)))
    return out
