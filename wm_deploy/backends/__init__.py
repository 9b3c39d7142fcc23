"""The backends behind `Rollout`: one protocol (base.py), implemented by torch, onnxruntime and TensorRT."""

from .base import ArrayOps, Backend, Dims, Workspace

__all__ = ["ArrayOps", "Backend", "Dims", "Workspace"]
