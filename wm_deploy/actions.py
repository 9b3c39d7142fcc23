"""Raw actions -> encoded actions, written straight into a workspace buffer.

The encoding is the training codec's (wm_core.actions.ActionCodec), operation for operation: continuous
actions are cast to float32, the float32 mean subtracted and the result divided by the float32 std; discrete
actions become float32 one-hot rows. Written in place with the codec's statistics converted once, it costs
two array operations per call instead of the codec's five plus a copy (tests/test_rollout.py checks that the
result is bit for bit the codec's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wm_core.actions import ActionCodec

from .backends.base import ArrayOps, numpy_to_torch


class ActionWriter:
    # the codec's statistics (or one-hot table) as arrays of the backend's kind: numpy or torch, as `ops.kind`
    table: Any
    mean: Any
    std: Any

    def __init__(self, codec: ActionCodec, ops: ArrayOps):
        self.discrete = codec.mode == "discrete"
        self.ops = ops
        if self.discrete:
            table = np.eye(codec.dim, dtype=np.float32)  # row a is the one-hot code of action a
            self.table = table if ops.kind == "numpy" else torch.from_numpy(table).to(ops.device)
        else:
            self.mean, self.std = np.asarray(codec.mean, np.float32), np.asarray(codec.std, np.float32)
            if ops.kind == "torch":
                self.mean, self.std = (torch.from_numpy(a).to(ops.device) for a in (self.mean, self.std))

    def write(self, dst, actions, swap01: bool = False) -> None:
        """dst [..., A] (float32, backend's kind) <- encoded `actions` (numpy or torch; first two axes swapped
        when `swap01`, for [B, H, ...] actions into a time-major buffer)."""
        if self.ops.kind == "numpy":
            if isinstance(actions, torch.Tensor):
                actions = actions.detach().cpu().numpy()
            if swap01:
                actions = actions.swapaxes(0, 1)
            if self.discrete:
                # mode="clip" writes straight into `dst` (the default buffers); the range was checked before.
                np.take(self.table, actions, axis=0, out=dst, mode="clip")
            else:
                if actions.dtype != np.float32:
                    actions = actions.astype(np.float32)
                np.subtract(actions, self.mean, out=dst)
                np.divide(dst, self.std, out=dst)
            return
        if isinstance(actions, np.ndarray):
            actions = numpy_to_torch(actions)
        actions = actions.to(self.ops.device, non_blocking=True)
        if swap01:
            actions = actions.swapaxes(0, 1)
        if self.discrete:
            dst.copy_(self.table[actions.long()])
        else:
            torch.sub(actions.float(), self.mean, out=dst)
            dst.div_(self.std)
