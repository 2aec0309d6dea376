"""Command-line flags, named as the A1111 WebUI names them."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The studio's argument parser; extensions' preload.py may add to it."""
    p = argparse.ArgumentParser(prog="launch.py", description="Image generation studio")
    a = p.add_argument
    a("--listen", action="store_true", help="serve on 0.0.0.0 instead of 127.0.0.1")
    a("--port", type=int, default=7860)
    a("--share", action="store_true", help="ask Gradio for a public share link")
    a("--api", action="store_true", help="serve the /sdapi/v1 API (always on; kept for compatibility)")
    a("--nowebui", action="store_true", help="serve the API only, no UI")
    a("--gradio-auth", default=None, help="user:pass[,user2:pass2] for the UI")
    a("--api-auth", default=None, help="user:pass[,user2:pass2] for the API")
    a("--api-server-stop", action="store_true",
      help="offer POST /sdapi/v1/server-kill, server-restart and server-stop (as A1111's flag)")
    a("--data-dir", default=None, help="root of models/, outputs/, embeddings/, config.json")
    a("--ckpt-dir", default=None, help="extra folder of checkpoints")
    a("--lora-dir", default=None)
    a("--hypernetwork-dir", default=None)
    a("--embeddings-dir", default=None)
    a("--textual-inversion-templates-dir", default=None)
    a("--vae-dir", default=None)
    a("--controlnet-dir", default=None, help="extra folder of ControlNet models (sd-webui-controlnet's flag)")
    a("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    a("--precision", choices=["full", "half", "autocast"], default="autocast",
      help="full: fp32; half/autocast: fp16 or bf16 on CUDA (CPU always runs fp32)")
    a("--no-half", action="store_true", help="same as --precision full")
    a("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    a("--medvram", action="store_true", help="offload whole models to the CPU between uses")
    a("--lowvram", action="store_true", help="offload layer by layer (slow, least memory)")
    a("--skip-install", action="store_true", help="do not install requirements or run extension install.py")
    a("--skip-torch-cuda-test", action="store_true", help="accepted for compatibility")
    a("--xformers", action="store_true", help="accepted for compatibility; torch SDPA is always used")
    a("--opt-sdp-attention", action="store_true", help="accepted for compatibility; the default")
    a("--enable-insecure-extension-access", action="store_true",
      help="allow installing and switching extensions from the UI even with --listen / --share")
    a("--disable-all-extensions", action="store_true", help="load no extension (to recover from a broken one)")
    a("--test", action="store_true", help="run the test suite instead of the studio")
    return p


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The flags (unknown ones ignored); ``parser``: one extensions' preload.py added flags to."""
    args, _unknown = (parser or build_parser()).parse_known_args(argv)
    if args.no_half:
        args.precision = "full"
    return args


def parse_credentials(spec: str | None) -> dict[str, str]:
    """"u:p,u2:p2" -> {"u": "p", "u2": "p2"} (empty when no spec)."""
    creds: dict[str, str] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if part:
            user, _, password = part.partition(":")
            creds[user] = password
    return creds
