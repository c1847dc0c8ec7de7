"""`make demo`: the whole loop on one machine, started fresh and stopped by Ctrl-C.

- a one-node Slurm 22.05 from Debian's packages (slurmctld, slurmd, slurmrestd, munged), with
  demo accounts alice and bob on the machine;
- a local OpenID provider (the npm `oidc-provider` the test suite uses; alice and bob, any
  password);
- the bridge as in production (`serve --prod`, gunicorn), proxying to slurmrestd, with
  slurmctld's JWKS file kept in sync from the bridge's JWKS as the controller's timer would.

Needs root (it installs packages, creates accounts and runs Slurm's daemons). Everything it
starts is stopped by pid on Ctrl-C or SIGTERM; the next run starts from fresh state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.oidc import start_oidc_provider  # noqa: E402
from tests.helpers.slurm import API_VERSIONS, SlurmCluster, start_cluster  # noqa: E402

PORT = int(os.environ.get("DEMO_PORT", "8000"))
BIN = ROOT / ".venv" / "bin"
BRIDGE = BIN / "slurm-jwt-bridge"
VERSION = "22.05"
SYNC_INTERVAL = 30.0
OUTPUT_GLOB = "/tmp/slurm-jwt-bridge-demo-*.out"  # noqa: S108 (jobs write where alice can)


def say(text: str) -> None:
    print(text, flush=True)


def bridge_config(work: Path, keys: Path, bridge_url: str, issuer: str, upstream: str) -> Path:
    config = work / "bridge.toml"
    config.write_text(f"""\
[server]
host = "127.0.0.1"
port = {PORT}
public_url = "{bridge_url}"

[keys]
dir = "{keys}"
reload_interval = 1

[audit]
destination = "file:{work / "audit.log"}"

[browser]
secure_cookies = false   # plain http on 127.0.0.1 only
slurm_api_version = "{API_VERSIONS[VERSION]}"

[[issuers]]
name = "demo"
kind = "oidc"
display_name = "Demo identity provider"
issuer = "{issuer}"
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

[proxy]
upstream = "{upstream}"
# The token page's examples send the Slurm token itself through the proxy.
passthrough_slurm_tokens = true
""")
    return config


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the bridge exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError("the bridge did not become ready")


class JwksSync(threading.Thread):
    """What the controller's timer does: `jwks sync`, and on 22.05 a slurmctld restart when the
    file changed (22.05 reads its JWKS only at start)."""

    def __init__(self, cluster: SlurmCluster, bridge_url: str) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.argv = [
            str(BRIDGE),
            "jwks",
            "sync",
            "--url",
            f"{bridge_url}/.well-known/jwks.json",
            "--out",
            str(cluster.jwks_path),
            "--allow-http",  # the bridge is on this host, on loopback
        ]
        self.stopped = threading.Event()

    def sync_once(self) -> None:
        proc = subprocess.run(self.argv, capture_output=True, text=True, check=False)
        if proc.returncode == 3:
            say(f"  jwks sync: {proc.stdout.strip()}; restarting slurmctld (Slurm {VERSION})")
            self.cluster.restart_slurmctld()
        elif proc.returncode != 0:
            say(f"  jwks sync failed: {proc.stderr.strip()}")

    def run(self) -> None:
        while not self.stopped.wait(SYNC_INTERVAL):
            self.sync_once()


def copy_paste_block(bridge_url: str, api: str) -> str:
    submit = json.dumps(
        {
            "script": "#!/bin/bash\nid -un\n",
            "job": {
                "name": "bridge-demo",
                "current_working_directory": "/tmp",  # noqa: S108 (alice and bob can write there)
                "standard_output": OUTPUT_GLOB.replace("*", "%j"),
                "environment": {"PATH": "/usr/bin:/bin"},
            },
        }
    )
    auth = """printf 'Authorization: Bearer %s\\n' "$SLURM_JWT" |"""
    return f"""\
    read -rs SLURM_JWT    # paste the token from the page, then Enter (not echoed)
    {auth} curl -s -H @- {bridge_url}/slurm/{api}/jobs
    {auth} curl -s -H @- -H 'Content-Type: application/json' \\
        -d '{submit}' {bridge_url}/slurm/{api}/job/submit
    sleep 5; cat {OUTPUT_GLOB}    # the job's output: the name it ran as"""


def main() -> int:
    if os.geteuid() != 0:
        print(
            "make demo: needs root (it installs Slurm from Debian's packages, creates the "
            "demo accounts alice and bob and runs Slurm's daemons); run it as root",
            file=sys.stderr,
        )
        return 1
    work = ROOT / "var" / "demo"
    subprocess.run(["rm", "-rf", str(work)], check=True)  # fresh state every run
    work.mkdir(parents=True)
    for old in Path("/tmp").glob(Path(OUTPUT_GLOB).name):  # noqa: S108
        old.unlink()
    keys = work / "keys"
    subprocess.run([BRIDGE, "keys", "init", "--keys-dir", keys], check=True, capture_output=True)
    subprocess.run(
        [BRIDGE, "jwks", "export", "--keys-dir", keys, "--out", work / "jwks.json"],
        check=True,
        capture_output=True,
    )
    bridge_url = f"http://127.0.0.1:{PORT}"
    stack = contextlib.ExitStack()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        say(f"Starting Slurm {VERSION} (slurmctld, slurmd, slurmrestd, munged) ...")
        cluster = start_cluster(
            VERSION,
            work / "slurm",
            (keys / "jwt_hs256.key").read_bytes(),
            (work / "jwks.json").read_text(),
            users=("alice", "bob"),
        )
        stack.callback(cluster.stop)
        say("Starting the identity provider ...")
        provider = start_oidc_provider(
            work / "idp",
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
        stack.callback(provider.stop)
        config = bridge_config(work, keys, bridge_url, provider.issuer, cluster.restd_url)
        say("Starting the bridge (serve --prod: gunicorn) ...")
        log = open(work / "bridge.log", "ab")  # closed by the stack
        stack.callback(log.close)
        bridge = subprocess.Popen(
            [BRIDGE, "serve", "--prod", "--config", config, "--workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def stop_bridge() -> None:
            if bridge.poll() is None:
                bridge.send_signal(signal.SIGTERM)
                try:
                    bridge.wait(15)
                except subprocess.TimeoutExpired:
                    bridge.kill()
                    bridge.wait(5)

        stack.callback(stop_bridge)
        wait_ready(bridge_url, bridge)
        sync = JwksSync(cluster, bridge_url)
        sync.sync_once()
        sync.start()
        stack.callback(sync.stopped.set)
        api = API_VERSIONS[VERSION]
        say(f"""
  slurm-jwt-bridge demo: ready
  Log in:             {bridge_url}/   (alice or bob, any password)
  Identity provider:  {provider.issuer}
  Proxy to slurmrestd: {bridge_url}/slurm/{api}/...   (slurmrestd {VERSION} at {cluster.restd_url})
  Terminal login:     {BRIDGE} login --url {bridge_url}
  Logs and state:     {work}/

  After logging in, in a shell on this machine:

{copy_paste_block(bridge_url, api)}

  Stop everything with Ctrl-C.""")
        while bridge.poll() is None:
            time.sleep(0.5)
        if bridge.poll() is not None:
            say(f"the bridge exited ({bridge.returncode}); see {work}/bridge.log")
            return 1
    except KeyboardInterrupt:
        say("\nStopping ...")
    finally:
        stack.close()
    say("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
