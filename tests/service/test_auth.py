"""API-key checks through FastAPI's test client when the key store is down."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from services.common.auth import ApiKeys, MemoryKeyStore, create_key, install_auth, require_scope


def client_for(store: MemoryKeyStore, **options: Any) -> TestClient:
    app = FastAPI()
    install_auth(app, ApiKeys(store, allow_dev_key=False), **options)

    @app.get("/v1/thing", dependencies=[Depends(require_scope("read"))])
    def thing() -> dict[str, str]:
        return {"ok": "yes"}

    return TestClient(app)


def test_key_store_down_is_503_with_the_service_retry_after_and_reported() -> None:
    store = MemoryKeyStore()
    key = create_key(store, scopes=["read"])
    headers = {"Authorization": f"Bearer {key}"}
    reported: list[str] = []
    configured = client_for(store, retry_after_s=9, on_unavailable=lambda: reported.append("x"))
    default = client_for(store)  # no options: the default, 5 s

    store.down = True
    reply = configured.get("/v1/thing", headers=headers)
    assert (reply.status_code, reply.headers["Retry-After"]) == (503, "9")
    assert reply.json() == {"error": "the key store is unavailable; retry later"}
    assert reported == ["x"]
    reply = default.get("/v1/thing", headers=headers)
    assert (reply.status_code, reply.headers["Retry-After"]) == (503, "5")

    # Other refusals are not unavailability.
    store.down = False
    assert configured.get("/v1/thing").status_code == 401
    assert configured.get("/v1/thing", headers={"X-API-Key": "nope"}).status_code == 401
    assert configured.get("/v1/thing", headers=headers).status_code == 200
    assert reported == ["x"]
