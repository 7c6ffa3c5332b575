"""The name of the device a benchmark ran on, as its results file records it (shared by the scripts)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def describe_device(device: torch.device) -> str:
    """The GPU's name, or "cpu: " and the processor's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())
