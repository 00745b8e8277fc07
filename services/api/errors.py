"""Every error the api answers is JSON: `{"error": {"status": 404, "message": "..."}}`."""

from __future__ import annotations

import json

from aiohttp import web


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"status": status, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.headers)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)
