import json
from pathlib import Path

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing, rotate_keys
from slurm_jwt_bridge.settings import Settings


def test_jwks_endpoints_etag_and_cache(settings: Settings, keys_dir: Path) -> None:
    client = create_app(settings).test_client()
    for path in ("/.well-known/jwks.json", "/jwks.json"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.mimetype == "application/json"
        assert r.headers["Cache-Control"] == "public, max-age=300"
        doc = json.loads(r.data)
        ring = KeyRing.load(keys_dir)
        assert {k["kid"] for k in doc["keys"]} == {ring.active.kid, ring.next.kid}
        etag = r.headers["ETag"]
        r2 = client.get(path, headers={"If-None-Match": etag})
        assert r2.status_code == 304 and r2.data == b""
        assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


def test_jwks_follows_rotation(settings: Settings, keys_dir: Path) -> None:
    from dataclasses import replace

    s = replace(settings, keys=replace(settings.keys, reload_interval=0))
    client = create_app(s).test_client()
    before = client.get("/jwks.json")
    rotate_keys(keys_dir, 3600, 300)
    after = client.get("/jwks.json")
    assert after.headers["ETag"] != before.headers["ETag"]
    assert len(json.loads(after.data)["keys"]) == 3
    assert (
        client.get("/jwks.json", headers={"If-None-Match": before.headers["ETag"]}).status_code
        == 200
    )


def test_health(settings: Settings) -> None:
    client = create_app(settings).test_client()
    health = client.get("/healthz").json
    assert health["status"] == "ok" and isinstance(health["worker"], int)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["ready"] is True
