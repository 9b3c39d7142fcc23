"""wm_loop: improve a world model with its own experience, in rounds of planner-driven collection, fine-tuning,
export and evaluation (`wm-loop`; docs/loop.md)."""

from .config import LoopConfig, LoopSettings, load_loop_config
from .curve import CurveRow, read_curve
from .loop import run_loop

__all__ = ["CurveRow", "LoopConfig", "LoopSettings", "load_loop_config", "read_curve", "run_loop"]
