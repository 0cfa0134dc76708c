"""`rwkv-export run DIR --prompt TEXT`: generate text with an exported model, streamed to stdout.

Prompts are tokenized with the tokenizer the manifest names (or --tokenizer FILE), or given as ids
with --tokens. Several prompts run as one batch (prefilled per length, never padded). With one
prompt the text streams as it is produced; with several, each prompt's text is printed when done.
The throughput line goes to stderr.

State files (rwkv_export/serving/state_file.py): --save-state writes the state after the prompt,
--save-final-state the state after the prompt and every generated token, --load-state continues
from a saved state (one row shared by every prompt, or one row per prompt; repeat the option to
assemble a batch from single-conversation files).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import numpy as np

from rwkv_export.cli.options import (
    SEED,
    TEMPERATURE,
    TOKEN_IDS,
    TOP_P,
    bounded,
    examples,
    path_option,
    quiet_flag,
    shown_option,
)
from rwkv_export.errors import RwkvExportError

if TYPE_CHECKING:
    from rwkv_export.manifest import Manifest


@click.command(
    "run",
    epilog=examples(
        "rwkv-export run out/ --prompt 'The quick brown' --max-tokens 64",
        "rwkv-export run out/ --prompt 'Hello' --prompt 'Once upon a time' --temperature 0",
        "rwkv-export run out/ --tokens 34,105,110 --temperature 0.8 --top-p 0.9 --seed 1",
        "rwkv-export run out-169m/ --tokenizer 20B_tokenizer.json --prompt 'RWKV is' --provider cuda",
        "rwkv-export run out/ --prompt 'You are a helpful assistant.' --max-tokens 0 --save-state system.npz",
        "rwkv-export run out/ --load-state system.npz --prompt 'User: hi' --save-final-state chat.npz",
    ),
)
@click.argument("model_dir", metavar="DIR", type=click.Path(path_type=str))
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeat for a batch).")
@click.option(
    "--tokens",
    "token_lists",
    multiple=True,
    metavar="IDS",
    type=TOKEN_IDS,
    help="Prompt as comma-separated token ids, e.g. 34,105,110 (repeatable).",
)
@shown_option("--max-tokens", type=click.IntRange(0, 1 << 20), default=100, help="Tokens to generate per prompt.")
@shown_option("--temperature", type=TEMPERATURE, default=1.0, help="Sampling temperature (finite, >= 0); 0 is greedy.")
@shown_option("--top-p", type=TOP_P, default=1.0, help="Nucleus sampling: keep the smallest set of tokens with this much probability.")
@shown_option("--top-k", type=bounded(0), default=0, help="Keep only the k most likely tokens (0: all).")
@click.option("--seed", type=SEED, default=None, help="Random seed, 0 .. 2**64-1 (same seed, same text).")
@shown_option(
    "--provider",
    type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
    default="auto",
    help="Where to run: ONNX Runtime on CPU or CUDA, TensorRT (the built engines, else ORT's TensorRT provider), or the best available.",
)
@path_option("--tokenizer", help="tokenizer.json (or a world vocabulary .txt) to use instead of the manifest's.")
@shown_option("--threads", type=click.IntRange(0, 1024), default=0, help="ONNX Runtime threads (0: all cores).")
@click.option("--ids", "print_ids", is_flag=True, help="Print generated token ids (one line per prompt) instead of text.")
@path_option("--save-state", help="Write the state after the prompt(s) to this .npz state file.")
@path_option("--save-final-state", help="Write the state after the prompt(s) and every generated token (to continue the conversation).")
@path_option(
    "--load-state",
    "load_states",
    multiple=True,
    help="Continue from a saved state: one row for every prompt, or one row per prompt (repeat to join files into a batch).",
)
@quiet_flag
def run(
    model_dir: str,
    prompts: tuple[str, ...],
    token_lists: tuple[str, ...],
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    provider: str,
    tokenizer: str | None,
    threads: int,
    print_ids: bool,
    save_state: str | None,
    save_final_state: str | None,
    load_states: tuple[str, ...],
    quiet: bool,
) -> None:
    """Generate from the exported model in DIR: prefill the prompt, then step, sampling each token.

    DIR is checked first: every file its manifest names must lie inside DIR and match its sha256.
    A file fully hashed once is then trusted while its size and modification time are unchanged
    (cache: $RWKV_EXPORT_CACHE or ~/.cache/rwkv-export/sha256-cache.json; RWKV_EXPORT_HASH_CACHE=0
    hashes every time).
    """
    from rwkv_export.generate import Sampling, Stats, generate
    from rwkv_export.runtime import ExportedModel
    from rwkv_export.tokenizer import StreamDecoder, describe, load_tokenizer

    if bool(prompts) == bool(token_lists):
        raise RwkvExportError("give the prompt as --prompt TEXT or as --tokens IDS (one of the two)")
    model = ExportedModel(model_dir, provider, threads)
    tok = None if print_ids and token_lists else _tokenizer(load_tokenizer, model_dir, tokenizer, model.vocab_size, bool(prompts))
    batch = [_encode(tok, p) for p in prompts] if prompts else [_parse_ids(t) for t in token_lists]
    for ids in batch:
        model.check_tokens(np.asarray(ids, np.int64))
    states = _StateFiles(model.manifest, save_state, save_final_state, load_states, len(batch))
    sampling = Sampling(temperature, top_p, top_k, seed)
    if not quiet:
        what = describe(tok) if tok is not None else "token ids"
        click.echo(f"[run] {model.backend_name}, {len(batch)} prompt(s), {what}", err=True)
    stats = Stats()
    streaming = len(batch) == 1 and not print_ids and tok is not None
    decoder = StreamDecoder(tok) if streaming and tok is not None else None
    with model:
        for tokens in generate(model, batch, max_tokens, sampling, stats, initial=states.initial):
            states.after_prompt(stats.state)
            if decoder is not None:
                _write(decoder.push(int(tokens[0])))
        states.after_prompt(stats.state)
        states.at_end(model, stats)
    if decoder is not None:
        _write(decoder.flush() + "\n")
    else:
        for row in stats.generated:
            click.echo(",".join(map(str, row)) if print_ids or tok is None else tok.decode(row))
    if not quiet:
        click.echo(f"[run] {stats.summary()}", err=True)


class _StateFiles:
    """--load-state / --save-state / --save-final-state around one generation."""

    def __init__(self, manifest: Manifest, save: str | None, save_final: str | None, load: tuple[str, ...], prompts: int) -> None:
        from rwkv_export.serving import state_file

        self.manifest, self.save, self.save_final, self.module = manifest, save, save_final, state_file
        self.initial = state_file.fit_to_prompts(state_file.load_states(load, manifest), manifest, prompts) if load else None
        self.note = f"continued from {', '.join(load)}; " if load else ""

    def after_prompt(self, state) -> None:  # type: ignore[no-untyped-def]
        if self.save and state is not None:
            self.module.save_state(self.save, state, self.manifest, note=self.note + "after the prompt")
            self.save = None

    def at_end(self, model, stats) -> None:  # type: ignore[no-untyped-def]
        """The final state has every generated token fed (the loop leaves the last one unfed)."""
        if not self.save_final or stats.state is None:
            return
        state = stats.state
        if stats.generated and stats.generated[0]:
            _, state = model.step(np.array([row[-1] for row in stats.generated], np.int64), state)
        self.module.save_state(self.save_final, state, self.manifest, note=self.note + "after the prompt and the generated tokens")


def _tokenizer(load, model_dir: str, override: str | None, vocab: int, needed: bool):  # type: ignore[no-untyped-def]
    """The tokenizer, or None when only ids are given and the manifest names none."""
    try:
        tok = load(model_dir, override)
    except RwkvExportError:
        if needed or override is not None:
            raise
        return None
    if tok.vocab_size > vocab:
        raise RwkvExportError(f"the {tok.kind} tokenizer has {tok.vocab_size} tokens but the model's vocab is {vocab}: wrong --tokenizer?")
    return tok


def _encode(tok, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    ids = tok.encode(text)
    if not ids:
        raise RwkvExportError(f"prompt {text!r} tokenizes to no tokens; give some text")
    return ids


def _parse_ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise RwkvExportError(f"--tokens {text!r} holds no ids; expected comma-separated integers like 34,105,110")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise RwkvExportError(f"--tokens {text!r}: expected comma-separated integers like 34,105,110") from None


def _write(text: str) -> None:
    if text:
        click.echo(text, nl=False)  # click.echo flushes: each piece shows as soon as it is final


COMMANDS = [run]
