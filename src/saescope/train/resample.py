"""Re-initialise dead latents on what the SAE reconstructs worst (after Anthropic's "Towards Monosemanticity"
resampling, adapted to TopK).

Why: measured with ground truth (README "SAE training"): at the LR that finds features quickly, a TopK SAE
trained for 786k tokens (d = 768, F = 4,096) ends with 38 % of its latents dead, and AuxK (given a 50k-token
dead window so that it acts) does not bring them back; with Adam or sign steps its weight does not even change
the dead rows' updates, both being scale-free per parameter. The residual x − x̂ of a badly reconstructed token
is mostly made of features nobody has learned yet, so a dead latent restarted along it begins next to a missing
(usually rare) feature: with resampling the same run ends with 7 % dead, finds 28 % instead of 20 % of the true
features, at FVU 0.112 instead of 0.138.

    pick tokens t ∝ ‖x_t − x̂_t‖²;   W_dec[j] = r_t / ‖r_t‖;   W_enc[:, j] = W_dec[j] · s · mean alive encoder norm;
    b_enc[j] = 0;   the optimizer state of those rows reset (Adam: m = 0, v = the alive rows' mean; schedule-free:
    z = x = the new row)

The encoder scale s (`--resample_enc_scale`, default 0.5, as Anthropic's 0.2 keeps fresh latents from taking over):
at s = 1 a restarted latent's pre-activation on every token with a component along its direction matches an alive
latent's, so where one direction carries most of the variance (gemma-3-270m's layer-9 attn_out: 71 % in one
direction) hundreds of fresh latents win top-k slots at once and the training FVU climbs from 0.11 to 0.59 before
they die again: that SAE ended with 63 % of its latents silent on 65k tokens. At s = 0.5: FVU 0.106 instead of
0.162, 6 % silent (README "SAE training").
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescope import distributed as dist_utils
from saescope.sae import BaseSAE


@torch.no_grad()
def resample_dead(sae: BaseSAE, opt: torch.optim.Optimizer, aliases: dict[str, Tensor], dead: Tensor, x: Tensor,
                  x_hat: Tensor, generator: torch.Generator | None = None, enc_scale: float = 0.5,
                  x_in: Tensor | None = None) -> Tensor:
    """Restart the latents `dead` (bool [F]) from the residuals of the batch x [N, d] (x_hat [N, d]). `aliases`
    maps parameter names to the tensors the optimizer updates; a restarted encoder row has `enc_scale` times the
    alive rows' mean norm. Returns the indices restarted. A transcoder passes its inputs `x_in` [N, d_in] (x is
    then its target): the encoder row reads the picked token's input direction, the decoder writes its residual."""
    idx = dead.nonzero().squeeze(1)  # [m]
    err = (x - x_hat).float()  # [N, d]
    w = err.pow(2).sum(1)  # [N]
    if len(idx) == 0 or not bool(w.sum() > 0):
        return idx[:0]
    idx = idx[: x.shape[0]]  # at most one token per restarted latent
    pick = torch.multinomial(w, len(idx), replacement=False, generator=generator)  # [m]
    dirs = err[pick]
    dirs /= dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [m, d]
    dist_utils.broadcast_tensor(dirs)  # data parallel: every rank restarts the same rows the same way
    enc_dirs = dirs
    if x_in is not None:
        enc_dirs = x_in[pick].float()
        enc_dirs = enc_dirs / enc_dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [m, d_in]
        dist_utils.broadcast_tensor(enc_dirs)
    alive = ~dead
    enc_rows = sae.W_enc.T  # [F, d] view
    scale = enc_scale * (enc_rows[alive].norm(dim=1).mean() if bool(alive.any()) else torch.tensor(1.0))
    new = {"W_dec": dirs, "W_enc": enc_dirs * scale, "b_enc": torch.zeros(len(idx), dtype=dirs.dtype,
                                                                      device=dirs.device)}
    enc_rows[idx] = new["W_enc"]
    sae.W_dec[idx] = new["W_dec"]
    sae.b_enc[idx] = new["b_enc"]
    for name, value in new.items():
        a = aliases[name]
        rows_first = a.shape[0] == sae.cfg.d_sae  # the optimizer's alias is latent-major
        for key, st in opt.state.get(a, {}).items():
            if not isinstance(st, Tensor) or st.shape != a.shape:
                continue  # scalar step counters etc.
            view = st if rows_first else st.T
            if key == "z":  # signum's SGD iterate; its average follows from it and the parameter
                view[idx] = value
            elif key == "exp_avg_sq":  # a typical second moment, so the first steps are not lr/√(1−β2) jumps
                view[idx] = view[alive].mean(0) if bool(alive.any()) else 0.0
            else:
                view[idx] = 0.0
    return idx
