"""Model-predictive control in the world model's latent space: MPPI / CEM over action sequences, in the style of
TD-MPC2 (Hansen et al. 2024, tdmpc2/tdmpc2.py `plan`), on any backend of a `Rollout`.

    planner = Planner(rollout, horizon=12, samples=256, iterations=3, seed=0)
    state = rollout.observe(state, frame, prev_action)
    action = planner.act(state)            # raw action: float32 [A] (continuous) or int (discrete)

Every tick starts from the observed state and runs `iterations` rounds of: draw `samples` candidate action
sequences of `horizon` steps (all but `replay` of them from the current distribution; those `replay` are the
previous tick's best elites shifted one step, the chosen one first), imagine them all in ONE batched
`Rollout.imagine` call, score them, keep the `elites` best and refit the distribution to them with weights
exp(temperature * (value - best value) / spread), the spread being the elite values' std (`weights="scaled"`,
so that the temperature means the same whatever the scale of the values; `weights="raw"`: no division, as
TD-MPC2). The action taken is the first of an elite drawn by those weights (`execute="draw"`; TD-MPC2 does this
too: the weighted mean of a two-peaked elite set, steer left or right, could be neither), or the refit mean's
first step (`execute="mean"`, as PlaNet). The refit mean, shifted one step, warm-starts the next tick. No Python
loop runs over candidates.

With a model that has an actor (model.actor_critic), each tick first rolls the actor out open loop from the
state (`Rollout.policy_plan`): the search starts at that plan instead of the shifted mean, and `policy_samples`
candidates of every iteration are the plan itself and copies jittered by `min_std` (TD-MPC2 mixes policy
rollouts into its samples the same way).

A candidate's value is the discounted sum of the rewards the model predicts, each weighted by the predicted
probability that the episode is still going when it is received, plus, with a model that has a critic, the
critic's value of the last imagined state (what lies beyond the horizon; TD-MPC2, MBOP):
    value = sum_{k<H} discount^k * reward_k * alive_k + discount^H * alive_H * V(s_H),  alive_k = prod_{j<k} cont_j
With a goal frame instead (`goal=` or `set_goal`, for a model without reward and continuation heads), it is
minus the discounted latent distance to the goal's encoding: -sum_k discount^k * ||z_k - z_goal||.

Continuous actions are searched within per-dimension bounds (the artifacts' action codec records the
environment's; CarRacing's steering lies in [-1, 1], gas and brake in [0, 1]); discrete ones with a categorical
cross-entropy method (wm_deploy.plan_distributions). The planner's randomness is its own seeded generator.

Dimensions: N samples (candidates per iteration), K elites, R replayed, H horizon, A action width, S latent.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from .ensemble import Ensemble
from .plan_distributions import Arrays, Categorical, Gaussian, shift
from .rollout import Rollout
from .state import LatentState, Trajectory
from .tick_graph import TickGraph, tick_graph_supported

Prior = Literal["data", "bounds"]
"""where a continuous search starts each tick (PlannerSettings.prior)"""
PRIORS: tuple[str, ...] = get_args(Prior)
Weights = Literal["scaled", "raw"]
"""how the elite values become weights (PlannerSettings.weights)"""
WEIGHTS: tuple[str, ...] = get_args(Weights)
Execute = Literal["draw", "mean"]
"""which action a tick takes (PlannerSettings.execute)"""
EXECUTES: tuple[str, ...] = get_args(Execute)
MIN_SPREAD = 1e-6
"""`weights="scaled"`: the elite values' std is floored here (elites of equal value weigh alike)"""
DATA_PRIOR_SCALE = 2.0
"""prior `data`: the search's std is capped at this many training stds per action dimension"""


@dataclass(frozen=True)
class PlannerSettings:
    """The planner's knobs; `wm-control` makes one option of each (but `seed`, which its --seed sets). Why the
    defaults are what they are, and what they cost per tick: docs/control.md."""

    horizon: int = 12
    """H: steps imagined per candidate action sequence"""
    samples: int = 256
    """N: candidate action sequences per iteration, the replayed ones included (the batch of each imagine call)"""
    iterations: int = 3
    """rounds of sample -> imagine -> refit per tick"""
    elites: int = 32
    """K: best candidates the distribution is refit to"""
    replay: int = 16
    """R: candidates per iteration that are the previous tick's best elites shifted one step (the chosen one
    first); 0: none"""
    temperature: float = 0.5
    """elites are weighted exp(temperature * (value - best value) / spread): higher trusts the best more. The
    spread is the elite values' std with `weights` scaled, 1 (a unit of value) with raw"""
    weights: Weights = "scaled"
    """`scaled`: the elite values are divided by their std before the temperature, so that the weights tell the
    elites apart whatever the scale of the values (CarRacing's ~1-2 left the raw weights near-uniform);
    `raw`: per unit of value, as TD-MPC2 (and this planner before)"""
    execute: Execute = "draw"
    """`draw`: take the first action of an elite drawn by the weights (TD-MPC2); `mean`: the first step of the
    refit mean (PlaNet), which can fall between two elite modes"""
    policy_samples: int = 24
    """with a model that has an actor: candidates per iteration that are the actor's open-loop plan (the first)
    and copies of it jittered by min_std; the search also starts each tick at that plan (TD-MPC2: 24 of 512).
    0: the actor is not used"""
    use_value: bool = False
    """with a model that has a critic: add discount^H * alive_H * V(last state) to each candidate's value (what
    lies beyond the horizon); off: the rewards within the horizon only. Off by default: on the CarRacing benchmark
    the critic's values did not predict the returns (wm-eval value_r2 -0.64) and halved the return (docs/control.md);
    turn it on for a critic whose value_r2 is high"""
    min_std: float = 0.05
    """continuous actions: floor of the search's std per step and dimension, in half-ranges of the dimension's
    bounds"""
    max_std: float = 1.0
    """continuous actions: ceiling of the search's std, and the std a `bounds` search starts from each tick, in
    half-ranges of the dimension's bounds (TD-MPC2 starts at 2 and iterates 6 times; docs/control.md)"""
    prior: Prior = "data"
    """continuous actions: where each tick's search starts. `data`: at the training actions' mean, its std capped
    at DATA_PRIOR_SCALE (2) training stds (the action codec's statistics), since the model predicts well only
    near the actions it was trained on. `bounds`: the middle of the bounds with std max_std, as TD-MPC2"""
    action_penalty: float = 0.0
    """continuous actions: value subtracted per imagined step (discounted like the rewards) and per squared
    training std by which a candidate's actions lie beyond DATA_PRIOR_SCALE (2) training stds of the training
    actions' mean, summed over dimensions. It stops the search drifting, tick by tick, to actions the model
    barely saw and cannot tell apart (docs/control.md). 0: no penalty"""
    min_prob: float = 0.02
    """discrete actions: floor of each action's probability per step, so that no action is ruled out for good"""
    discount: float = 0.99
    """the value predicted k steps ahead is weighted discount^k"""
    seed: int = 0
    """seeds the planner's own generator: the same seed, state and model give the same actions"""

    def check(self) -> None:
        """ValueError naming the first setting out of its range."""
        checks = [
            (self.horizon >= 1, "horizon must be >= 1"),
            (self.samples >= 2, "samples must be >= 2"),
            (self.iterations >= 1, "iterations must be >= 1"),
            (1 <= self.elites <= self.samples, f"elites must be in [1, samples={self.samples}]"),
            (0 <= self.replay <= min(self.elites, self.samples - 1), "replay must be in [0, min(elites, samples - 1)]"),
            (math.isfinite(self.temperature) and self.temperature > 0, "temperature must be finite and > 0"),
            (self.weights in WEIGHTS, f"weights must be one of {WEIGHTS}"),
            (self.execute in EXECUTES, f"execute must be one of {EXECUTES}"),
            (self.policy_samples >= 0, "policy_samples must be >= 0"),
            (0 < self.min_std <= self.max_std < math.inf, "std bounds need 0 < min_std <= max_std < inf"),
            (self.prior in PRIORS, f"prior must be one of {PRIORS}"),
            (0 <= self.min_prob < 1, "min_prob must be in [0, 1)"),
            (0 < self.discount <= 1, "discount must be in (0, 1]"),
            (0 <= self.action_penalty < math.inf, "action_penalty must be finite and >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"planner: {message}; got {self}")


@dataclass(frozen=True)
class Plan:
    """What one tick chose (numpy arrays)."""

    actions: np.ndarray
    """raw actions of the chosen candidate: float32 [H, A] (continuous) or int64 [H] (discrete)"""
    value: float
    """its value under the objective (for execute="mean": the best candidate's)"""
    z: np.ndarray
    """[H, S] its imagined latents z_1..z_H (prior means): decode z[-1] to see the planner's horizon"""
    reward: np.ndarray | None
    """[H] its predicted rewards (None for a model without heads)"""
    cont: np.ndarray | None
    """[H] its predicted continuation probabilities (None for a model without heads)"""

    @property
    def action(self) -> np.ndarray | int:
        """The action to take now: float32 [A] or an int."""
        first = self.actions[0]
        return int(first) if self.actions.ndim == 1 else first.copy()


class Planner:
    """MPPI / CEM planning on a Rollout; see the module docstring. Build with settings (PlannerSettings) and/or
    keyword overrides: `Planner(rollout, horizon=8, samples=128)`.

    bounds: (low, high), each [A], for continuous actions: defaults to the action codec's bounds (recorded by
    wm-collect from the environment); may narrow them, never widen them. goal: a uint8 frame [H, W, 3] (or
    [1, H, W, 3]) to plan towards instead of predicted rewards; required for a model without heads. arrays: what
    the planner computes on, `numpy` (the default on a CPU) or `torch` tensors on the rollout's device (the
    default on a GPU); see plan_distributions.Arrays.
    """

    def __init__(
        self,
        rollout: Rollout | Ensemble,
        settings: PlannerSettings | None = None,
        *,
        bounds: tuple[Any, Any] | None = None,
        goal: Any = None,
        arrays: str | None = None,
        **overrides,
    ):
        names = [f.name for f in dataclasses.fields(PlannerSettings)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"planner: unknown setting(s) {unknown}; expected {names}")
        self.settings = dataclasses.replace(settings or PlannerSettings(), **overrides)
        self.settings.check()
        s = self.settings
        if s.samples > rollout.max_batch:
            raise ValueError(
                f"planner: samples={s.samples} exceeds the rollout's maximum batch {rollout.max_batch} (each "
                "iteration imagines all samples in one call); lower samples or export with a larger --max-batch"
            )
        self.rollout = rollout
        self.xp = Arrays(torch.device(rollout.device), arrays)
        self.codec = rollout.codec
        self.discrete = self.codec.mode == "discrete"
        self.distribution: Gaussian | Categorical
        if self.discrete:
            if bounds is not None:
                raise ValueError(
                    f"planner: bounds apply to continuous actions; this model's {self.codec.dim} actions are discrete"
                )
            if self.codec.dim * s.min_prob >= 1:
                raise ValueError(
                    f"planner: min_prob={s.min_prob} x {self.codec.dim} actions must be < 1 (the floor would exceed "
                    "the uniform distribution)"
                )
            if s.action_penalty:
                raise ValueError("planner: action_penalty applies to continuous actions; this model's are discrete")
            self.distribution = Categorical(self.xp, self.codec.dim, s.horizon, s.min_prob)
            self.low = self.high = None
        else:
            self.low, self.high = action_bounds(self.codec, bounds)
            prior = None
            if s.prior == "data":
                prior = (np.asarray(self.codec.mean), DATA_PRIOR_SCALE * np.asarray(self.codec.std))
            self.distribution = Gaussian(self.xp, self.low, self.high, s.horizon, s.min_std, s.max_std, prior)
        self.discounts = self.xp.asarray(s.discount ** np.arange(s.horizon, dtype=np.float32))  # [H]
        self.action_stats = (
            (self.xp.asarray(self.codec.mean), self.xp.asarray(self.codec.std)) if s.action_penalty else None
        )
        self.goal: Any = None  # [1, S]
        self._tick_graph: TickGraph | None = TickGraph(self) if tick_graph_supported(self) else None
        self.has_heads = rollout.has_heads
        self.policy_count = s.policy_samples if getattr(rollout, "has_policy", False) else 0
        if self.policy_count and s.replay + self.policy_count >= s.samples:
            raise ValueError(
                f"planner: replay={s.replay} + policy_samples={s.policy_samples} must leave room for fresh samples "
                f"among samples={s.samples}"
            )
        if goal is not None:
            self.set_goal(goal)
        elif not self.has_heads:
            raise ValueError(
                "planner: this model predicts no rewards (it was trained without model.heads) and no goal frame was "
                "given; train with `model: heads: true` or pass goal= (a frame to plan towards)"
            )
        self.rng = np.random.default_rng(s.seed)  # on the host: the same draws whatever the device
        self.last_plan: Plan | None = None
        self._replay: Any = None  # [R, H, ...] shifted elites of the previous tick
        self._best = self.xp.asarray(np.zeros(1), np.int64)  # execute="mean": the best elite's position

    @property
    def objective(self) -> str:
        """`goal`, `reward` (the model's heads), or how an ensemble combines its members' rewards."""
        if self.goal is not None:
            return "goal"
        return self.rollout.objective if isinstance(self.rollout, Ensemble) else "reward"

    def __repr__(self) -> str:
        backend = self.rollout.backend_name
        return f"Planner({self.codec.mode}, objective={self.objective}, {self.settings}, backend={backend})"

    # --- the API ------------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Forget the previous plan (call at the start of an episode); reseed the generator when `seed` is given."""
        self.distribution.reset()
        self._replay = None
        self.last_plan = None
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def set_goal(self, frame) -> None:
        """Plan towards `frame` (uint8 [H, W, 3] or [1, H, W, 3], numpy or torch) from now on; None goes back to
        predicted rewards (a model with heads only)."""
        if frame is None:
            if not self.has_heads:
                raise ValueError("planner: set_goal(None) needs a model with reward heads; this one has none")
            self.goal = None
            return
        if frame.ndim == 3:
            frame = frame[None]
        mean, _ = self.rollout.encode(frame)
        self.goal = self.xp.asarray(mean)  # [1, S]
        if self._tick_graph is not None:  # its graph reads the old goal: capture again
            self._tick_graph = TickGraph(self)

    def warmup(self) -> None:
        """Allocate the rollout's buffers for this planner's batch and horizon before the first tick; with a tick
        graph, capture it too (two ticks from a zero state, then the generator and the plan are as before)."""
        self.rollout.warmup(self.settings.samples, self.settings.horizon, frames=False)
        if self._tick_graph is None or self._tick_graph.captured:
            return
        saved = self.rng.bit_generator.state
        zeros = [
            self.xp.asarray(np.zeros((1, width), np.float32))
            for width in (self.rollout.dims.deter, self.rollout.dims.latent)
        ]
        for _ in range(2):
            self.plan(LatentState(*zeros))
        self.reset()
        self.rng.bit_generator.state = saved

    def act(self, state: LatentState) -> np.ndarray | int:
        """The action to take in `state` (a LatentState of batch 1, from `Rollout.observe`): float32 [A] in the
        environment's units, or an int for discrete actions. The plan behind it is `last_plan`."""
        return self.plan(state).action

    def plan(self, state: LatentState) -> Plan:
        """One tick of planning from `state` -> the chosen Plan (also kept as `last_plan`).

        On a GPU nothing in the tick waits for the device until its end: the tick's noise is drawn on the host at
        once and copied in one go, imagine runs on the Rollout's trusted path, the checks for non-finite numbers
        and the final draw stay on the device, and what the tick reads back comes in one copy. With a Rollout that
        captures CUDA graphs, the tick's device work is itself one graph (wm_deploy.tick_graph) from the second
        tick of an episode on (the first has no replayed elites yet: another shape)."""
        s, xp = self.settings, self.xp
        h, z = self._start(state)
        # Drawn in the order the iterations use them, then the final draw's: the same numbers as drawing each
        # when it is needed.
        noise = self.distribution.draw(self.rng, s.iterations * self._drawn())  # [iterations * M, H, ...]
        gumbel = self.rng.gumbel(size=s.samples) if s.execute == "draw" else None  # [N] float64
        if self._tick_graph is not None and (self._replay is not None or not s.replay):
            host = self._tick_graph(h, z, noise, gumbel)
        else:
            host = xp.to_host(self._search(h, z, xp.upload(noise), None if gumbel is None else xp.upload(gumbel)))
        checks = 2 + s.iterations  # the non-finite counts of state.h, state.z, each iteration's values
        self._raise_on_nonfinite(host[-checks:])
        H = s.horizon
        width = H * (1 if self.discrete else self.codec.dim)
        actions, value, z_, heads = np.split(
            host[:-checks], [width, width + 1, width + 1 + H * self.rollout.dims.latent]
        )
        reward, cont = np.split(heads, 2) if self.has_heads else (None, None)
        self.last_plan = Plan(
            actions=actions.astype(np.int64) if self.discrete else actions.astype(np.float32).reshape(H, -1),
            value=float(value[0]),
            z=z_.astype(np.float32).reshape(H, -1),
            reward=None if reward is None else reward.astype(np.float32),
            cont=None if cont is None else cont.astype(np.float32),
        )
        return self.last_plan

    # --- internals ----------------------------------------------------------------------------------------

    def _drawn(self) -> int:
        """M: the candidates an iteration draws noise for (all but the replayed ones and the actor's plan)."""
        replayed = 0 if self._replay is None else len(self._replay)
        return self.settings.samples - replayed - (1 if self.policy_count else 0)

    def _search(self, h, z, noise, gumbel):
        """The tick's device work: from h [1, D], z [1, S], the tick's noise and Gumbel draws as device arrays ->
        one float64 array: the executed plan's raw actions, its value, its z, its rewards and continuations (with
        heads), then the non-finite counts (state.h, state.z, each iteration's values). Reads nothing back to the
        host, so that a CUDA graph can capture it (wm_deploy.tick_graph)."""
        s, xp, dist = self.settings, self.xp, self.distribution
        n = s.samples
        start = LatentState(xp.expand(h, n), xp.expand(z, n))
        checks = [xp.count_nonfinite(h), xp.count_nonfinite(z)]
        guide = self._policy_plan(LatentState(h, z))  # [H, ...] the actor's plan in the distribution's coordinates
        dist.begin(guide)
        replay = self._replay
        jittered = self.policy_count - 1 if guide is not None else 0  # copies of the actor's plan
        drawn = len(noise) // s.iterations
        for iteration in range(s.iterations):
            draws = noise[iteration * drawn : (iteration + 1) * drawn]
            given = [] if replay is None else [replay]
            if guide is not None:
                given.append(xp.cat([guide[None], dist.around(guide, draws[:jittered])]))
            candidates = xp.cat([*given, dist.sample(draws[jittered:])]) if given else dist.sample(draws)  # [N, H, ...]
            actions = dist.to_actions(candidates)  # [N, H, A] raw, or [N, H] indices
            trajectory = self.rollout.imagine(start, actions, trusted=True)
            values = self._values(trajectory)  # [N]
            if self.action_stats is not None:
                values = values - self._penalty(actions)
            checks.append(xp.count_nonfinite(values))
            elite_values, elite_index = xp.top(values, s.elites)  # best first
            weights = elite_weights(xp, elite_values, s.temperature, s.weights)
            dist.refit(candidates[elite_index], weights)
        # Indexing with one-element arrays, not scalars: a scalar index of a device tensor is read back to the host.
        chosen = self._draw(weights, elite_index, gumbel)  # [1]: the position among the elites
        if s.replay:  # the chosen one first, then the other elites in order
            key = xp.fill_at(xp.arange(s.elites) * 1.0, chosen, -1.0)
            self._replay = shift(candidates[elite_index[xp.top(-key, s.replay)[1]]])
        index = elite_index[chosen]  # [1]
        executed = dist.mode()[None] if s.execute == "mean" else candidates[index]  # [1, H, ...] before end() shifts
        dist.end()
        reward, cont = trajectory.reward, trajectory.cont
        parts = [dist.to_actions(executed), values[index], trajectory.z[index]]
        parts += [] if reward is None else [reward[index], cont[index]]
        return xp.join([*parts, *checks])

    def _carried(self) -> list:
        """The arrays one tick leaves to the next: the distribution's state, then the replayed elites (if any)."""
        return self.distribution.state() + ([] if self._replay is None else [self._replay])

    def _load_carried(self, carried: list) -> None:
        count = len(self.distribution.state())
        self.distribution.load(carried[:count])
        if len(carried) > count:
            self._replay = carried[count]

    def _start(self, state: LatentState):
        """A LatentState of batch 1 -> its h [1, D] and z [1, S] as arrays of the planner's kind (its finiteness is
        checked on the device, with the rest of the tick)."""
        if not isinstance(state, LatentState):
            raise ValueError(f"planner: expected a LatentState (from Rollout.observe), got {type(state).__name__}")
        if state.batch != 1:
            raise ValueError(f"planner: plans for one state at a time; got a state of batch {state.batch}")
        if state.is_initial:
            raise ValueError("planner: the state has seen no frame yet; observe one first (Rollout.observe)")
        xp = self.xp
        h, z = xp.asarray(state.h), xp.asarray(state.z)
        for name, x, width in (("state.h", h, self.rollout.dims.deter), ("state.z", z, self.rollout.dims.latent)):
            if tuple(x.shape) != (1, width):
                raise ValueError(f"planner: {name} must have shape [1, {width}], got {list(x.shape)}")
        return h, z

    def _raise_on_nonfinite(self, counts: np.ndarray) -> None:
        """counts: non-finite entries of state.h, state.z, then each iteration's values. The state is checked at
        the end of the tick (to read everything back at once), so the search it fed is forgotten."""
        if not counts.any():
            return
        self.reset()
        for name, count in zip(("state.h", "state.z"), counts[:2]):
            if count:
                raise ValueError(f"planner: {name} contains NaN or infinite values")
        iteration = int(np.flatnonzero(counts[2:])[0])
        raise ValueError(
            f"planner: the model predicted non-finite values for {int(counts[2 + iteration])} of "
            f"{self.settings.samples} candidates (iteration {iteration}); its weights or the observed state may be "
            "corrupt"
        )

    def _policy_plan(self, state: LatentState):
        """The actor's open-loop plan from `state` in the distribution's coordinates [H, ...], or None (no actor,
        or policy_samples 0)."""
        if not self.policy_count:
            return None
        plan = self.rollout.policy_plan(state, self.settings.horizon, trusted=True)  # [1, H, A] raw or [1, H]
        return self.distribution.from_actions(self.xp.asarray(plan[0], np.int64 if self.discrete else np.float32))

    def _values(self, trajectory: Trajectory):
        """[N]: the objective of each candidate (see the module docstring)."""
        xp = self.xp
        if self.goal is not None:
            distance = xp.norm(trajectory.z - self.goal[:, None], axis=-1)  # [N, H, S] -> [N, H]
            return -(distance * self.discounts).sum(-1)
        reward, cont = trajectory.reward, trajectory.cont  # [N, H]
        if cont is None:
            return (reward * self.discounts).sum(-1)
        # Reward k is received after action k: weighted by the chance that the episode outlived actions 0..k-1.
        alive = xp.cumprod(xp.cat([xp.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
        values = (reward * alive * self.discounts).sum(-1)
        if trajectory.value is not None and self.settings.use_value:
            # V of the last state counts the rewards from action H on: discounted H steps, and only if the episode
            # outlived actions 0..H-1.
            alive_h = alive[:, -1] * cont[:, -1]
            values = values + self.settings.discount**self.settings.horizon * alive_h * trajectory.value[:, -1]
        return values

    def _penalty(self, actions):
        """[N, H, A] raw actions -> [N]: the action_penalty of each candidate (see PlannerSettings)."""
        assert self.action_stats is not None
        mean, std = self.action_stats  # [A] each
        beyond = abs(actions - mean) / std - DATA_PRIOR_SCALE  # [N, H, A], in training stds
        squared = (self.xp.clip(beyond, 0.0, math.inf) ** 2).sum(-1)  # [N, H]
        return self.settings.action_penalty * (squared * self.discounts).sum(-1)

    def _draw(self, weights, elite_index, gumbel):
        """The position among the elites [1] of one drawn with probability `weights` (Gumbel-max with `gumbel`
        [N], drawn on the planner's generator), or of the best (execute="mean", `gumbel` None). The noise belongs
        to the candidate, not to its rank, so two backends whose values differ in the last digits (and may order
        two nearly equal elites either way) still draw the same candidate. A weight that underflowed to 0 is never
        drawn: log 0 = -inf."""
        if gumbel is None:
            return self._best
        return self.xp.argmax(self.xp.log(weights) + gumbel[elite_index])[None]


class ActorPolicy:
    """Drives with the actor alone (a model trained with model.actor_critic): its deterministic action, one
    `policy` graph call per tick, no search. The baseline the planner should beat, and its fast path. Offers what
    the control loop uses of a Planner (act, reset, warmup, settings, objective, last_plan)."""

    objective = "actor"

    def __init__(self, rollout: Rollout | Ensemble, settings: PlannerSettings | None = None):
        if not rollout.has_policy:
            raise ValueError("the actor policy needs a model trained with `model: actor_critic: true`; it has none")
        self.rollout = rollout
        self.settings = settings or PlannerSettings()
        self.discrete = rollout.codec.mode == "discrete"
        self.last_plan: Plan | None = None  # no plan: nothing is imagined

    def reset(self, seed: int | None = None) -> None:
        """Nothing to forget: the actor is deterministic and keeps no state between ticks."""

    def warmup(self) -> None:
        self.rollout.warmup(1, 1, frames=False)

    def act(self, state: LatentState) -> np.ndarray | int:
        """The actor's action in `state` (batch 1): float32 [A] in the environment's units, or an int."""
        action = self.rollout.policy(state)
        action = action.detach().cpu().numpy() if isinstance(action, torch.Tensor) else np.asarray(action)
        return int(action[0]) if self.discrete else action[0].copy()


def elite_weights(xp: Arrays, elite_values, temperature: float, mode: str):
    """[K] elite values, best first -> weights [K] summing to 1: softmax(temperature * values / spread), the spread
    being the values' std (floored at MIN_SPREAD) for `scaled`, 1 for `raw`."""
    if mode == "scaled":
        spread = xp.maximum(xp.std(elite_values), MIN_SPREAD)  # stays on the device
        return xp.softmax(temperature * elite_values / spread)
    return xp.softmax(temperature * elite_values)  # exp(t (v - best)) / sum


def action_bounds(codec, bounds: tuple[Any, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The planner's continuous bounds: the codec's (low, high), or `bounds` within them -> float32 [A] each.
    ValueError on a width that is not the codec's, low >= high, non-finite bounds, bounds outside the codec's,
    or no bounds at all."""
    A = codec.dim
    recorded = tuple(codec.low), tuple(codec.high)
    if recorded[0] and (len(recorded[0]) != A or len(recorded[1]) != A):
        raise ValueError(
            f"planner: the action codec's bounds have widths {len(recorded[0])} and {len(recorded[1])}, expected {A}"
        )
    if bounds is None:
        if not recorded[0]:
            raise ValueError(
                "planner: the action codec records no action bounds (a model from before they were recorded); pass "
                f"bounds=(low, high), each of width {A}"
            )
        low, high = (np.asarray(b, np.float32) for b in recorded)
    else:
        low, high = (np.asarray(b, np.float32).reshape(-1) for b in bounds)
        if low.shape != (A,) or high.shape != (A,):
            raise ValueError(f"planner: bounds must be (low, high) of width {A} each, got {low.size} and {high.size}")
        if recorded[0]:
            wide_low, wide_high = (np.asarray(b, np.float32) for b in recorded)
            if (low < wide_low).any() or (high > wide_high).any():
                raise ValueError(
                    f"planner: bounds low={low.tolist()} high={high.tolist()} reach outside the action codec's "
                    f"low={wide_low.tolist()} high={wide_high.tolist()} (the environment's action space)"
                )
    got = f"got low={low.tolist()} high={high.tolist()}"
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(f"planner: action bounds must be finite, {got}")
    if not (low < high).all():
        raise ValueError(f"planner: action bounds need low < high in every dimension, {got}")
    return low, high
