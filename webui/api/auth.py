"""HTTP Basic authentication for the API (--api-auth) and the UI (--gradio-auth)."""
from __future__ import annotations

import base64
import binascii
import secrets


class BasicAuthMiddleware:
    """ASGI middleware: paths under api_prefixes need api credentials, everything else ui credentials.
    An empty credential dict leaves that side open."""

    def __init__(self, app, api_users: dict[str, str], ui_users: dict[str, str],
                 api_prefixes: tuple[str, ...] = ("/sdapi/", "/controlnet/")):
        self.app = app
        self.api_users = api_users
        self.ui_users = ui_users
        self.api_prefixes = api_prefixes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        users = self.api_users if path.startswith(self.api_prefixes) else self.ui_users
        if users and not _allowed(scope, users):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = b'{"detail":"Incorrect or missing credentials (HTTP Basic)"}'
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"www-authenticate", b'Basic realm="studio"'),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        return await self.app(scope, receive, send)


def _allowed(scope, users: dict[str, str]) -> bool:
    header = dict(scope.get("headers") or []).get(b"authorization", b"")
    if not header.lower().startswith(b"basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    expected = users.get(user)
    return expected is not None and secrets.compare_digest(expected.encode(), password.encode())
