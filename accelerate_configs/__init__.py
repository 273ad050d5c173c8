"""Shipped accelerate / DeepSpeed configs, installed as `edge_trl.accelerate_configs`."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
