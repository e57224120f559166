"""Errors in OpenAI's JSON shape, ``{"error": {"message", "type", "param", "code"}}``, with their HTTP status."""
from __future__ import annotations


class APIError(Exception):
    """A request the server answers with an error; `param` names the offending field where there is one."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)
