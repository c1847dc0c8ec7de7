"""Text from the network printed by ``jwks sync`` has no control characters, and a private key
temp file left by a crash mid-write is removed by the next key command."""

from __future__ import annotations

import json
import os
from pathlib import Path

from slurm_jwt_bridge.jwks_file import sync_jwks
from slurm_jwt_bridge.keys import KeyRing, init_keys, prune_keys
from tests.helpers.stub_http import StubServer


def test_jwks_sync_message_shows_key_ids_without_control_characters(
    keys_dir: Path, tmp_path: Path
) -> None:
    doc = KeyRing.load(keys_dir).jwks()
    doc["keys"][0]["kid"] = "evil\x1b]0;owned\x07\x1b[2J"
    stub = StubServer(json.dumps(doc).encode())
    try:
        result = sync_jwks(stub.url, tmp_path / "jwks.json", allow_http=True)
    finally:
        stub.close()
    assert result.changed
    assert "\x1b" not in result.message and "\x07" not in result.message
    assert "evil\\x1b]0;owned\\x07" in result.message
    # the file itself keeps the key id exactly (slurmctld matches tokens' kid against it)
    written = json.loads((tmp_path / "jwks.json").read_text())
    assert written["keys"][0]["kid"] == "evil\x1b]0;owned\x07\x1b[2J"


def test_private_key_temp_file_of_a_crashed_write_is_removed_next_time(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    # what atomic_write leaves when killed between mkstemp and rename
    leftover = keys / ".rs256-crashed.pem.k3y_tmp"
    leftover.write_bytes(b"-----BEGIN PRIVATE KEY-----\npartial\n")
    os.chmod(leftover, 0o600)
    ring_leftover = keys / ".ring.json.abc123"
    ring_leftover.write_text("{")
    prune_keys(keys)
    assert not leftover.exists()
    assert not ring_leftover.exists()
    assert KeyRing.load(keys).active is not None
