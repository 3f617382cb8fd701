"""fw-optax: the Frank-Wolfe RNN optimizer (Yue et al., ICPR 2020) as an optax transformation."""

from fw_optax._frank_wolfe import FrankWolfeState, frank_wolfe
from fw_optax._lmo import lp_ball_lmo

__all__ = ["FrankWolfeState", "frank_wolfe", "lp_ball_lmo"]
__version__ = "0.1.0"
