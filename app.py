"""Builds the studio once (settings, model manager, engine) and serves the UI and the API on one server."""
from __future__ import annotations

import argparse
import sys
import threading
import time

from fastapi import FastAPI

from webui.api.api import mount_api
from webui.api.auth import BasicAuthMiddleware
from webui.config.flags import parse_args, parse_credentials
from webui.config.paths import Paths
from webui.config.settings import Settings
from webui.engine.processing import Engine
from webui.models.manager import ModelManager, Placement
from webui.scripts import default_runner


def build_engine(args: argparse.Namespace) -> Engine:
    paths = Paths.from_flags(args)
    settings = Settings(paths.config_file)
    placement = Placement.from_flags(args.device, args.precision, args.no_half_vae, args.medvram, args.lowvram)
    models = ModelManager(paths, settings, placement)
    return Engine(settings, paths, models)


def create_app(args: argparse.Namespace, engine: Engine | None = None):
    """The ASGI app (API + UI behind the auth middleware) and its engine."""
    engine = engine or build_engine(args)
    app = FastAPI(title="Studio API", docs_url="/docs", redoc_url=None)
    flags = {k: v for k, v in vars(args).items()}
    scripts = default_runner(engine)   # built-in scripts; extensions' scripts join this registry
    mount_api(app, engine, flags, scripts)
    if not args.nowebui:
        import gradio as gr

        from webui.ui.app_ui import build_ui
        gr.mount_gradio_app(app, build_ui(engine, scripts), path="/", footer_links=["api"])
    wrapped = BasicAuthMiddleware(app, parse_credentials(args.api_auth), parse_credentials(args.gradio_auth))
    return wrapped, engine


def _share(host: str, port: int) -> str | None:
    """A public URL through Gradio's tunnel, or None (printing one line why)."""
    try:
        import secrets

        from gradio import networking
        url = networking.setup_tunnel(host, port, secrets.token_urlsafe(32), None, None)
        return url
    except Exception as e:  # noqa: BLE001 - any failure means: no tunnel, serve locally
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        print(f"--share: no public tunnel could be made ({reason}); serving locally only.", flush=True)
        return None


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    started = time.perf_counter()
    asgi, engine = create_app(args)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    config = uvicorn.Config(asgi, host=host, port=args.port, log_level="warning", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not thread.is_alive():
        sys.exit(f"could not start the server on {host}:{args.port}")
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    print(f"Running on local URL:  http://{shown}:{args.port}  (ready in {time.perf_counter() - started:.1f} s)",
          flush=True)
    if args.nowebui:
        print("UI disabled (--nowebui); API at /sdapi/v1/", flush=True)
    if args.share:
        if not args.gradio_auth:
            print("Warning: --share without --gradio-auth makes the studio public to anyone with the link.",
                  flush=True)
        url = _share("127.0.0.1", args.port)
        if url:
            print(f"Running on public URL: {url}", flush=True)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(5)


if __name__ == "__main__":
    main()
