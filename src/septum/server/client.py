"""A small HTTP client of the control plane for the CLI (``push``, ``pull``, ``provision``,
``audit verify``): it turns the API's error bodies into ``ApiError`` with their problems."""

from __future__ import annotations

from typing import Any

import httpx

from septum.errors import SeptumError

__all__ = ["ApiClient", "ApiError"]


class ApiError(SeptumError):
    def __init__(self, status: int, message: str, body: Any) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


class ApiClient:
    def __init__(
        self, base_url: str, token: str | None, *, verify: Any = True, timeout: float = 120.0
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, verify=verify, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SeptumError(f"{self.http.base_url}: {exc}") from None
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            message = (
                body.get("error") or str(body.get("detail"))
                if isinstance(body, dict)
                else str(body)
            )
            raise ApiError(response.status_code, message, body)
        return body
