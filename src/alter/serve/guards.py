"""What stands between a request and the model: the body limit (however the body is
framed), the API key, and error responses that say what was wrong (with the headers HTTP
asks for, e.g. a 405's Allow)."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class BodyLimit:
    """ASGI middleware: stop reading a request body at `limit` bytes, however it is framed
    (a Content-Length that says more is refused before reading; a chunked body is counted as
    it arrives), and answer 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI turns this into the 413 response
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_guards(app: FastAPI, max_body_bytes: int, api_key: str | None) -> None:
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > max_body_bytes):
            return error_response(413, f"request body over {max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors()[:5]:
            where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
            problems.append(f"{where}: {problem['msg']}")
        return error_response(422, "; ".join(problems))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), error.headers)  # e.g. a 405's Allow
