"""Machine facts recorded beside every benchmark result."""

from __future__ import annotations

import os
import platform
import subprocess


def machine_info() -> dict:
    import jax

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        model = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
        if model:
            info["cpu_model"] = model[0]
    except (OSError, subprocess.SubprocessError):
        pass
    if info["backend"] == "gpu":
        info["gpu"] = jax.devices()[0].device_kind
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info
