"""``qm-export generate FOLDER``: generate a continuation with a causal LM's generation folder."""

from __future__ import annotations

from pathlib import Path

import click

from .common import console, emit_json, fail_on, status, verdict

BACKENDS = ("ort", "torch", "trt")


def _ids(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        ids = [int(v) for v in value.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise click.BadParameter(f"must be comma-separated token ids (for example 12,7,905), got {value!r}",
                                 ctx=ctx, param=param) from None
    if not ids:
        raise click.BadParameter("no token id given", ctx=ctx, param=param)
    return ids


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--prompt", metavar="TEXT", help="Prompt text (the folder must hold the source's tokenizer).")
@click.option("--prompt-ids", callback=_ids, metavar="LIST", help="Prompt as comma-separated token ids.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=32, show_default=True, help="Tokens to generate.")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True,
              help="ort: ONNX Runtime over the two graphs (I/O binding); torch: the source model the folder records; "
                   "trt: the folder's TensorRT engines (qm-export build FOLDER).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0: greedy; above 0: sample from softmax(logits / T), seeded by --seed.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Sample among the k best (0: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling.")
@click.option("--no-stop", is_flag=True, help="Do not stop at the end-of-sequence token.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (ort).")
@click.option("--json", "as_json", is_flag=True, help="Print tokens, text and timings as JSON on stdout.")
def generate(folder: Path, prompt: str | None, prompt_ids: list[int] | None, new_tokens: int, backend: str,
             temperature: float, top_k: int, seed: int, no_stop: bool, threads: int | None, as_json: bool) -> None:
    """Generate NEW_TOKENS tokens after a prompt with FOLDER (written by 'qm-export convert' of a
    causal LM with -o FOLDER): the prefill merges the prompt, the decode steps run over the
    merged KV cache. Prints the continuation on stdout (text when the folder has a tokenizer,
    else token ids) and the timings on stderr. Exit codes: 0 done, 1 a runtime failed, 2 bad
    input, 130 interrupted.
    """
    import numpy as np

    from ..generation.folder import read_generation_folder
    from ..generation.loop import Sampler, generate as run_generation

    if (prompt is None) == (prompt_ids is None):
        raise click.UsageError("give exactly one of --prompt TEXT and --prompt-ids LIST")
    if temperature == 0 and top_k:
        raise click.UsageError("--top-k restricts sampling; with --temperature 0 generation is greedy")
    err = console(stderr=True)
    with fail_on():
        gen_folder = read_generation_folder(folder)
        tokenizer = None
        if prompt is not None or gen_folder.tokenizer is not None:
            tokenizer = _tokenizer(gen_folder, needed=prompt is not None)
        ids = prompt_ids if prompt_ids is not None else tokenizer(prompt)["input_ids"]
        with status(err, f"loading {backend}") as say:
            runner = _backend(backend, gen_folder, threads)
            say("generating")
            out = run_generation(runner, np.asarray([ids], dtype=np.int64), None, new_tokens=new_tokens,
                                 sampler=Sampler(temperature, top_k, seed),
                                 on_step=lambda t: say(f"generating: {t + 1}/{new_tokens} tokens"))
    tokens = out.tokens[0].tolist()
    eos = gen_folder.spec.eos_token_id
    if not no_stop and eos is not None and eos in tokens:
        tokens = tokens[:tokens.index(eos) + 1]
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else None
    steps = np.asarray(out.step_s) * 1e3
    decode_ms = float(np.median(steps)) if steps.size else None
    timing = (f"prompt {len(ids)} tokens, prefill {out.prefill_s * 1e3:.1f} ms, "
              + (f"decode {decode_ms:.2f} ms/token (median of {steps.size}), " if decode_ms is not None else "")
              + f"KV cache {out.kv_cache_bytes / 2**10:.1f} KiB after the prefill ({backend})")
    if as_json:
        emit_json({"passed": True, "backend": backend, "prompt_ids": list(map(int, ids)), "tokens": tokens,
                   "text": text, "prefill_ms": out.prefill_s * 1e3, "decode_ms_p50": decode_ms,
                   "kv_cache_bytes": out.kv_cache_bytes, "merged": gen_folder.merged})
    else:
        click.echo(text if text is not None else ",".join(map(str, tokens)))
    err.print(timing, soft_wrap=True)
    verdict(err, "DONE", f"{len(tokens)} token(s) generated with {backend}")


def _tokenizer(folder, needed: bool):  # -> a transformers tokenizer, or None
    if folder.tokenizer is None:
        if needed:
            raise click.UsageError(f"--prompt: {folder.path} has no tokenizer (its source had none); use --prompt-ids")
        return None
    from ..adapters.hf.source import import_transformers

    return import_transformers().AutoTokenizer.from_pretrained(str(folder.tokenizer))


def _backend(name: str, folder, threads: int | None):  # -> a GenerationBackend
    if name == "torch":
        from ..generation.torch_backend import TorchGeneration
        from ..validate.model_file import load_reference, open_model_file

        loaded, _ = load_reference(open_model_file(folder.prefill), debug_outputs=False)
        return TorchGeneration(loaded.generation)
    from ..generation.validate import Skipped, open_generation_backend

    try:
        return open_generation_backend(name, folder, threads)
    except Skipped as why:
        from .common import CommandFailed

        raise CommandFailed(f"--backend {name}: {why}") from None
