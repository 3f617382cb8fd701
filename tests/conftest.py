"""Session settings for the test suite.

The tests compile hundreds of tiny XLA programs, and for those LLVM's optimization passes
cost more compile time than they save at run time: the suite sets
``--xla_backend_optimization_level=0`` before JAX starts its CPU backend (measured: a
fifth less wall time on the slowest files). It changes how XLA's CPU code is optimized,
not what it computes; the benchmarks and the runner keep XLA's defaults.
"""

import os

_FLAG = "--xla_backend_optimization_level=0"

if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
