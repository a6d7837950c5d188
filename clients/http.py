"""An async client for the JSON API (httpx), acting as one principal."""

from __future__ import annotations

import subprocess
import time
import uuid

import httpx


class ApiError(Exception):
    def __init__(self, status: int, body: dict):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status = status
        self.code = error.get("code")


#: How long a call waits for its answer: a server under load answers slowly rather than not at all (an order's
#: placement may wait up to the server's ``promise_timeout_s`` for its cell's promise).
DEFAULT_TIMEOUT_S = 30.0


class ApiClient:
    """One principal's calls; ``client`` shares a connection pool (the caller then closes it, not this)."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 client: httpx.AsyncClient | None = None):
        self._owns_http = client is None
        self.http = client or httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self.headers = {"authorization": f"Bearer {token}"}

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs) -> dict:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        response = await self.http.request(method, path, headers=headers, **kwargs)
        body = response.json()
        if response.status_code >= 400:
            raise ApiError(response.status_code, body)
        return body

    async def create_restaurant(self, **fields) -> dict:
        return await self.call("POST", "/v1/restaurants", json=fields)

    async def erase_restaurant(self, restaurant_id: int) -> None:
        """Delete a restaurant with its menu and finished orders (204); ``ApiError`` 409 while orders are active."""
        response = await self.http.request("DELETE", f"/v1/restaurants/{restaurant_id}", headers=self.headers)
        if response.status_code != 204:
            raise ApiError(response.status_code, response.json())

    async def add_item(self, restaurant_id: int, name: str, price_cents: int, **fields) -> dict:
        return await self.call("POST", f"/v1/restaurants/{restaurant_id}/menu/items",
                               json={"name": name, "price_cents": price_cents, **fields})

    async def nearby(self, lat: float, lng: float, **params) -> dict:
        return await self.call("GET", "/v1/restaurants/nearby", params={"lat": lat, "lng": lng, **params})

    async def menu(self, restaurant_id: int) -> dict:
        return await self.call("GET", f"/v1/restaurants/{restaurant_id}/menu")

    async def place_order(self, restaurant_id: int, items: list[dict], dropoff: tuple[float, float],
                          idempotency_key: str | None = None) -> dict:
        return await self.call(
            "POST", "/v1/orders",
            json={"restaurant_id": restaurant_id, "items": items, "dropoff": {"lat": dropoff[0], "lng": dropoff[1]}},
            headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex},
        )

    async def order(self, order_id: int) -> dict:
        return await self.call("GET", f"/v1/orders/{order_id}")

    async def events(self, order_id: int, after: int = 0) -> list[dict]:
        return (await self.call("GET", f"/v1/orders/{order_id}/events", params={"after": after}))["items"]

    async def cancel(self, order_id: int, reason: str = "") -> dict:
        return await self.call("POST", f"/v1/orders/{order_id}/cancel", json={"reason": reason})

    async def kitchen(self, order_id: int, action: str) -> dict:
        """``action``: accept, start-preparing or ready."""
        return await self.call("POST", f"/v1/orders/{order_id}/{action}")

    async def revise_ready(self, order_id: int, minutes: int | None = None, *, seconds: int | None = None) -> dict:
        """The kitchen's new estimate: ready in ``minutes`` or in ``seconds`` from now (give one)."""
        body = {"ready_in_seconds": seconds} if minutes is None else {"ready_in_minutes": minutes}
        return await self.call("POST", f"/v1/orders/{order_id}/ready-estimate", json=body)


def wait_until_healthy(base_url: str, process: subprocess.Popen | None = None, timeout_s: float = 120.0) -> None:
    """Poll ``/v1/health`` until it answers 200; fail early if the server ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{base_url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy in time")


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Ask a server process to stop (SIGTERM); kill it if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
