"""Shared fixtures. Tests never touch the network: hub lookups fail at once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch_home_unused"))

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
