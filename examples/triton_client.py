"""Observe frames and imagine a batch of futures against a Triton Inference Server serving the model repository
written by `wm-export CKPT --triton REPO` (start the server as docs/deployment.md says).

    pip install ".[triton]"
    python examples/triton_client.py [--url localhost:8000] [--episode data/carracing/episode_00000.npz]
        [--ticks 5] [--batch 64] [--horizon 15] [--grpc]

The served models are stateless; the client keeps the latent state (h, z), as `wm_deploy.Rollout` does:

- observe(frame, prev_action): one prior step with the encoded action taken since the last frame advances h,
  and the encoder's posterior mean of the new frame is z. For the first frame h stays 0 and there is no step
  (as in training).
- imagine(h, z, actions [B, H, A]): the state is repeated B times (a planner forks one state into many
  futures) and the prior step runs H times, feeding its prior mean back as the next z.

Raw actions are encoded with the training codec, which the prior_step config carries as a parameter
(`ActionCodec.encode_numpy`: the same float32 operations as Rollout's), and the tensor names come from
`wm_core.graphs`, the artifact contract. Without --episode the frames are random.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from wm_core.actions import ActionCodec
from wm_core.graphs import GraphSpec, graph_specs_of

Infer = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
"""(graph name, input arrays by name) -> output arrays by name"""


def triton_infer(url: str, grpc: bool) -> tuple[Infer, dict]:
    """An Infer over a Triton server, and the prior_step config's parameters (action codec and dims)."""
    try:
        if grpc:
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        from tritonclient.utils import np_to_triton_dtype
    except ImportError as error:
        raise SystemExit(f'needs tritonclient: pip install ".[triton]" ({error})') from None
    client = client_module.InferenceServerClient(url)
    if grpc:
        config = client.get_model_config("prior_step", as_json=True)["config"]
    else:
        config = client.get_model_config("prior_step")
    parameters = {key: json.loads(value["string_value"]) for key, value in config["parameters"].items()}
    specs = specs_of(parameters["dims"])

    def infer(graph: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for tensor in specs[graph].inputs:
            array = np.ascontiguousarray(arrays[tensor.name], dtype=tensor.dtype)
            item = client_module.InferInput(tensor.name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            inputs.append(item)
        outputs = [client_module.InferRequestedOutput(name) for name in specs[graph].output_names]
        result = client.infer(graph, inputs, outputs=outputs)
        return {name: result.as_numpy(name) for name in specs[graph].output_names}

    return infer, parameters


def specs_of(dims: dict) -> dict[str, GraphSpec]:
    return graph_specs_of(dims["frame"][0], dims["latent"], dims["deter"], dims["action"])


def observe(infer: Infer, codec: ActionCodec, dims: dict, state, frames: np.ndarray, prev_action=None):
    """state (h [B, D], z [B, S]) or None before the first frame; frames uint8 [B, H, W, 3]; prev_action raw
    [B, A] or int [B] -> the new state."""
    z = infer("encoder", {"obs": frames})["z_mean"]
    if state is None:
        return np.zeros((len(frames), dims["deter"]), np.float32), z
    h, z_before = state
    action = codec.encode_numpy(np.asarray(prev_action))
    h = infer("prior_step", {"h": h, "z": z_before, "action": action})["h_next"]
    return h, z


def imagine(infer: Infer, codec: ActionCodec, state, actions: np.ndarray) -> dict[str, np.ndarray]:
    """From one state (h [1, D], z [1, S]) under raw actions [B, H, A] (or int [B, H]) -> z, prior_std
    [B, H, S] and h [B, H, D], each next z the prior mean."""
    batch, horizon = actions.shape[:2]
    h, z = (np.repeat(x, batch, axis=0) for x in state)  # [1, ...] -> [B, ...]: one state, B futures
    encoded = codec.encode_numpy(actions)  # [B, H, A]
    zs, stds, hs = [], [], []
    for t in range(horizon):
        out = infer("prior_step", {"h": h, "z": z, "action": encoded[:, t]})
        h, z = out["h_next"], out["prior_mean"]
        zs.append(z)
        stds.append(out["prior_std"])
        hs.append(h)
    return {"z": np.stack(zs, 1), "prior_std": np.stack(stds, 1), "h": np.stack(hs, 1)}


def random_actions(codec: ActionCodec, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if codec.mode == "discrete":
        return rng.integers(0, codec.dim, shape)
    return rng.normal(codec.mean, codec.std, (*shape, codec.dim)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="localhost:8000", help="HTTP port (8000), or gRPC (8001) with --grpc")
    parser.add_argument("--grpc", action="store_true")
    parser.add_argument("--episode", help="an episode file (*.npz) whose frames and actions are observed")
    parser.add_argument("--ticks", type=int, default=5, help="frames observed, each followed by an imagine")
    parser.add_argument("--batch", type=int, default=64, help="futures imagined per tick")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    infer, parameters = triton_infer(args.url, args.grpc)
    codec, dims = ActionCodec.from_dict(parameters["action_codec"]), parameters["dims"]
    rng = np.random.default_rng(args.seed)
    if args.episode:
        with np.load(args.episode) as episode:
            frames, actions = episode["obs"], episode["action"]
    else:
        frames = rng.integers(0, 256, (args.ticks, *dims["frame"]), dtype=np.uint8)
        actions = random_actions(codec, rng, (args.ticks,))
    state = None
    for tick in range(min(args.ticks, len(frames))):
        start = time.perf_counter()
        prev_action = actions[tick - 1 : tick] if tick else None
        state = observe(infer, codec, dims, state, frames[tick : tick + 1], prev_action)
        observed = time.perf_counter()
        futures = imagine(infer, codec, state, random_actions(codec, rng, (args.batch, args.horizon)))
        done = time.perf_counter()
        spread = float(futures["z"][:, -1].std(axis=0).mean())
        print(
            f"tick {tick}: observe {1e3 * (observed - start):.1f} ms, imagine {args.batch}x{args.horizon} "
            f"{1e3 * (done - observed):.1f} ms; spread of the last imagined z across futures {spread:.3f}"
        )


if __name__ == "__main__":
    main()
