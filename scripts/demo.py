"""`make demo`: development keys, a local OpenID provider, and the bridge on 127.0.0.1.

The provider is the npm `oidc-provider` the test suite uses, with demo accounts alice and bob
(any password). Stops everything on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.oidc import start_oidc_provider  # noqa: E402

PORT = int(os.environ.get("DEMO_PORT", "8000"))
BIN = ROOT / ".venv" / "bin"


def main() -> int:
    work = ROOT / "var" / "demo"
    work.mkdir(parents=True, exist_ok=True)
    keys = ROOT / "keys"
    if not (keys / "ring.json").exists():
        subprocess.run([BIN / "slurm-jwt-bridge", "keys", "init", "--keys-dir", keys], check=True)
    bridge_url = f"http://127.0.0.1:{PORT}"
    provider = start_oidc_provider(
        work,
        resource=bridge_url,
        clients=[
            {
                "client_id": "bridge-demo",
                "client_secret": "bridge-demo-secret",
                "grant_types": ["authorization_code", "refresh_token"],
                "redirect_uris": [f"{bridge_url}/auth/callback"],
                "post_logout_redirect_uris": [f"{bridge_url}/"],
                "token_endpoint_auth_method": "client_secret_basic",
            }
        ],
    )
    config = work / "bridge.toml"
    config.write_text(f"""\
[server]
host = "127.0.0.1"
port = {PORT}
public_url = "{bridge_url}"

[keys]
dir = "{keys}"

[audit]
destination = "stderr"

[browser]
secure_cookies = false   # plain http on 127.0.0.1 only

[[issuers]]
name = "demo"
kind = "oidc"
display_name = "Demo identity provider"
issuer = "{provider.issuer}"
audiences = ["bridge-demo", "{bridge_url}"]
token_use = ["access", "id"]
client_id = "bridge-demo"
client_secret = "bridge-demo-secret"
scopes = ["openid", "profile", "email", "groups"]

[[mapping.rules]]
issuer = "demo"
claim = "preferred_username"

[cli_login]
issuer = "demo"
client_id = "bridge-cli"
scopes = ["openid", "profile", "email", "groups"]
resource = "{bridge_url}"
""")
    bridge = subprocess.Popen([BIN / "slurm-jwt-bridge", "serve", "--config", config])
    print(
        f"""
  slurm-jwt-bridge demo
  Log in:        {bridge_url}/   (user alice or bob, any password)
  Identity provider: {provider.issuer}
  Terminal login: {BIN}/slurm-jwt-bridge login --url {bridge_url}
  JWKS for slurmctld: {bridge_url}/.well-known/jwks.json
  Admin mint:    {BIN}/slurm-jwt-bridge mint $USER --keys-dir keys
  Stop with Ctrl-C.
""",
        flush=True,
    )
    try:
        while bridge.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if bridge.poll() is None:
            bridge.send_signal(signal.SIGTERM)
            bridge.wait(10)
        provider.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
