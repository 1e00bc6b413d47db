"""edgedistill serve"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.options import settings_from, settings_options
from edgedistill.serve import ServeSettings


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@settings_options(ServeSettings)
def serve_cmd(bundle, **flags):
    """Serve BUNDLE on an OpenAI-compatible endpoint (chat and completions, streamed or not) for offline apps.

    Listens on 127.0.0.1:8080 unless told otherwise. Checks the bundle's checksums first, and refuses a bundle
    whose manifest marks it not deployable unless --allow-undeployable. SIGTERM or Ctrl-C drains: new requests get
    503, running ones get --shutdown-grace seconds to finish.

    Example: API_KEY=s3cret edgedistill serve bundles/gguf-q4_k_m --api-key-env API_KEY
    """
    from edgedistill.serve import serve

    s = settings_from(ServeSettings, {**flags, "bundle": bundle})
    serve(s, echo=lambda m: click.echo(m, err=m.startswith("warning")))
