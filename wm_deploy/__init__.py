"""Roll a world model out fast: load an artifact folder (or a checkpoint) and observe, imagine, decode on
PyTorch, onnxruntime or TensorRT behind one API.

    ro = Rollout.load("artifacts/", backend="auto", device="cpu")
    state = ro.observe(ro.initial(batch=1), frame)     # frame: uint8 [1, 64, 64, 3]
    traj = ro.imagine(state, actions)                 # actions: [1, H, A] raw
    action = Planner(ro).act(state)                   # model-predictive control (wm_deploy.planner)
    Planner(Ensemble([ro, Rollout.load("other/")]))   # several models planned on as one (wm_deploy.ensemble)
"""

from .ensemble import Ensemble
from .planner import Plan, Planner, PlannerSettings
from .rollout import Rollout, imagine_loop
from .state import LatentState, Trajectory

__all__ = ["Ensemble", "LatentState", "Plan", "Planner", "PlannerSettings", "Rollout", "Trajectory", "imagine_loop"]
