"""ONNX -> TensorRT engines: prefill.plan and step.plan for an exported model directory.

Each graph is built in a child process (`python -m rwkv_export.engine JOB REPORT`) because the ONNX
parser can abort the whole process (std::terminate) and because TensorRT-RTX needs a library link
on LD_LIBRARY_PATH, which glibc only reads at process start (plugins/trt_compat.py). The child
writes the plan and a JSON report (layer types, the plugin's build-time calls); the parent checks
it, moves the plan into place atomically and records it in manifest.json with its sha256.

One optimization profile per graph, from the manifest's symbolic dims ("batch", "seq"): min 1,
opt and max from BuildOptions. Precision is the ONNX dtypes: networks are strongly typed.
WKV nodes (rwkv::WKV4 .. WKV7) map to our plugin of their op through one of two fronts: "python"
(class-based IPluginV3, both targets; the runtime needs our Python plugin) or "aot" (standard
TensorRT >= 10.9 decorator plugin with its PTX in the plan; the runtime needs no Python); or "none":
the parser inlines the model-local function.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rwkv_export.errors import RwkvExportError
from rwkv_export.fileio import atomic_update, atomic_write_bytes, sha256_file
from rwkv_export.kernels import trt_compat
from rwkv_export.manifest import Engine, Graph, Manifest

GRAPHS = ("prefill", "step")
PLUGIN_FRONTS = ("auto", "python", "aot", "none")
# TensorRT-RTX's allowed build targets (SM90/SM100 are refused by its builder).
RTX_COMPUTE_CAPABILITIES = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
BUILD_TIMEOUT_S = 1800  # a real model takes minutes; a hung child must not hang CI forever
INLINE_BODY = "scan"  # the ONNX body a parser inlines with --plugin none (every op has it)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What `rwkv-export build` controls. Dims are (min, opt, max) per symbolic manifest dim."""

    target: str | None = None  # "tensorrt" | "tensorrt-rtx"; None: standard TensorRT if installed
    compute_capabilities: tuple[str, ...] = ()  # RTX only, e.g. ("sm80", "sm89"); () = its defaults
    max_batch: int = 8
    max_seq: int = 512  # prefill's longest chunk; longer prompts are fed in chunks
    opt_batch: int = 1  # interactive use: one stream
    opt_seq: int = 64
    workspace: int | None = None  # bytes; None: TensorRT's default (device memory)
    plugin: str = "auto"
    ptx_arch: str | None = None  # PTX target; None: the lowest compute capability built for

    def dim_bounds(self) -> dict[str, tuple[int, int, int]]:
        return {
            "batch": (1, min(self.opt_batch, self.max_batch), self.max_batch),
            "seq": (1, min(self.opt_seq, self.max_seq), self.max_seq),
        }


# --- parent side ----------------------------------------------------------------------------------


def resolve_target(target: str | None) -> str:
    """The target to build for, or a RwkvExportError saying what to install."""
    if target is not None and target not in trt_compat.TARGETS:
        raise RwkvExportError(f"unknown --target {target!r}; expected one of {', '.join(trt_compat.TARGETS)}")
    chosen = target or trt_compat.default_target()
    if chosen is None or chosen not in trt_compat.available_targets():
        what = chosen or "TensorRT (neither tensorrt nor tensorrt-rtx)"
        raise RwkvExportError(f"{what} is not installed; {trt_compat.INSTALL_HINT[chosen or 'tensorrt-rtx']}")
    return chosen


def resolve_plugin(plugin: str, target: str) -> str:
    """Check the front; "auto" stays "auto" for standard TensorRT (the build child picks "aot" when
    its TensorRT has AOT plugins, >= 10.9, else "python") and is "python" for TensorRT-RTX."""
    if plugin not in PLUGIN_FRONTS:
        raise RwkvExportError(f"unknown plugin front {plugin!r}; expected one of {', '.join(PLUGIN_FRONTS)}")
    if target == "tensorrt-rtx" and plugin == "aot":
        raise RwkvExportError("TensorRT-RTX has no AOT (decorator) plugins; use --plugin python or --target tensorrt")
    if plugin == "auto" and target == "tensorrt-rtx":
        return "python"
    return plugin


def normalize_compute_capabilities(values: tuple[str, ...], target: str) -> tuple[str, ...]:
    """'80', 'sm_80', 'SM80' -> 'sm80'; RTX only (standard TensorRT builds for the GPU it runs on)."""
    out = []
    for raw in values:
        digits = raw.lower().replace("sm_", "").replace("sm", "").replace(".", "")
        name = f"sm{digits}"
        if name not in RTX_COMPUTE_CAPABILITIES:
            raise RwkvExportError(
                f"compute capability {raw!r} is not one TensorRT-RTX builds for; expected one of {', '.join(RTX_COMPUTE_CAPABILITIES)}"
            )
        out.append(name)
    if out and target != "tensorrt-rtx":
        raise RwkvExportError("--compute-capability applies to --target tensorrt-rtx; standard TensorRT builds for the local GPU")
    return tuple(dict.fromkeys(out))


def profile_for(graph: Graph | Mapping[str, Any], bounds: dict[str, tuple[int, int, int]]) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max]} for every input with a symbolic dim; static inputs are omitted.
    `graph`: a manifest Graph, or its JSON form (a dict with "inputs")."""
    inputs = (
        [(t.name, t.shape) for t in graph.inputs] if isinstance(graph, Graph) else [(t["name"], tuple(t["shape"])) for t in graph["inputs"]]
    )
    profile: dict[str, list[list[int]]] = {}
    for name, shape in inputs:
        if all(isinstance(d, int) for d in shape):
            continue
        triple: list[list[int]] = [[], [], []]
        for dim in shape:
            if isinstance(dim, str) and dim not in bounds:
                raise RwkvExportError(f"input {name!r} has symbolic dim {dim!r}; build knows only {', '.join(bounds)}")
            for j in range(3):
                triple[j].append(bounds[dim][j] if isinstance(dim, str) else int(dim))
        profile[name] = triple
    return profile


def build_graph(
    onnx_path: Path, plan_path: Path, profile: dict[str, list[list[int]]], options: BuildOptions, target: str, plugin: str
) -> dict[str, Any]:
    """Build one engine in a child process; return its report. Writes plan_path atomically."""
    compute = normalize_compute_capabilities(options.compute_capabilities, target)
    ptx_arch = options.ptx_arch or (f"sm_{min(int(c[2:]) for c in compute)}" if compute else "sm_75")
    with tempfile.TemporaryDirectory(prefix="rwkv-trt-build-") as tmp:
        parsed = _inlinable_copy(onnx_path, Path(tmp)) if plugin == "none" else onnx_path
        job: dict[str, Any] = {
            "target": target,
            "onnx": str(parsed),
            "plan": str(Path(tmp) / "engine.plan"),
            "profile": profile,
            "workspace": options.workspace,
            "compute_capabilities": list(compute),
            "plugin": plugin,
            "ptx_arch": ptx_arch,
        }
        job_path, report_path = Path(tmp) / "job.json", Path(tmp) / "report.json"
        job_path.write_text(json.dumps(job))
        cmd = [sys.executable, "-m", "rwkv_export.engine", str(job_path), str(report_path)]
        try:
            proc = subprocess.run(cmd, env=_child_env(target), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise RwkvExportError(f"building {onnx_path.name} took over {BUILD_TIMEOUT_S}s; lower --max-seq/--max-batch") from exc
        if not report_path.is_file():  # the child died before reporting: an abort in TensorRT
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise RwkvExportError(f"TensorRT build of {onnx_path.name} died (exit {proc.returncode}): {tail or 'no output'}")
        report: dict[str, Any] = json.loads(report_path.read_text())
        if not report.get("ok"):
            raise RwkvExportError(f"TensorRT build of {onnx_path.name} failed: {report.get('error')}")
        atomic_write_bytes(plan_path, Path(job["plan"]).read_bytes())
    report["ptx_arch"] = ptx_arch
    return report


def _inlinable_copy(onnx_path: Path, tmp: Path) -> Path:
    """A copy whose rwkv:: function is the op's scan body with no If(T == 1) shortcut, for parsers
    that inline it.

    TensorRT-RTX 1.7 hits an internal assertion (graphScope.cpp) when it inlines a function body
    holding that If; the scan body without it builds (it also has no data-dependent branch, unlike
    the gemm body's range check). Only the function body changes (same op, same opset): every body
    computes the op, so the engine computes what ONNX Runtime computes.
    """
    import onnx

    from rwkv_export.ops.onnx_function import wkv_function
    from rwkv_export.ops.registry import DOMAIN

    model = onnx.load(str(onnx_path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    op = next(n.op_type for n in model.graph.node if n.domain == DOMAIN)
    del model.functions[:]
    model.functions.append(wkv_function(op, opset, INLINE_BODY, single_step=False))
    out = tmp / onnx_path.name
    large = model.ByteSize() > 1_800_000_000
    onnx.save_model(model, str(out), save_as_external_data=large, location=out.name + ".data" if large else None)
    return out


def _child_env(target: str) -> dict[str, str]:
    env = trt_compat.subprocess_env(target)
    root = str(Path(__file__).resolve().parent.parent)  # the child must import this same checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def build(
    model_dir: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    graphs: tuple[str, ...] = GRAPHS,
    on_report: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build `graphs` of an exported model directory; return the manifest's new "engines" entries.

    `on_report(graph, report)` receives each child's full report (layers, plugin build calls).
    """
    target = resolve_target(options.target)  # first: "TensorRT is missing" beats any other complaint
    plugin = resolve_plugin(options.plugin, target)
    model_dir = Path(model_dir)
    manifest = Manifest.read(model_dir)
    plugin = plugin_front(manifest.export.op, plugin)
    bounds = options.dim_bounds()
    engines: dict[str, Any] = {}
    staged: dict[Path, Path] = {}  # final plan -> finished temp plan: nothing moves until all graphs built
    # The plans and the manifest change together: in a staged copy of the directory that replaces it
    # in one step, so a build killed at any moment leaves the old export or the new one.
    with atomic_update(model_dir) as stage:
        _build_each(stage, manifest, graphs, options, target, plugin, bounds, engines, staged, on_report)
        for final, tmp in staged.items():
            os.replace(tmp, final)
        _record_engines(stage, engines)
    return {name: entry.to_dict() for name, entry in engines.items()}


def plugin_front(op: str, plugin: str) -> str:
    """The plugin front for this model's op. Both fronts implement every op; "auto" takes the AOT
    front only for ops whose registry entry says so (`aot_by_default`: the AOT front of WKV5/6/7 has
    never been built, no standard TensorRT here), else the Python front, built in CI through
    TensorRT-RTX; --plugin aot asks for the AOT one explicitly. Initial files (a v6 time_state) need
    nothing of the engine: the runner feeds the manifest's initial state, as ONNX Runtime does."""
    from rwkv_export.ops.registry import op_spec

    return "python" if plugin == "auto" and not op_spec(op).aot_by_default else plugin


def _build_each(
    model_dir: Path,
    manifest: Manifest,
    graphs: tuple[str, ...],
    options: BuildOptions,
    target: str,
    plugin: str,
    bounds: dict[str, tuple[int, int, int]],
    engines: dict[str, Engine],
    staged: dict[Path, Path],
    on_report: Callable[[str, dict[str, Any]], None] | None,
) -> None:
    for name in graphs:
        graph = manifest.graph(name)
        onnx_path = manifest.path(graph.file, f"graphs.{name}.file")
        plan_path = model_dir / f"{name}.plan"
        staged[plan_path] = model_dir / f".{name}.plan.partial"
        profile = profile_for(graph, bounds)
        report = build_graph(onnx_path, staged[plan_path], profile, options, target, plugin)
        if on_report is not None:
            on_report(name, report)
        engines[name] = Engine(
            file=plan_path.name,
            sha256=sha256_file(staged[plan_path]),
            target=target,
            tensorrt_version=report["version"],
            plugin=report["plugin"],
            ptx_arch=report["ptx_arch"] if report["plugin"] == "aot" else None,  # "python" JITs per GPU
            compute_capabilities=tuple(report["compute_capabilities"]),
            profile={k: tuple(tuple(b) for b in v) for k, v in profile.items()},
            plugin_layers=report["plugin_layers"],
        )


def _record_engines(model_dir: Path, engines: dict[str, Engine]) -> None:
    """Read-modify-write manifest.json (atomic replace), keeping engines of graphs not rebuilt."""
    manifest = Manifest.read(model_dir, check_files=False)
    dataclasses.replace(manifest, engines={**(manifest.engines or {}), **engines}).write(model_dir)


# --- child side -----------------------------------------------------------------------------------


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """Parse, configure and build one engine in this (child) process; return the report."""
    trt = trt_compat.load(job["target"])
    events: list[dict[str, Any]] = []
    if job["plugin"] == "auto":  # standard TensorRT: AOT where this version has it (>= 10.9)
        import importlib.util

        has_aot = hasattr(trt, "QuickPluginCreationRequest") and importlib.util.find_spec("tensorrt.plugin") is not None
        job["plugin"] = "aot" if has_aot else "python"
    if job["plugin"] == "python":
        from rwkv_export.kernels import trt_plugin

        trt_plugin.register(trt, events)
    elif job["plugin"] == "aot":
        from rwkv_export.kernels import trt_aot

        trt_aot.register(job["ptx_arch"])

    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, job["plugin"]))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(job["onnx"]):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        return {"ok": False, "error": f"ONNX parser: {errors}"}
    layers = [{"name": network.get_layer(i).name, "type": network.get_layer(i).type.name} for i in range(network.num_layers)]

    config = builder.create_builder_config()
    if job["workspace"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(job["workspace"]))
    if job["compute_capabilities"]:  # TensorRT-RTX: build for these SMs instead of its defaults
        config.num_compute_capabilities = len(job["compute_capabilities"])
        for i, cc in enumerate(job["compute_capabilities"]):
            config.set_compute_capability(getattr(trt.ComputeCapability, cc.upper()), i)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in job["profile"].items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        last = logger.errors[-1] if logger.errors else "no error logged"
        return {"ok": False, "error": f"build_serialized_network failed: {last}", "layers": layers}
    with open(job["plan"], "wb") as f:
        f.write(memoryview(plan))
    return {
        "ok": True,
        "version": trt.__version__,
        "plugin": job["plugin"],
        "layers": layers,
        "plugin_events": events,
        "plugin_layers": sum(layer["type"] in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN") for layer in layers),
        "compute_capabilities": job["compute_capabilities"],
    }


def _logger(trt: Any) -> Any:
    """An ILogger that prints warnings and errors to stderr and keeps the errors for the report."""

    class Logger(trt.ILogger):  # trt is Any here: either flavour
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg.strip())
            if severity <= trt.ILogger.Severity.WARNING:
                print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)

    return Logger()


def _network_flags(trt: Any, plugin: str) -> int:
    """STRONGLY_TYPED where the flag exists (RTX and TensorRT 11 are strongly typed regardless)."""
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    if plugin == "aot" and hasattr(creation, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(creation.PREFER_AOT_PYTHON_PLUGINS)
    return flags


def _main(argv: list[str]) -> int:
    job_path, report_path = argv
    job = json.loads(Path(job_path).read_text())
    try:
        report = _worker(job)
    except Exception as exc:  # report, don't traceback: the parent turns this into one line
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    Path(report_path).write_text(json.dumps(report, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
