"""What the paper and scaling benches share: a measurement in a fresh process, and the model they name."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from rwkv_export.bench.workspace import Workspace
from rwkv_export.checkpoint import ModelConfig


def run_child(module: str, spec: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Runs `python -m module <spec as JSON>`; (True, its last JSON line) or (False, {"error": why})."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return True, json.loads(lines[-1])


def model_summary(ws: Workspace, config: ModelConfig) -> dict[str, Any]:
    """The "model" entry of a paper or scaling result."""
    return {
        "source": ws.source,
        "version": config.version,
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "vocab_size": config.vocab_size,
    }
