"""Dictionary training: trainer, metrics, evaluation (incl. spliced CE/KL), synthetic ground truth, torchrun DP.

Light on import (no torch): the names below load their module on first use."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("TrainConfig", "OnlineConfig", "TrainResult"), "saescope.train.config"),
    **dict.fromkeys(("run",), "saescope.train.run_train"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.train.config import OnlineConfig, TrainConfig, TrainResult
    from saescope.train.run_train import run
