"""Builds the studio once (settings, model manager, engine) and serves the UI and the API on one server."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from fastapi import FastAPI

from webui.api import extensions_routes
from webui.api.api import mount_api
from webui.api.auth import BasicAuthMiddleware
from webui.config.flags import build_parser, parse_args, parse_credentials
from webui.config.paths import Paths
from webui.config.settings import Settings
from webui.core.errors import BadRequest
from webui.engine.events import EngineEvents
from webui.engine.exports import save_folder
from webui.engine.processing import Engine
from webui.extensions.loader import Extensions
from webui.extensions.runtime import ExtensionRuntime
from webui.models.manager import ModelManager, Placement
from webui.scripts import default_runner


def build_engine(args: argparse.Namespace, events: EngineEvents | None = None) -> Engine:
    paths = Paths.from_flags(args)
    settings = Settings(paths.config_file)
    placement = Placement.from_flags(args.device, args.precision, args.no_half_vae, args.medvram, args.lowvram)
    models = ModelManager(paths, settings, placement)
    return Engine(settings, paths, models, events=events)


def discover_extensions(args: argparse.Namespace) -> Extensions:
    """The extensions/ folder of the data dir, enabled as config.json says."""
    paths = Paths.from_flags(args)
    return Extensions.from_config(paths.extensions, paths.config_file,
                                  bool(getattr(args, "disable_all_extensions", False)))


def create_app(args: argparse.Namespace, engine: Engine | None = None, extensions: Extensions | None = None,
               stop: threading.Event | None = None):
    """The ASGI app (API + UI behind the auth middleware) and its engine. ``stop``: set by POST
    /sdapi/v1/server-stop (with --api-server-stop) for the main loop, which then shuts the server down."""
    engine = engine or build_engine(args)
    extensions = extensions if extensions is not None else discover_extensions(args)
    app = FastAPI(title="Studio API", docs_url="/docs", redoc_url=None)
    flags = {k: v for k, v in vars(args).items()}
    scripts = default_runner(engine)   # built-in scripts; extensions' scripts join this registry
    runtime = ExtensionRuntime.start(engine, scripts.registry, extensions, args, lambda: schedule_restart(engine))
    mount_api(app, engine, flags, scripts)
    if getattr(args, "api_server_stop", False):
        _server_routes(app, engine, stop if stop is not None else threading.Event())
    app.include_router(extensions_routes.build_router(extensions))
    demo = None
    if not args.nowebui:
        import gradio as gr

        from webui.ui.app_ui import build_ui, head_html
        demo = build_ui(engine, scripts, runtime)
        head = "\n".join(filter(None, (head_html(), extensions.head_html())))
        # the 💾 Save button offers its files for download from the save folder
        gr.mount_gradio_app(app, demo, path="/", footer_links=["api"], head=head or None,
                            css=extensions.css() or None,
                            allowed_paths=[str(save_folder(engine.settings.as_dict(), engine.paths.data))])
    runtime.app_started(demo, app)
    _mounts_last(app)
    wrapped = BasicAuthMiddleware(app, parse_credentials(args.api_auth), parse_credentials(args.gradio_auth))
    return wrapped, engine


def _mounts_last(app: FastAPI) -> None:
    """Routes extensions add in on_app_started go before the UI mounted at "/", which matches every path."""
    from starlette.routing import Mount
    mounts = [r for r in app.router.routes if isinstance(r, Mount) and r.path in ("", "/")]
    app.router.routes[:] = [r for r in app.router.routes if r not in mounts] + mounts


def schedule_restart(engine: Engine) -> str:
    """Restart the whole studio process in a second (extensions are loaded at start-up only)."""
    if engine.jobs.current is not None or engine.jobs.pending():
        raise BadRequest("a job is running: restart when it has finished")
    threading.Timer(1.0, _restart_process).start()
    return "Restarting the studio; the page reloads when it is back."


def _server_routes(app: FastAPI, engine: Engine, stop: threading.Event) -> None:
    """A1111's --api-server-stop routes: kill (at once), restart (the process re-executed with its flags), stop (the
    server shut down, the process ends). Each answers before it acts."""
    def later(action) -> None:
        threading.Timer(0.5, action).start()

    @app.post("/sdapi/v1/server-kill")
    def server_kill():
        later(lambda: os._exit(0))
        return {"message": "killing the studio"}

    @app.post("/sdapi/v1/server-restart")
    def server_restart():
        return {"message": schedule_restart(engine)}

    @app.post("/sdapi/v1/server-stop")
    def server_stop():
        later(stop.set)   # the main loop closes the server; the process then exits 0
        return {"message": "stopping the studio"}


def _restart_process() -> None:
    print("Restarting the studio ...", flush=True)
    sys.stderr.flush()
    script = getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0]   # absolute since 3.9
    os.execv(sys.executable, [sys.executable, script, *sys.argv[1:]])   # same flags; sockets close on exec


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

    started = time.perf_counter()
    extensions = discover_extensions(parse_args(argv))   # where the data dir is, before extensions add flags
    parser = build_parser()
    extensions.run_preloads(parser)
    args = parse_args(argv, parser)
    if not args.skip_install:
        extensions.run_installers()
    stop = threading.Event()
    asgi, engine = create_app(args, extensions=extensions, stop=stop)
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
        while thread.is_alive() and not stop.wait(0.5):
            pass
        if stop.is_set():
            print("Stopping the studio (server-stop).", flush=True)
    except KeyboardInterrupt:
        pass
    server.should_exit = True
    thread.join(5)


if __name__ == "__main__":
    main()
