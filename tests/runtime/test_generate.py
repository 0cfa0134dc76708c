"""Sampling (pure numpy) and the generation loop; batches of different lengths equal each prompt alone."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.errors import RwkvExportError
from rwkv_export.generate import Sampling, Stats, generate, prefill_prompts, row_generators, sample, truncated_probs
from rwkv_export.parity.backends import TorchBackend
from tests.conftest import make_checkpoint, requires_shared, tiny_model

PROMPTS = [[5, 17, 3], [9], [40, 2, 2, 7, 1, 88, 6], [11, 12, 13], [70, 71]]  # lengths 3, 1, 7, 3, 2


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory: pytest.TempPathFactory) -> TorchBackend:
    path = make_checkpoint(tmp_path_factory.mktemp("gen") / "r.pth", layers=2, embd=32, vocab=97, seed=3)
    return TorchBackend(load_checkpoint(path), "float32")


# --- sampling ------------------------------------------------------------------------------------


def test_greedy_is_argmax() -> None:
    logits = np.random.default_rng(0).normal(size=(4, 50))
    assert (sample(logits, Sampling(temperature=0), row_generators(0, 4)) == logits.argmax(-1)).all()


def test_top_k_and_top_p_truncate() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert np.count_nonzero(truncated_probs(logits, 1.0, top_k=2)) == 2
    np.testing.assert_allclose(truncated_probs(logits, 1.0, top_p=0.75), [0.625, 0.375, 0, 0])  # 0.5 + 0.3 reaches 0.75
    np.testing.assert_allclose(truncated_probs(logits, 1.0, top_p=0.01), [1, 0, 0, 0])
    np.testing.assert_allclose(truncated_probs(logits, 1.0), [0.5, 0.3, 0.15, 0.05])


def test_temperature_sharpens() -> None:
    logits = np.log(np.array([0.6, 0.4]))
    cold, hot = truncated_probs(logits, 0.5), truncated_probs(logits, 2.0)
    assert cold[0] > 0.6 > hot[0] > 0.5


def test_sampling_follows_the_distribution_and_is_seeded() -> None:
    logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    rng = row_generators(123, 1)
    draws = np.array([sample(logits, Sampling(seed=123), rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)
    again = row_generators(123, 1)
    assert [sample(logits, Sampling(), again)[0] for _ in range(50)] == draws[:50].tolist()


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}])
def test_bad_sampling_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(RwkvExportError):
        Sampling(**kwargs)  # type: ignore[arg-type]


# --- the loop ------------------------------------------------------------------------------------


def _greedy(model: TorchBackend, prompts: list[list[int]], n: int, **kw: object) -> list[list[int]]:
    stats = Stats()
    for _ in generate(model, prompts, n, Sampling(temperature=0), stats, **kw):  # type: ignore[arg-type]
        pass
    return stats.generated


def test_batch_of_different_lengths_equals_each_alone(torch_model: TorchBackend) -> None:
    batched = _greedy(torch_model, PROMPTS, 12)
    alone = [_greedy(torch_model, [p], 12)[0] for p in PROMPTS]
    assert batched == alone


def test_batched_prefill_state_equals_alone(torch_model: TorchBackend) -> None:
    logits, state = prefill_prompts(torch_model, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        one_logits, one_state = prefill_prompts(torch_model, [prompt])
        np.testing.assert_allclose(logits[row], one_logits[0], rtol=0, atol=1e-5, err_msg=f"prompt {row} logits")
        for name, value in state.items():
            np.testing.assert_allclose(value[:, row], one_state[name][:, 0], rtol=0, atol=1e-5, err_msg=f"prompt {row} state {name}")


def test_left_padding_would_change_the_result(torch_model: TorchBackend) -> None:
    """Why prompts are not padded: a pad token, whatever its id, flows into the RNN state."""
    prompt = PROMPTS[0]
    plain, _ = torch_model.prefill(np.array([prompt]))
    padded, _ = torch_model.prefill(np.array([[0, 0, *prompt]]))
    assert np.abs(plain[0, -1] - padded[0, -1]).max() > 1e-3


def test_chunked_prefill_matches(torch_model: TorchBackend) -> None:
    whole = _greedy(torch_model, PROMPTS, 6)
    chunked = _greedy(torch_model, PROMPTS, 6, chunk=2)
    assert whole == chunked


def test_sampled_batch_rows_match_alone_for_row_zero_seed(torch_model: TorchBackend) -> None:
    """Each row has its own generator seeded by (seed, row): results do not depend on batch mates."""

    def sampled(prompts: list[list[int]]) -> list[list[int]]:
        stats = Stats()
        for _ in generate(torch_model, prompts, 10, Sampling(temperature=1.0, top_p=0.9, top_k=20, seed=7), stats):
            pass
        return stats.generated

    assert sampled([PROMPTS[0], PROMPTS[1]])[0] == sampled([PROMPTS[0], PROMPTS[2]])[0] == sampled([PROMPTS[0]])[0]


def test_stats_and_empty_prompt(torch_model: TorchBackend) -> None:
    stats = Stats()
    tokens = list(generate(torch_model, [[1, 2, 3]], 4, Sampling(temperature=0), stats))
    assert len(tokens) == 4 and stats.steps == 3 and stats.prompt_tokens == 3
    assert "tok/s" in stats.summary() and "ms/token" in stats.summary()
    with pytest.raises(RwkvExportError, match="at least one token"):
        list(generate(torch_model, [[1], []], 2))


@requires_shared
def test_tiny_model_batch_equals_alone() -> None:
    model = TorchBackend(load_checkpoint(tiny_model("4v0-660K")), "float32")
    prompts = [list(b"The "), list(b"Once upon"), list(b"x")]
    assert _greedy(model, prompts, 8) == [_greedy(model, [p], 8)[0] for p in prompts]
