"""A Triton Inference Server model repository from an artifact folder.

    REPO/
      encoder/     config.pbtxt  1/model.onnx (platform onnxruntime_onnx) or 1/model.plan (tensorrt_plan)
      prior_step/  config.pbtxt  1/model.onnx or 1/model.plan
      decoder/     config.pbtxt  1/model.onnx or 1/model.plan   (unless exported with --no-decoder)

Tensor names, data types and dims come from wm_core.graphs (the one statement of the artifact contract), for
the dimensions in the manifest; Triton's dims leave out the batch axis, which `max_batch_size` stands for. The
TensorRT engines are used when the artifact folder has them (their profile's max batch is then
`max_batch_size`, since an engine accepts no larger batch); otherwise the ONNX graphs, whose batch axis is
dynamic, with the export's max batch. Dynamic batching is on for every model: the server merges concurrent
requests into one batch. The prior step stays stateless (h, z and the encoded action in; h_next and the
prior out): a planner forks one state into many futures and keeps the states itself. The prior step's config
carries the action codec and the manifest's dims as parameters, so a client can encode raw actions exactly
as `wm_deploy.Rollout` does without the artifact folder (examples/triton_client.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from wm_core.graphs import GraphSpec, TensorSpec, graph_specs_of
from wm_core.manifest import has_heads, has_value, load_manifest, read_verified
from wm_core.publish import check_replaceable, staged_dir

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "plan": ("tensorrt_plan", "model.plan")}
MAX_QUEUE_DELAY_US = 100
"""how long the dynamic batcher may hold a request to merge it with others"""


MARKER = "encoder/config.pbtxt"
"""the file that makes a folder a model repository this module wrote"""


def check_repository_destination(target: str | Path, overwrite: bool) -> None:
    """Refuse an existing non-empty `target` unless it is a model repository holding only the files this module
    writes, and that only with `overwrite` (wm_core.publish.check_replaceable)."""
    check_replaceable(target, overwrite, "Triton repository", MARKER, repository_files)


def repository_files(target: Path) -> set[str]:
    """The files this module may have written in the model repository `target`: each model's config.pbtxt and
    its model file, for every model folder that holds a config.pbtxt."""
    files = set()
    for config in target.glob("*/config.pbtxt"):
        model = config.parent.name
        files |= {f"{model}/config.pbtxt", *(f"{model}/1/{name}" for _, name in PLATFORMS.values())}
    return files


def write_triton_repository(artifacts: str | Path, target: str | Path, max_batch: int) -> Path:
    """Write the model repository of the artifact folder `artifacts` at `target` (built beside it, renamed into
    place when complete) -> `target`. An existing `target` is replaced only if it is a model repository holding
    nothing else (or an empty folder): `export_artifacts` asked for `overwrite` before the export. Each model
    file is the bytes read and verified from the artifact folder (`read_verified`). `max_batch`: max_batch_size
    of the ONNX models."""
    artifacts, target = Path(artifacts), Path(target)
    check_repository_destination(target, overwrite=True)
    manifest = load_manifest(artifacts)
    dims = manifest["dims"]
    specs = graph_specs_of(
        dims["frame"][0],
        dims["latent"],
        dims["deter"],
        dims["action"],
        "decoder" in manifest["graphs"],
        heads=has_heads(manifest),
        actor_critic=has_value(manifest),
    )
    if set(specs) != set(manifest["graphs"]):
        raise ValueError(f"{artifacts}: graphs {sorted(manifest['graphs'])}, expected {sorted(specs)}")
    engines = (manifest["tensorrt"] or {}).get("engines") or {}
    if engines:
        max_batch = manifest["tensorrt"]["profile"]["max"]
    parameters = {"action_codec": json.dumps(manifest["action_codec"]), "dims": json.dumps(dims)}
    with staged_dir(target, check=lambda: check_repository_destination(target, overwrite=True)) as folder:
        for name, spec in specs.items():
            kind, source = (
                ("plan", engines[name]["file"]) if name in engines else ("onnx", manifest["graphs"][name]["file"])
            )
            platform, model_file = PLATFORMS[kind]
            (folder / name / "1").mkdir(parents=True)
            (folder / name / "1" / model_file).write_bytes(read_verified(artifacts, manifest, source).data)
            config = model_config(spec, platform, max_batch, parameters if name == "prior_step" else {})
            (folder / name / "config.pbtxt").write_text(config)
    return target


def model_config(spec: GraphSpec, platform: str, max_batch: int, parameters: dict[str, str]) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) of one graph."""
    lines = [
        f'name: "{spec.name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        *_tensors("input", spec.inputs),
        *_tensors("output", spec.outputs),
        f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}",
    ]
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}")
    return "\n".join(lines) + "\n"


def _tensors(kind: str, tensors: tuple[TensorSpec, ...]) -> list[str]:
    lines = [f"{kind} ["]
    for i, tensor in enumerate(tensors):
        assert tensor.shape[0] == "batch", "every graph's first axis is the batch"
        dims = ", ".join(str(d) for d in tensor.shape[1:])  # without the batch axis: max_batch_size stands for it
        # A tensor of the batch axis alone ([B]: reward, cont): Triton needs non-empty dims, and documents
        # dims [1] reshaped to [] for it.
        shape = f"dims: [ {dims} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
        comma = "," if i < len(tensors) - 1 else ""
        lines.append(f'  {{ name: "{tensor.name}" data_type: {TRITON_TYPES[tensor.dtype]} {shape} }}{comma}')
    lines.append("]")
    return lines
