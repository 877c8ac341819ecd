"""``ztaudit serve``: receive the Kubernetes API server's audit webhook posts into the lake.

Thin: flags and ``[serve]`` settings -> :class:`ztaudit.pipeline.sources.webhook.ServeOptions` ->
:func:`ztaudit.pipeline.sources.webhook.serve`, which runs until SIGTERM or Ctrl-C and then
returns (exit 0). Errors become exit codes in ``cli/main.py``: 2 for bad flags or settings (no
certificate, no way to authenticate, no cluster name, an address that cannot be bound), 4 when
the lake cannot be created.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ztaudit.cli.options import lake_option
from ztaudit.core.config import load_config
from ztaudit.core.config import replace as replace_config
from ztaudit.core.errors import ConfigError


def _path(value: str) -> Path | None:
    return Path(value) if value else None


@click.command()
@lake_option("Lake directory to write into (created if missing).")
@click.option("--cluster", default=None,
              help="Cluster name of the posts (audit events do not name it); a token's own cluster "
                   "(TOKEN,CLUSTER in --token-file) wins. Required with --client-ca.")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Address to listen on (config serve.listen, default 127.0.0.1:8443; port 0 = any free port).")
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False),
              help="Server certificate, PEM (config serve.tls_cert). Required.")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False),
              help="The server certificate's private key, PEM (config serve.tls_key). Required.")
@click.option("--client-ca", default=None, type=click.Path(dir_okay=False),
              help="CA of the API server's client certificate: posts with a certificate it signed are "
                   "accepted (mTLS; config serve.client_ca).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="Bearer tokens, one TOKEN or TOKEN,CLUSTER per line (config serve.token_file).")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=None,
              help="Larger posts are refused with 413 (config serve.max_body_bytes, default 16 MiB).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Posts received at once; more get 503 + Retry-After (config serve.max_concurrent, default 4).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: $ZTAUDIT_CONFIG or ./ztaudit.toml).")
@click.option("--quiet", "-q", is_flag=True, help="No summary lines (warnings and errors only).")
def serve(lake: str, cluster: str | None, listen: str | None, tls_cert: str | None, tls_key: str | None,
          client_ca: str | None, token_file: str | None, max_body_bytes: int | None, max_concurrent: int | None,
          config_path: str | None, quiet: bool) -> None:
    """Receive the Kubernetes API server's audit webhook (HTTPS) into the lake.

    Point the API server at it with --audit-webhook-config-file (a kubeconfig: docs/serve.md).
    Each post (an audit.k8s.io/v1 EventList) is answered 200 only once its events are durable in
    the lake, under a name made from the post's bytes, so a batch the API server sends again is
    written once. SIGTERM/Ctrl-C finishes the posts in flight and exits 0.
    """
    from ztaudit.pipeline.consume.loop import context_from_config
    from ztaudit.pipeline.sources.webhook import ServeOptions, parse_listen
    from ztaudit.pipeline.sources.webhook import serve as run_serve

    flags = {k: v for k, v in dict(listen=listen, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca,
                                   token_file=token_file, max_body_bytes=max_body_bytes,
                                   max_concurrent=max_concurrent).items() if v is not None}
    cfg = load_config(config_path, overrides={"serve": flags})
    cfg = replace_config(cfg, "serve", **flags)  # flags win over ZTAUDIT_SERVE_* too
    s = cfg.serve
    if not s.tls_cert or not s.tls_key:
        raise ConfigError("serve.tls_cert", "a server certificate and key are required (the API server "
                          "sends audit events over HTTPS only)",
                          fix="give --tls-cert and --tls-key (docs/serve.md shows how to make them with openssl)")
    host, port = parse_listen(s.listen)
    if not quiet:
        logging.getLogger("ztaudit.pipeline").setLevel(
            min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    opts = ServeOptions(lake=Path(lake), cluster=cluster or None, host=host, port=port, tls_cert=Path(s.tls_cert),
                        tls_key=Path(s.tls_key), client_ca=_path(s.client_ca), token_file=_path(s.token_file),
                        max_body_bytes=s.max_body_bytes, max_concurrent=s.max_concurrent,
                        summary_seconds=s.summary_seconds, table_format=cfg.lake.format)

    def ready(h: str, p: int) -> None:
        shown = f"[{h}]" if ":" in h else h
        click.echo(f"serve: listening on https://{shown}:{p} (lake {lake}); SIGTERM or Ctrl-C stops", err=True)

    stats = run_serve(opts, context_from_config(cfg, cluster), on_ready=ready)
    click.echo(f"serve: stopped: {stats.line()}", err=True)
