"""Sparse autoencoders: TopK, BatchTopK, JumpReLU, ReLU+L1 over one base; SAELens-layout save, many loaders."""

from saescope.sae.base import BaseSAE, SAEConfig, TrainContext, TrainOutput, fvu_loss
from saescope.sae.batchtopk import BatchTopKSAE
from saescope.sae.loading import load_sae, load_saes_at
from saescope.sae.jumprelu import JumpReLUSAE
from saescope.sae.registry import REGISTRY, sae_class
from saescope.sae.relu import ReLUSAE
from saescope.sae.topk import TopKSAE

__all__ = [
    "REGISTRY", "BaseSAE", "BatchTopKSAE", "JumpReLUSAE", "ReLUSAE", "SAEConfig", "TopKSAE", "TrainContext",
    "TrainOutput", "fvu_loss", "load_sae", "load_saes_at", "sae_class",
]
