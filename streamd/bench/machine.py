"""What a benchmark result says about the machine it ran on."""

from __future__ import annotations

import os
import platform

import torch


def machine_description(device: torch.device, threads: int | None = None) -> str:
    """The device; on a CPU, its cores and the torch threads a run used (``threads``: those of
    a run in other processes, e.g. the servers; default: this process's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} cores, torch threads {threads or torch.get_num_threads()}"


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
