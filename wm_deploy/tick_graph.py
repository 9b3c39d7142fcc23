"""A planner tick's device work as one CUDA graph: with the torch backend on a GPU, a tick's ~100 small kernels
and the rollout's own graphs launch as one replay, so the host's launch overhead leaves the tick.

What a tick reads and writes lives in fixed buffers, since a replay reuses the addresses of its capture: the
state h, z and the tick's noise and Gumbel draws go in (the host's numbers through pinned buffers, copied inside
the graph), what the tick reads back comes out through a pinned buffer (one copy, then one wait), and what it
leaves to the next tick (the distribution's state, the replayed elites) is copied back into the buffers it was
read from. Everything else `Planner._search` allocates during the capture belongs to the graph's own memory
pool. The captured work is `Planner._search` itself, the planner's eager path: the same kernels, in the same
order, on the same numbers.

The graph is captured on the first tick that has the steady shape (with replayed elites, when
PlannerSettings.replay > 0) or at `Planner.warmup`. Where the capture fails, a warning and the same work eagerly
from then on (`capture_cuda_graph`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .backends.base import capture_cuda_graph
from .rollout import Rollout

if TYPE_CHECKING:
    from .planner import Planner


def tick_graph_supported(planner: Planner) -> bool:
    """Whether `planner`'s ticks can run as a CUDA graph: torch arrays on CUDA over one Rollout whose backend
    captures its own loops in CUDA graphs (the torch backend with cuda_graphs on)."""
    rollout = planner.rollout
    return (
        isinstance(rollout, Rollout)
        and planner.xp.kind == "torch"
        and rollout.device.type == "cuda"
        and rollout.backend.name == "torch"
        and bool(getattr(rollout.backend, "capture", False))
    )


class TickGraph:
    """`planner`'s device work per tick (Planner._search) as one graph replay; `compile` captures it (tests pass
    one that returns the work itself, to run the same buffers eagerly on a CPU)."""

    def __init__(self, planner: Planner, compile: Callable[[Callable[[], None], torch.device], Callable] | None = None):
        assert isinstance(planner.rollout, Rollout), "tick_graph_supported says which planners"
        self.planner = planner
        self.rollout = planner.rollout
        self.device = planner.rollout.device
        self.compile = compile or capture_cuda_graph
        self.run: Callable[[], None] | None = None
        self.state: list[torch.Tensor] = []  # h, z
        self.host: list[torch.Tensor] = []  # noise[, gumbel] on the host, pinned on CUDA
        self.drawn: list[torch.Tensor] = []  # the same on the device
        self.carried: list[torch.Tensor] = []
        self.out: torch.Tensor | None = None
        self.host_out: torch.Tensor | None = None
        self.kept: list[Any] = []  # the rollout's workspaces the graph refers to, kept alive

    @property
    def captured(self) -> bool:
        return self.run is not None

    def __call__(self, h, z, noise: np.ndarray, gumbel: np.ndarray | None) -> np.ndarray:
        """One tick from h [1, D], z [1, S] (device tensors) and the host's draws -> what Planner._search returns,
        on the host."""
        planner = self.planner
        if self.run is None:
            self._capture(h, z, noise, gumbel)
        assert self.run is not None
        for buffer, x in zip(self.state, (h, z)):
            buffer.copy_(x)
        for buffer, x in zip(self.host, (noise, gumbel)):
            buffer.numpy()[...] = x  # the previous tick's copies out of it have finished: it waited for them
        for buffer, x in zip(self.carried, planner._carried()):
            if x is not buffer:  # after a reset, or an eager tick
                buffer.copy_(x)
        self.run()
        planner._load_carried(self.carried)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        assert self.host_out is not None  # made by the first run of the tick
        return self.host_out.numpy().copy()

    def _capture(self, h, z, noise: np.ndarray, gumbel: np.ndarray | None) -> None:
        planner = self.planner
        pin = self.device.type == "cuda"
        self.state = [torch.empty_like(x) for x in (h, z)]
        self.host = [
            torch.empty(x.shape, dtype=torch.from_numpy(x).dtype, pin_memory=pin)
            for x in (noise, gumbel)
            if x is not None
        ]
        # Every buffer the graph reads or writes is held here: the replay reuses their addresses, and a tensor that
        # only the captured function referred to would be freed, and its memory given to another.
        self.drawn = drawn = [torch.empty(x.shape, dtype=x.dtype, device=self.device) for x in self.host]
        self.carried = [x.clone() for x in planner._carried()]
        saved = [x.clone() for x in self.carried]  # the warm-up runs of the capture tick on them

        def tick() -> None:
            for device_copy, host in zip(drawn, self.host):
                device_copy.copy_(host, non_blocking=True)
            planner._load_carried(self.carried)
            h, z = self.state
            joined = planner._search(h, z, drawn[0], drawn[1] if len(drawn) > 1 else None)
            for buffer, x in zip(self.carried, planner._carried()):
                buffer.copy_(x)
            if self.out is None or self.host_out is None:  # on the first run, a warm-up before the capture
                self.out = torch.empty_like(joined)
                self.host_out = torch.empty(joined.shape, dtype=joined.dtype, pin_memory=pin)
            self.out.copy_(joined)
            self.host_out.copy_(self.out, non_blocking=True)

        with self.rollout.backend.scope():  # the device and matmul precision of the rollout's own calls
            self.run = self.compile(tick, self.device)
        for buffer, x in zip(self.carried, saved):
            buffer.copy_(x)
        planner._load_carried(self.carried)  # not the arrays the capture left behind
        self.kept = list(self.rollout._workspaces.values())
