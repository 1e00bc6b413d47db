"""The `edgedistill` command. It only parses flags and prints; the work is done by library functions.

Heavy libraries (torch, transformers, onnxruntime) are imported inside the commands, so `--help` is fast.
"""

from __future__ import annotations

import logging
import os
import signal
import traceback

import click

from edgedistill import __version__
from edgedistill.errors import EdgeDistillError
from edgedistill import paths
from edgedistill.paths import is_disk_full


# Imported only by commands of the full toolchain, absent from `edgedistill[runtime]`.
_FULL_ONLY = {"torch", "transformers", "accelerate", "bitsandbytes", "gguf", "safetensors", "onnx"}


class _Group(click.Group):
    """Turns library errors into one line on stderr and an exit code; --verbose adds the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeDistillError as e:
            _fail(ctx, str(e), e.exit_code)
        except Terminated:
            _fail(ctx, "terminated", 128 + signal.SIGTERM)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except OSError as e:  # the machine refused a file operation (full disk, read-only, gone): the user's to fix
            if e.filename is not None:
                where = e.filename + (f" -> {e.filename2}" if e.filename2 else "")
                _fail(ctx, f"{where}: {e.strerror or e}", 2)
            elif is_disk_full(e):  # a write with no file name (outputs name theirs: paths.atomic_dir)
                _fail(ctx, f"a write found no space ({e.strerror or e}); free some space (df -h) and run again", 2)
            else:
                raise
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in _FULL_ONLY:
                _fail(ctx, f"this command needs {e.name}, which the runtime-only install lacks; "
                      "install the toolchain with: pip install 'edgedistill[full]'", 2)
            raise

    def list_commands(self, ctx):
        return list(self.commands)  # in the order of the pipeline, not alphabetical


# An error line quotes what it refuses; a huge value (a YAML alias bomb expanded, a megabyte line) is cut in the
# middle so that the line stays a line.
MAX_MESSAGE_CHARS = 1000


def _fail(ctx: click.Context, message: str, code: int) -> None:
    if (ctx.obj or {}).get("verbose"):
        traceback.print_exc()
    click.echo(f"error: {_capped(message)}", err=True)
    ctx.exit(code)


def _capped(message: str) -> str:
    message = " ".join(message.split("\n"))
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    half = MAX_MESSAGE_CHARS // 2
    return f"{message[:half]} [... {len(message) - 2 * half:,} characters cut ...] {message[-half:]}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that the same clean-up runs (children stopped, temporary
    folders removed) instead of the process vanishing at once."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, envvar="EDGEDISTILL_VERBOSE", help="Show library logs and full tracebacks.")
@click.version_option(__version__, prog_name="edgedistill")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Distill a small student from a teacher LLM, quantize and export it, and benchmark it per device.

    Start with `edgedistill models pull smollm2-135m-instruct`. Caches live in $EDGEDISTILL_HOME
    (default: $XDG_CACHE_HOME/edgedistill).
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    # torch keeps its compile cache in the system's temporary folder unless told otherwise: keep it with ours
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(paths.home() / "torchinductor"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # transformers and huggingface_hub are chatty about things the user cannot act on.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import warnings

        warnings.filterwarnings("ignore")


def _register() -> None:
    from edgedistill.cli.data import data, eval_cmd, generate_cmd
    from edgedistill.cli.distill import cache_logits_cmd, distill_cmd, prune_cmd
    from edgedistill.cli.bench import bench_cmd, kit_group
    from edgedistill.cli.export import export_cmd
    from edgedistill.cli.models import models
    from edgedistill.cli.run import run_cmd
    from edgedistill.cli.safety import safety
    from edgedistill.cli.serve import serve_cmd
    from edgedistill.cli.targets import targets
    from edgedistill.cli.task import task_group

    for command in (models, generate_cmd, data, eval_cmd, prune_cmd, cache_logits_cmd, distill_cmd, export_cmd,
                    targets, bench_cmd, kit_group, safety, task_group, run_cmd, serve_cmd):
        cli.add_command(command)


_register()


def main() -> None:
    """The entry point. click's own usage errors (unknown option, missing argument, bad value) are one line too,
    like every other error: `error: ...` and where the help is, exit code 2."""
    import sys

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        rv = cli.main(prog_name="edgedistill", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "edgedistill"
        click.echo(f"error: {e.format_message()} (see: {where} --help)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("error: terminated", err=True)
        sys.exit(128 + signal.SIGTERM)
    sys.exit(rv if isinstance(rv, int) else 0)

