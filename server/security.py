"""Security headers on every response LopSo sends: pages, JSON, static files and errors.

Tokens live in URLs (every link handed to a hall carries one), so no page may leak its URL as
a referrer, be framed by another site, or run a script it did not load from /static. The
headers are set when a response is prepared, so routes, the error middleware, static files
and aiohttp's own errors all carry them.
"""

from __future__ import annotations

from aiohttp import web

# Pages load ES modules, one stylesheet and a data: QR code from this origin; media comes
# over WebRTC (srcObject, which no fetch directive governs); signalling is fetch + WebSocket
# to this origin ('self' covers ws: and wss: of this host).
PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
EVERY_RESPONSE = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers of EVERY_RESPONSE, and the page policy on HTML."""
    for name, value in EVERY_RESPONSE.items():
        response.headers.setdefault(name, value)
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)


def install(app: web.Application) -> None:
    """Send the security headers on every response of `app`."""
    app.on_response_prepare.append(add_security_headers)


__all__ = ["EVERY_RESPONSE", "PAGE_POLICY", "install"]
