"""fw-optax: the Frank-Wolfe RNN optimizer (Yue et al., ICPR 2020) as an optax transformation."""

from fw_optax._frank_wolfe import FrankWolfeState, frank_wolfe, frank_wolfe_stats, per_device
from fw_optax._lmo import (
    Oracle,
    group_l2_lmo,
    k_sparse_lmo,
    lp_ball_lmo,
    nuclear_lmo,
    relative_radii,
)

__all__ = [
    "FrankWolfeState",
    "Oracle",
    "frank_wolfe",
    "frank_wolfe_stats",
    "group_l2_lmo",
    "k_sparse_lmo",
    "lp_ball_lmo",
    "nuclear_lmo",
    "per_device",
    "relative_radii",
]
__version__ = "0.3.0"
