"""Architecture name (cfg.json `architecture`) → class."""

from __future__ import annotations

from saescope.errors import SaescopeError
from saescope.sae.base import BaseSAE
from saescope.sae.batchtopk import BatchTopKSAE
from saescope.sae.jumprelu import JumpReLUSAE
from saescope.sae.matryoshka import MatryoshkaBatchTopKSAE
from saescope.sae.relu import ReLUSAE
from saescope.sae.topk import TopKSAE
from saescope.sae.transcoder import transcoder_class

REGISTRY: dict[str, type[BaseSAE]] = {
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "standard": ReLUSAE,
    "matryoshka_batchtopk": MatryoshkaBatchTopKSAE,
}
for _base in list(REGISTRY.values()):  # <arch>_transcoder and <arch>_skip_transcoder (sae/transcoder.py)
    for _skip in (False, True):
        _cls = transcoder_class(_base, _skip)
        REGISTRY[_cls.architecture] = _cls
ALIASES = {"relu": "standard", "relu_l1": "standard", "batch_topk": "batchtopk", "matryoshka": "matryoshka_batchtopk"}


def sae_class(name: str) -> type[BaseSAE]:
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise SaescopeError(f"architecture '{name}': choose one of {', '.join(REGISTRY)} (or relu)")
    return REGISTRY[key]
