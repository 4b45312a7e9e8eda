"""What every benchmark prints about the machine it ran on, and the --threads option the CPU benchmarks share."""

from __future__ import annotations

import argparse
import os

import torch

from pipeline.jobs import cpu_name


def device_name(device: torch.device) -> str:
    """The device's name as a throughput file records it (bench/gpu.py and bench/gpu_share.py write the same file)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}"


def load_average() -> str:
    """The machine's load average over 1, 5 and 15 minutes: other work on it slows every timing."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def describe(threads: int) -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, torch threads {threads}"


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    default = torch.get_num_threads()
    parser.add_argument("--threads", type=int, default=default, help=f"torch.set_num_threads (default {default})")
