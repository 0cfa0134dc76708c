"""State files (rwkv_export/serving/state_file.py) and `run --save-state / --save-final-state /
--load-state`: exact round trips, continuation equal to one run, rows saved and joined, and every
kind of bad file as one line with exit 2.

Exports (shared with the other serving tests of the session): random RWKV-4 float32 and float16,
and RWKV-7 float32, 2 x 32 each.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from rwkv_export.cli import cli
from rwkv_export.errors import RwkvExportError
from rwkv_export.runtime import ExportedModel
from rwkv_export.serving import state_file
from tests.serving.serving_exports import exported, random_checkpoint


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ids(values: list[int] | np.ndarray) -> str:
    return ",".join(str(int(v)) for v in values)


def greedy_ids(result: Result) -> list[list[int]]:
    assert result.exit_code == 0, result.output
    return [[int(t) for t in line.split(",")] for line in result.stdout.strip().splitlines()]


@pytest.fixture(scope="module")
def v4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory, random_checkpoint(tmp_path_factory, "4"))


@pytest.fixture(scope="module")
def model(v4: Path) -> ExportedModel:
    with ExportedModel(v4) as m:
        yield m


PROMPTS = np.random.default_rng(1).integers(0, 61, (3, 7))


def test_round_trip_is_exact_and_atomic(model: ExportedModel, tmp_path: Path) -> None:
    _, state = model.prefill(PROMPTS)
    path = tmp_path / "s.npz"
    state_file.save_state(path, state, model.manifest, note="after the prompt")
    loaded = state_file.load_state(path, model.manifest)
    assert list(loaded) == [s.name for s in model.manifest.state]
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value)
    meta, _ = state_file.read_meta(path)
    assert meta["format"] == "rwkv-export-state/1" and meta["batch"] == 3 and meta["fingerprint"] == model.manifest.fingerprint
    assert meta["model"] == {"version": "4", "n_layer": 2, "n_embd": 32, "vocab_size": 61, "dtype": "float32"}
    assert meta["tensors"]["pp"] == {"dtype": "float32", "shape": [2, 3, 32]} and meta["note"] == "after the prompt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]  # no temporary left behind
    with zipfile.ZipFile(path) as z:  # plain numpy: readable without this project
        assert sorted(z.namelist()) == ["__meta__.npy", "aa.npy", "bb.npy", "pp.npy", "x_att.npy", "x_ffn.npy"]


def test_rows_saved_alone_and_joined_into_a_batch(model: ExportedModel, tmp_path: Path) -> None:
    """A server's view: save each conversation's row alone, assemble them in another order, continue."""
    _, state = model.prefill(PROMPTS)
    for row in range(3):
        model.save_state(tmp_path / f"row{row}.npz", state, rows=[row])
        assert state_file.read_meta(tmp_path / f"row{row}.npz")[0]["batch"] == 1
    joined = state_file.load_states([tmp_path / "row2.npz", tmp_path / "row0.npz"], model.manifest)
    for name, value in state.items():
        assert np.array_equal(joined[name], value[:, [2, 0]])
    picked = model.load_state(tmp_path / "row2.npz", rows=[0, 0])
    assert picked["aa"].shape == (2, 2, 32)
    nxt = np.array([5, 9], np.int64)
    logits, _ = model.step(nxt, joined)
    alone, _ = model.step(nxt[:1], {n: v[:, [2]] for n, v in state.items()})
    np.testing.assert_allclose(logits[:1], alone, rtol=0, atol=1e-5 * np.abs(alone).max())
    with pytest.raises(RwkvExportError, match="has 3 row"):
        state_file.select_rows(state, model.manifest, [3])


def test_cli_continuation_equals_one_run(v4: Path, tmp_path: Path) -> None:
    """prefill(A) -> --save-state -> --load-state + B  ==  run on A + B; --save-final-state then
    continues after the generated tokens exactly as a run on A + B + generated + C."""
    a, b, c = PROMPTS[0, :4], PROMPTS[0, 4:], PROMPTS[1, :3]
    whole = greedy_ids(invoke("run", v4, "--tokens", ids(np.r_[a, b]), "--max-tokens", 5, "--temperature", 0, "--ids", "-q"))
    assert invoke("run", v4, "--tokens", ids(a), "--max-tokens", 0, "--save-state", tmp_path / "a.npz", "-q").exit_code == 0
    resumed = invoke(
        "run",
        v4,
        "--load-state",
        tmp_path / "a.npz",
        "--tokens",
        ids(b),
        "--max-tokens",
        5,
        "--temperature",
        0,
        "--ids",
        "-q",
        "--save-final-state",
        tmp_path / "final.npz",
    )
    assert greedy_ids(resumed) == whole
    later = greedy_ids(
        invoke("run", v4, "--load-state", tmp_path / "final.npz", "--tokens", ids(c), "--max-tokens", 4, "--temperature", 0, "--ids", "-q")
    )
    expected = greedy_ids(
        invoke("run", v4, "--tokens", ids(np.r_[a, b, whole[0], c]), "--max-tokens", 4, "--temperature", 0, "--ids", "-q")
    )
    assert later == expected


def test_cli_batch_from_single_row_files(v4: Path, tmp_path: Path) -> None:
    """Two conversations saved separately, continued together as one batch; one file shared by all."""
    for row in (0, 1):
        assert (
            invoke(
                "run", v4, "--tokens", ids(PROMPTS[row, :5]), "--max-tokens", 0, "--save-state", tmp_path / f"c{row}.npz", "-q"
            ).exit_code
            == 0
        )
    together = greedy_ids(
        invoke(
            "run",
            v4,
            "--load-state",
            tmp_path / "c0.npz",
            "--load-state",
            tmp_path / "c1.npz",
            "--tokens",
            ids(PROMPTS[0, 5:]),
            "--tokens",
            ids(PROMPTS[1, 5:6]),
            "--max-tokens",
            4,
            "--temperature",
            0,
            "--ids",
            "-q",
        )
    )
    for row, suffix in ((0, PROMPTS[0, 5:]), (1, PROMPTS[1, 5:6])):
        alone = greedy_ids(
            invoke("run", v4, "--tokens", ids(np.r_[PROMPTS[row, :5], suffix]), "--max-tokens", 4, "--temperature", 0, "--ids", "-q")
        )
        assert together[row] == alone[0]
    shared = greedy_ids(
        invoke(
            "run",
            v4,
            "--load-state",
            tmp_path / "c0.npz",
            "--tokens",
            ids(PROMPTS[0, 5:]),
            "--tokens",
            ids(PROMPTS[0, 5:]),
            "--max-tokens",
            4,
            "--temperature",
            0,
            "--ids",
            "-q",
        )
    )
    assert shared == [together[0], together[0]]


def _rewrite(path: Path, out: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    with np.load(path) as npz:
        arrays = {n: npz[n] for n in npz.files}
    edit(arrays)
    np.savez(out, **arrays)
    return out


def test_bad_state_files_are_one_line_errors(v4: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    good = tmp_path / "good.npz"
    assert invoke("run", v4, "--tokens", "1,2,3", "--max-tokens", 0, "--save-state", good, "-q").exit_code == 0
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside a stored tensor: the zip's CRC-32 no longer matches
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    np.save(tmp_path / "plain.npy", np.zeros(3))

    def edit_tensor(a: dict) -> None:
        a["aa"][0, 0, 0] += 1.0

    def edit_meta(a: dict) -> None:
        meta = json.loads(a["__meta__"].tobytes())
        meta["format"] = "rwkv-export-state/9"
        a["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    v7 = exported(tmp_path_factory, random_checkpoint(tmp_path_factory, "7"))
    f16 = exported(tmp_path_factory, random_checkpoint(tmp_path_factory, "4"), dtype="float16")
    cases = [
        ([tmp_path / "truncated.npz", v4], "is damaged or not an rwkv-export state file"),
        ([tmp_path / "flipped.npz", v4], "is damaged or not an rwkv-export state file"),
        ([tmp_path / "plain.npy", v4], "is damaged or not an rwkv-export state file"),
        ([tmp_path / "missing.npz", v4], "does not exist"),
        ([_rewrite(good, tmp_path / "edited.npz", edit_tensor), v4], "was edited"),
        ([_rewrite(good, tmp_path / "future.npz", edit_meta), v4], "format 'rwkv-export-state/9' is not supported"),
        ([good, v7], "holds the state of a RWKV-4 2x32 vocab 61 float32 export; this export is RWKV-7 2x32 vocab 61 float32"),
        ([good, f16], "this export is RWKV-4 2x32 vocab 61 float16"),
    ]
    for (path, directory), message in cases:
        result = invoke("run", directory, "--load-state", path, "--tokens", "1", "--max-tokens", 1)
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, (path.name, result.output)
    two = tmp_path / "two.npz"
    assert invoke("run", v4, "--tokens", "1,2", "--tokens", "3,4", "--max-tokens", 0, "--save-state", two, "-q").exit_code == 0
    result = invoke("run", v4, "--load-state", two, "--tokens", "1", "--tokens", "2", "--tokens", "3")
    assert result.exit_code == 2 and "has 2 rows but 3 prompt(s)" in result.output


def test_another_export_of_the_same_model_is_refused(v4: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Same checkpoint, other graphs (--all-logits): same model summary, other fingerprint."""
    other = exported(tmp_path_factory, random_checkpoint(tmp_path_factory, "4"), all_logits=True)
    path = tmp_path / "s.npz"
    assert invoke("run", v4, "--tokens", "1,2", "--max-tokens", 0, "--save-state", path, "-q").exit_code == 0
    result = invoke("run", other, "--load-state", path, "--tokens", "1")
    assert result.exit_code == 2 and "belongs to another export of a RWKV-4 2x32 vocab 61 float32 model" in result.output
