"""Which machine produced a number: every result file and printed table records it."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax


def machine() -> dict[str, Any]:
    """The machine the numbers come from: CPU model, core count, JAX backend and device."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    device = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "jax": jax.__version__,
    }


def describe(info: dict[str, Any] | str) -> str:
    """One line for tables and figure titles (older result files stored the line itself)."""
    if isinstance(info, str):
        return info
    return "{cpu} ({cores} cores), JAX {backend}: {device}".format(**info)
