"""The Helm chart (deploy/helm/slurm-jwt-bridge), rendered by the real helm 3.17.1.

Every example values file is linted and rendered with a real key ring and JWKS made by the
``slurm-jwt-bridge`` command; the manifests are checked for what the service needs (non-root,
read-only root filesystem, probes, key permissions, a config the service loads, a JWKS slurmctld
accepts). The chart's key plumbing script is taken from the rendered ConfigMap and run for real:
the init container's copy against a kubelet-style Secret volume, and the rotation CronJob against
a small fake Kubernetes API on 127.0.0.1.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurm_jwt_bridge.keys import KeyRing, KeyRingError
from slurm_jwt_bridge.settings import parse_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "slurm-jwt-bridge"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
GET_HELM = REPO / "scripts" / "get-helm.sh"
BRIDGE = Path(sys.executable).parent / "slurm-jwt-bridge"

RELEASE = "bridge"
NAMESPACE = "hpc"
FULLNAME = "bridge-slurm-jwt-bridge"
KEYS_VOLUME = "/etc/slurm-jwt-bridge/keys"
KEYS_DIR = f"{KEYS_VOLUME}/ring"  # a 0700 directory of the pod's user inside the emptyDir
CONFIG_DIR = "/etc/slurm-jwt-bridge/config"
SECRET_DIR = "/var/run/slurm-jwt-bridge/keys-secret"
SCRIPTS_DIR = "/opt/slurm-jwt-bridge-chart"
PRIVATE_FILES = re.compile(r"^(rs256-.*\.pem|jwt_hs256\.key|session\.key)$")


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason on a developer machine; fail in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required component unavailable: {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------- fixtures


def _helm_works(path: str) -> bool:
    try:
        out = subprocess.run(
            [path, "version", "--short"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.startswith("v3.")


@pytest.fixture(scope="session")
def helm() -> str:
    for candidate in (os.environ.get("HELM"), str(REPO / ".cache/bin/helm"), shutil.which("helm")):
        if candidate and _helm_works(candidate):
            return candidate
    try:
        proc = subprocess.run(
            ["bash", str(GET_HELM)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        skip_or_fail(f"scripts/get-helm.sh could not run: {exc}")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        skip_or_fail(f"scripts/get-helm.sh failed (exit {proc.returncode}): {tail}")
    path = proc.stdout.strip().splitlines()[-1]
    if not _helm_works(path):
        skip_or_fail(f"{path} (from scripts/get-helm.sh) does not run")
    return path


def bridge_cli(*args: str) -> str:
    proc = subprocess.run([str(BRIDGE), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def key_ring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(keys directory, JWKS file) made by the real command, as an admin would."""
    base = tmp_path_factory.mktemp("ring")
    keys, jwks = base / "keys", base / "jwks.json"
    bridge_cli("keys", "init", "--keys-dir", str(keys))
    bridge_cli("jwks", "export", "--keys-dir", str(keys), "--out", str(jwks))
    return keys, jwks


@pytest.fixture(scope="session")
def keys_values(key_ring: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A values file carrying the real key ring as keys.data (base64, like a Secret's data)."""
    keys, _ = key_ring
    data = {
        p.name: base64.b64encode(p.read_bytes()).decode()
        for p in sorted(keys.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    path = tmp_path_factory.mktemp("values") / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": {"data": data}}))
    return path


# ---------------------------------------------------------------- helpers


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = helm_run(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_fails(helm: str, *args: str) -> str:
    proc = helm_run(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode != 0, f"helm template accepted {args}"
    return proc.stderr


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_values(values_file: Path | None) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file is not None:
        values = merged(values, yaml.safe_load(values_file.read_text()) or {})
    return values


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in containers(pod) if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod.get("volumes", [])}


def check_hardened(pod: dict[str, Any]) -> None:
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0
    assert isinstance(psc["runAsGroup"], int) and psc["runAsGroup"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(pod):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc.get("runAsUser", psc["runAsUser"]) > 0, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc["capabilities"].get("add"), c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert c.get("resources", {}).get("limits", {}).get("memory"), c["name"]
        # Every writable path is a volume (the root filesystem is read-only).
        for m in c.get("volumeMounts", []):
            if not m.get("readOnly"):
                vol = volumes(pod)[m["name"]]
                assert "emptyDir" in vol, f"{c['name']} writes to {m['mountPath']}"


def check_jwks_doc(doc: Any) -> list[str]:
    assert isinstance(doc, dict) and isinstance(doc["keys"], list) and doc["keys"]
    for key in doc["keys"]:
        assert key["kty"] == "RSA" and key["alg"] == "RS256"
        for member in ("kid", "n", "e"):
            assert isinstance(key[member], str) and key[member]
            assert re.fullmatch(r"[A-Za-z0-9_-]+", key[member]), member
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private member published"
    kids = [k["kid"] for k in doc["keys"]]
    assert len(set(kids)) == len(kids)
    return kids


def config_text(docs: list[dict[str, Any]]) -> str:
    """bridge.toml from the config ConfigMap, or from the Secret with configAsSecret."""
    found = [
        d
        for d in docs
        if d["kind"] in ("ConfigMap", "Secret") and d["metadata"]["name"] == f"{FULLNAME}-config"
    ]
    assert len(found) == 1
    if found[0]["kind"] == "Secret":
        return found[0]["stringData"]["bridge.toml"]
    return found[0]["data"]["bridge.toml"]


def config_settings(docs: list[dict[str, Any]]) -> Any:
    data = tomllib.loads(config_text(docs))
    assert data["keys"]["dir"] == KEYS_DIR
    settings = parse_settings(data, Path(CONFIG_DIR))
    assert settings.keys.dir == Path(KEYS_DIR)
    return settings


def script_from(docs: list[dict[str, Any]], dest: Path) -> Path:
    """The key script the image ships (deploy/docker/Dockerfile copies the chart's file)."""
    text = (CHART / "files" / "k8s_keys.py").read_text()
    path = dest / "k8s_keys.py"
    path.write_text(text)
    return path


def localize(argv: list[str], script: Path, paths: dict[str, Path]) -> list[str]:
    """A container's command as it would run here: our python, the pod's paths mapped to tmp."""
    out = []
    for arg in argv:
        if arg == "python3":
            arg = sys.executable
        elif arg == f"{SCRIPTS_DIR}/k8s_keys.py":
            arg = str(script)
        elif arg in paths:
            arg = str(paths[arg])
        out.append(arg)
    return out


def kubelet_secret_volume(target: Path, data: dict[str, str], mode: int, version: str) -> None:
    """Lay out a Secret volume the way the kubelet's atomic writer does."""
    target.mkdir(exist_ok=True)
    ts = target / f"..{version}"
    ts.mkdir()
    for name, b64 in data.items():
        f = ts / name
        f.write_bytes(base64.b64decode(b64))
        f.chmod(mode)
    tmp_link = target / "..data_tmp"
    tmp_link.symlink_to(ts.name)
    os.replace(tmp_link, target / "..data")
    for name in data:
        link = target / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for link in target.iterdir():
        if link.is_symlink() and not link.name.startswith(".") and link.name not in data:
            link.unlink()


# ---------------------------------------------------------------- lint and render


VALUE_FILES = [None, *EXAMPLES]
IDS = ["defaults", *[p.stem for p in EXAMPLES]]


def test_examples_exist() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"minimal", "ingress-tls", "existing-secret", "redis-rate-limit", "keycloak"} <= names


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_helm_lint(helm: str, values_file: Path | None, key_ring: tuple[Path, Path]) -> None:
    args = ["lint", str(CHART), "--strict", "--set-file", f"jwks={key_ring[1]}"]
    if values_file:
        args += ["-f", str(values_file)]
    proc = helm_run(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_rendered_manifests(
    helm: str, values_file: Path | None, key_ring: tuple[Path, Path]
) -> None:
    keys_dir, jwks_file = key_ring
    args = ["--set-file", f"jwks={jwks_file}"]
    if values_file:
        args += ["-f", str(values_file)]
    docs = render(helm, *args)
    values = effective_values(values_file)

    dep = one(docs, "Deployment", FULLNAME)
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    check_hardened(pod)
    assert pod["automountServiceAccountToken"] is False

    # The bridge under gunicorn, configured through the ConfigMap.
    bridge = container(pod, "bridge")
    assert bridge["command"] == ["gunicorn"]
    assert bridge["args"] == [
        "-c",
        "python:slurm_jwt_bridge.gunicorn_conf",
        "slurm_jwt_bridge:create_app()",
    ]
    env = {e["name"]: e for e in bridge["env"]}
    assert env["SLURM_JWT_BRIDGE_CONFIG"]["value"] == f"{CONFIG_DIR}/bridge.toml"
    port = values["gunicorn"]["port"]
    assert env["GUNICORN_BIND"]["value"] == f"0.0.0.0:{port}"
    assert env["GUNICORN_WORKERS"]["value"] == str(values["gunicorn"]["workers"])
    assert env["SLURM_JWT_BRIDGE_KEYS_DIR"]["value"] == KEYS_DIR
    assert bridge["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert bridge["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    # Keys: Secret volume -> init container copy (0600, this uid) -> read-only for the bridge.
    vols = volumes(pod)
    secret_name = values["keys"]["existingSecret"] or f"{FULLNAME}-keys"
    assert vols["keys-secret"]["secret"]["secretName"] == secret_name
    assert vols["keys"]["emptyDir"]["medium"] == "Memory"
    assert vols["tmp"]["emptyDir"]["medium"] == "Memory"
    assert mounts(bridge)[KEYS_VOLUME] == {
        "name": "keys",
        "mountPath": KEYS_VOLUME,
        "readOnly": True,
    }
    assert mounts(bridge)["/tmp"]["name"] == "tmp"
    assert mounts(bridge)[CONFIG_DIR]["readOnly"] is True
    assert "keys-secret" not in {m["name"] for m in bridge["volumeMounts"]}
    copier = container(pod, "keys-copy")
    assert copier in pod["initContainers"]
    assert copier["command"][2:] == ["copy", "--src", SECRET_DIR, "--dest", KEYS_DIR]
    assert mounts(copier)[SECRET_DIR]["name"] == "keys-secret"
    assert mounts(copier)[KEYS_VOLUME]["name"] == "keys"
    if values["keys"]["sync"]["enabled"]:
        sync = container(pod, "keys-sync")
        assert sync in pod["containers"]
        assert sync["command"][2:7] == ["copy", "--src", SECRET_DIR, "--dest", KEYS_DIR]
        assert "--watch" in sync["command"]

    # The config the pods load (a Secret when it holds credentials).
    settings = config_settings(docs)
    config_vol = vols["config"]
    if values["configAsSecret"]:
        assert config_vol["secret"]["secretName"] == f"{FULLNAME}-config"
        assert not of_kind(docs, "ConfigMap") or all(
            d["metadata"]["name"] != f"{FULLNAME}-config" for d in of_kind(docs, "ConfigMap")
        )
    else:
        assert config_vol["configMap"]["name"] == f"{FULLNAME}-config"
        assert not any(i.client_secret for i in settings.issuers), "use configAsSecret"
    if values["rateLimit"]["storageUri"]:
        assert settings.rate_limit.storage_uri == values["rateLimit"]["storageUri"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])

    # The JWKS ConfigMap: exactly the key ring's published keys, in the shape Slurm needs.
    jwks_cm = one(docs, "ConfigMap", values["jwksConfigMap"]["name"] or f"{FULLNAME}-jwks")
    kids = check_jwks_doc(json.loads(jwks_cm["data"]["jwks.json"]))
    assert kids == [k["kid"] for k in KeyRing.load(keys_dir).jwks()["keys"]]

    # Service and what depends on its labels.
    svc = one(docs, "Service", FULLNAME)
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"

    hpa = of_kind(docs, "HorizontalPodAutoscaler")
    if values["autoscaling"]["enabled"]:
        assert "replicas" not in dep["spec"]
        assert hpa[0]["spec"]["scaleTargetRef"]["name"] == FULLNAME
        assert hpa[0]["spec"]["minReplicas"] == values["autoscaling"]["minReplicas"]
    else:
        assert not hpa
        assert dep["spec"]["replicas"] == values["replicaCount"]

    pdb = of_kind(docs, "PodDisruptionBudget")
    assert bool(pdb) == values["podDisruptionBudget"]["enabled"]
    for p in pdb:
        assert p["spec"]["selector"]["matchLabels"].items() <= labels.items()

    netpol = of_kind(docs, "NetworkPolicy")
    assert bool(netpol) == values["networkPolicy"]["enabled"]
    for n in netpol:
        assert n["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert n["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
        restricted = values["networkPolicy"]["egress"]["restrict"]
        assert ("Egress" in n["spec"]["policyTypes"]) == restricted
        if restricted:
            dns = n["spec"]["egress"][0]["ports"]
            assert {"port": 53, "protocol": "UDP"} in dns

    ingress = of_kind(docs, "Ingress")
    assert bool(ingress) == values["ingress"]["enabled"]
    for ing in ingress:
        path = ing["spec"]["rules"][0]["http"]["paths"][0]
        assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}
        if values["ingress"]["tls"]:
            assert ing["spec"]["tls"][0]["secretName"] == values["ingress"]["tls"][0]["secretName"]
            assert settings.server.proxy_fix >= 1, "behind an ingress, trust its X-Forwarded-*"

    monitors = of_kind(docs, "ServiceMonitor")
    assert bool(monitors) == values["serviceMonitor"]["enabled"]
    for m in monitors:
        assert m["spec"]["endpoints"][0]["path"] == "/metrics"
        assert m["spec"]["endpoints"][0]["port"] == "http"

    # A keys Secret only when keys were supplied in values; never a generated one.
    secrets = [d["metadata"]["name"] for d in of_kind(docs, "Secret")]
    assert secrets == ([f"{FULLNAME}-config"] if values["configAsSecret"] else [])

    cron = of_kind(docs, "CronJob")
    assert bool(cron) == values["rotation"]["enabled"]
    if cron:
        check_rotation_objects(docs, cron[0], secret_name, jwks_cm["metadata"]["name"])


def check_rotation_objects(
    docs: list[dict[str, Any]], cron: dict[str, Any], secret: str, jwks_cm: str
) -> None:
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    check_hardened(pod)
    rotate = container(pod, "rotate")
    cmd = rotate["command"]
    assert cmd[2] == "rotate"
    assert cmd[cmd.index("--secret") + 1] == secret
    assert cmd[cmd.index("--configmap") + 1] == jwks_cm
    env = {e["name"]: e["value"] for e in rotate["env"]}
    assert env["SLURM_JWT_BRIDGE_CONFIG"] == f"{CONFIG_DIR}/bridge.toml"
    role = one(docs, "Role", cron["metadata"]["name"])
    rules = {tuple(r["resources"]): r for r in role["rules"]}
    assert set(rules) == {("secrets",), ("configmaps",)}
    assert rules[("secrets",)]["resourceNames"] == [secret]
    assert rules[("configmaps",)]["resourceNames"] == [jwks_cm]
    for r in role["rules"]:
        assert set(r["verbs"]) <= {"get", "update", "patch"}
    binding = one(docs, "RoleBinding", cron["metadata"]["name"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]


def test_defaults_create_no_secret_and_an_empty_jwks_only_when_asked(helm: str) -> None:
    docs = render(helm)
    # the configuration is a Secret by default; no keys Secret is ever generated
    assert [d["metadata"]["name"] for d in of_kind(docs, "Secret")] == [f"{FULLNAME}-config"]
    assert not of_kind(docs, "CronJob")
    # No jwks given and no rotation: no JWKS ConfigMap that would hand Slurm an empty key set.
    assert not [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-jwks")]
    docs = render(helm, "--set", "rotation.enabled=true")
    cm = one(docs, "ConfigMap", f"{FULLNAME}-jwks")
    assert json.loads(cm["data"]["jwks.json"]) == {"keys": []}
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        assert not re.search(r"gen(Private)?Key|genSelfSignedCert|randBytes", text), template


def test_config_checksum_follows_the_config(helm: str) -> None:
    def checksum(*args: str) -> str:
        dep = one(render(helm, *args), "Deployment", FULLNAME)
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum()
    assert checksum() == base
    changed = checksum("--set-string", "config=[tokens]\nmax_lifetime = 7200\n")
    assert changed != base


# ---------------------------------------------------------------- keys: Secret -> pod


def test_keys_secret_reaches_the_bridge_as_private_files(
    helm: str, key_ring: tuple[Path, Path], keys_values: Path, tmp_path: Path
) -> None:
    keys_dir, jwks_file = key_ring
    docs = render(helm, "-f", str(keys_values), "--set-file", f"jwks={jwks_file}")
    secret = one(docs, "Secret", f"{FULLNAME}-keys")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    want = {p.name for p in keys_dir.iterdir() if not p.name.startswith(".")}
    assert set(secret["data"]) == want
    assert {"ring.json", "jwt_hs256.key", "session.key"} <= want
    for name, b64 in secret["data"].items():
        assert base64.b64decode(b64) == (keys_dir / name).read_bytes(), name

    pod = one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    fs_group = pod["securityContext"]["fsGroup"]
    assert fs_group > 0
    vol_mode = volumes(pod)["keys-secret"]["secret"]["defaultMode"]
    # What the kubelet makes of the Secret with an fsGroup: group-readable files (mode | 0440).
    kubelet_mode = vol_mode | 0o440
    src, dest = tmp_path / "secret", tmp_path / "keys"
    kubelet_secret_volume(src, secret["data"], kubelet_mode, "2024_01_01_00_00_00.1")
    # the reason for the copy: the bridge refuses the Secret as mounted (symlinks into ..data,
    # group-readable)
    with pytest.raises(KeyRingError, match=r"symlink|group/other"):
        KeyRing.load(src)

    script = script_from(docs, tmp_path)
    paths = {SECRET_DIR: src, KEYS_DIR: dest}
    init = localize(container(pod, "keys-copy")["command"], script, paths)
    proc = subprocess.run(init, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for f in dest.iterdir():
        mode = stat.S_IMODE(f.stat().st_mode)
        if PRIVATE_FILES.match(f.name):
            assert mode == 0o600, f"{f.name} is {mode:04o}"
        else:
            assert f.name == "ring.json" and mode == 0o644
    assert sorted(p.name for p in dest.iterdir()) == sorted(want)
    loaded = KeyRing.load(dest)
    assert loaded.jwks() == KeyRing.load(keys_dir).jwks()
    assert loaded.hs256 == (keys_dir / "jwt_hs256.key").read_bytes()

    # The sidecar carries a rotated Secret into the running pod's copy.
    rotated = tmp_path / "rotated"
    shutil.copytree(keys_dir, rotated)
    bridge_cli("keys", "rotate", "--keys-dir", str(rotated), "--force")
    new_data = {
        p.name: base64.b64encode(p.read_bytes()).decode()
        for p in rotated.iterdir()
        if not p.name.startswith(".")
    }
    sidecar = localize(container(pod, "keys-sync")["command"], script, paths)
    sidecar[sidecar.index("--watch") + 1] = "0.2"
    proc = subprocess.Popen(sidecar, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # several passes over an unchanged Secret: nothing to do, keeps running
        assert proc.poll() is None, "the sidecar must keep watching"
        assert sorted(p.name for p in dest.iterdir()) == sorted(want)
        kubelet_secret_volume(src, new_data, kubelet_mode, "2024_01_08_00_00_00.2")
        deadline = time.monotonic() + 20
        want_ring = (rotated / "ring.json").read_bytes()
        while time.monotonic() < deadline:
            if (dest / "ring.json").read_bytes() == want_ring:
                break
            time.sleep(0.1)
        assert (dest / "ring.json").read_bytes() == want_ring, "sidecar did not copy the update"
        time.sleep(0.5)
        assert KeyRing.load(dest).active.kid == KeyRing.load(rotated).active.kid
        assert sorted(p.name for p in dest.iterdir()) == sorted(new_data)
        assert proc.poll() is None, "the sidecar must keep watching"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_copy_refuses_a_secret_without_keys(helm: str, tmp_path: Path) -> None:
    script = script_from(render(helm), tmp_path)
    src, dest = tmp_path / "secret", tmp_path / "keys"
    kubelet_secret_volume(src, {"unrelated": base64.b64encode(b"x").decode()}, 0o440, "v1")
    proc = subprocess.run(
        [sys.executable, str(script), "copy", "--src", str(src), "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "holds no key ring" in proc.stderr


# ---------------------------------------------------------------- rotation CronJob


class FakeApi:
    """Just enough of the Kubernetes API: one Secret and one ConfigMap, bearer auth,
    resourceVersion conflicts, JSON merge patch. Listens on 127.0.0.1 only."""

    def __init__(self, token: str, objects: dict[str, dict[str, Any]]) -> None:
        self.token = token
        self.objects = objects  # path -> object
        self.calls: list[tuple[str, str]] = []
        self.bump_before_put = False
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self) -> None:
                api.calls.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self.reply(401, {"message": "Unauthorized"})
                obj = api.objects.get(self.path)
                if obj is None:
                    return self.reply(404, {"message": f"{self.path} not found"})
                if self.command == "GET":
                    return self.reply(200, obj)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.command == "PATCH":
                    assert self.headers["Content-Type"] == "application/merge-patch+json"
                    for key, value in body.get("data", {}).items():
                        if value is None:
                            obj["data"].pop(key, None)
                        else:
                            obj["data"][key] = value
                elif self.command == "PUT":
                    if api.bump_before_put:
                        obj["metadata"]["resourceVersion"] += "0"
                    if (
                        body["metadata"].get("resourceVersion")
                        != obj["metadata"]["resourceVersion"]
                    ):
                        return self.reply(409, {"message": "the object has been modified"})
                    assert body["metadata"]["name"] == obj["metadata"]["name"]
                    obj["data"] = body["data"]
                obj["metadata"]["resourceVersion"] = str(
                    int(obj["metadata"]["resourceVersion"]) + 1
                )
                return self.reply(200, obj)

            do_GET = do_PUT = do_PATCH = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rotation_setup(
    helm: str, key_ring: tuple[Path, Path], keys_values: Path, tmp_path: Path
) -> Iterator[tuple[FakeApi, list[str], dict[str, str], str, str]]:
    _, jwks_file = key_ring
    docs = render(
        helm,
        "-f",
        str(CHART / "examples" / "existing-secret.yaml"),
        "-f",
        str(keys_values),
        "--set",
        "keys.existingSecret=",
        "--set-file",
        f"jwks={jwks_file}",
    )
    secret = one(docs, "Secret", f"{FULLNAME}-keys")
    jwks_cm = one(docs, "ConfigMap", f"{FULLNAME}-jwks")
    cron = one(docs, "CronJob", f"{FULLNAME}-rotate")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    check_rotation_objects(docs, cron, secret["metadata"]["name"], jwks_cm["metadata"]["name"])
    script = script_from(docs, tmp_path)
    config = tmp_path / "bridge.toml"
    # The ring was made a moment ago: let the CronJob rotate without waiting min_next_age.
    text = config_text(docs)
    assert "[keys]\n" in text
    config.write_text(text.replace("[keys]\n", "[keys]\nmin_next_age = 0\n", 1))
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    work = tmp_path / "work"
    work.mkdir()
    base = f"/api/v1/namespaces/{NAMESPACE}"
    secret_path = f"{base}/secrets/{secret['metadata']['name']}"
    cm_path = f"{base}/configmaps/{jwks_cm['metadata']['name']}"
    for obj in (secret, jwks_cm):
        obj["metadata"]["resourceVersion"] = "100"
        obj["metadata"]["namespace"] = NAMESPACE
    argv = localize(container(pod, "rotate")["command"], script, {"/tmp": work})
    argv += [
        "--namespace",
        NAMESPACE,
        "--token-file",
        str(token),
        "--bridge-command",
        shlex.join([str(BRIDGE)]),
    ]
    env = {**os.environ, "SLURM_JWT_BRIDGE_CONFIG": str(config), "TMPDIR": str(work)}
    with FakeApi("sa-token-123", {secret_path: secret, cm_path: jwks_cm}) as api:
        yield api, [*argv, "--api-url", api.url], env, secret_path, cm_path
    assert list(work.iterdir()) == [], "the private copy of the keys was left behind"


def secret_ring(secret: dict[str, Any], where: Path) -> KeyRing:
    where.mkdir()
    for name, b64 in secret["data"].items():
        (where / name).write_bytes(base64.b64decode(b64))
        (where / name).chmod(0o644 if name == "ring.json" else 0o600)
    return KeyRing.load(where)


def test_rotation_cronjob_rotates_the_secret_and_publishes_the_jwks(
    rotation_setup: tuple[FakeApi, list[str], dict[str, str], str, str], tmp_path: Path
) -> None:
    api, argv, env, secret_path, cm_path = rotation_setup
    before = secret_ring(api.objects[secret_path], tmp_path / "before")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr

    after = secret_ring(api.objects[secret_path], tmp_path / "after")
    assert after.active.kid == before.next.kid, "the next key becomes active"
    assert after.next.kid not in {k.kid for k in before.rsa_keys}, "a new next key"
    retired = [k for k in after.rsa_keys if k.state == "retired"]
    assert [k.kid for k in retired] == [before.active.kid]
    assert after.hs256 == before.hs256
    assert api.objects[secret_path]["metadata"]["resourceVersion"] == "101"

    jwks = json.loads(api.objects[cm_path]["data"]["jwks.json"])
    kids = check_jwks_doc(jwks)
    assert kids == [k["kid"] for k in after.jwks()["keys"]]
    assert {after.next.kid, after.active.kid, before.active.kid} == set(kids)
    # The JWKS went out before the Secret, so slurmctld never lags behind the signing keys.
    writes = [(m, p) for m, p in api.calls if m != "GET"]
    assert writes == [("PATCH", cm_path), ("PUT", secret_path)]


def test_rotation_cronjob_never_overwrites_a_concurrent_change(
    rotation_setup: tuple[FakeApi, list[str], dict[str, str], str, str],
) -> None:
    api, argv, env, secret_path, _ = rotation_setup
    before = copy.deepcopy(api.objects[secret_path]["data"])
    api.bump_before_put = True
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 1
    assert "HTTP 409" in proc.stderr
    assert api.objects[secret_path]["data"] == before


def test_rotation_cronjob_prune_only_and_bad_token(
    rotation_setup: tuple[FakeApi, list[str], dict[str, str], str, str], tmp_path: Path
) -> None:
    api, argv, env, secret_path, _ = rotation_setup
    before = secret_ring(api.objects[secret_path], tmp_path / "before")
    proc = subprocess.run(
        [*argv, "--prune-only"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "unchanged" in proc.stderr
    assert [m for m, _ in api.calls if m != "GET"] == [], "nothing to prune, nothing written"
    after = secret_ring(api.objects[secret_path], tmp_path / "after")
    assert after.active.kid == before.active.kid

    token_file = Path(argv[argv.index("--token-file") + 1])
    token_file.write_text("wrong\n")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=x"], "replicaCount"),
        (["--set", "notAValue=1"], "notAValue"),
        (["--set", "podSecurityContext.runAsUser=0"], "runAsUser"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "service.port=70000"], "service.port"),
        (["--set", "keys.sync.interval=0"], "interval"),
        (["--set", "rateLimit.storageUri=localhost:6379"], "storageUri"),
        (["--set", "server=uwsgi"], "server"),
    ],
)
def test_schema_rejects_bad_values(helm: str, args: list[str], message: str) -> None:
    stderr = render_fails(helm, *args)
    assert "values don't meet the specifications of the schema" in stderr
    assert message in stderr


def test_templates_refuse_bad_config_keys_and_jwks(
    helm: str, key_ring: tuple[Path, Path], keys_values: Path, tmp_path: Path
) -> None:
    assert "not valid TOML" in render_fails(helm, "--set-string", "config=[tokens\n")
    assert "[keys] dir is set by the chart" in render_fails(
        helm, "--set-string", 'config=[keys]\ndir = "/srv/keys"\n'
    )
    assert "differs from rateLimit.storageUri" in render_fails(
        helm,
        "--set-string",
        'config=[rate_limit]\nstorage_uri = "redis://a:6379/0"\n',
        "--set",
        "rateLimit.storageUri=redis://b:6379/0",
    )
    assert "either keys.existingSecret or keys.data" in render_fails(
        helm, "-f", str(keys_values), "--set", "keys.existingSecret=other"
    )
    good = json.loads(key_ring[1].read_text())
    cases = {
        "no-alg": ({"keys": [{k: v for k, v in good["keys"][0].items() if k != "alg"}]}, "alg"),
        **{
            f"private-{m}": ({"keys": [{**good["keys"][0], m: "AQAB"}]}, f"(member {m})")
            for m in ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
        },
        "empty": ({"keys": []}, "non-empty"),
        "ec": ({"keys": [{**good["keys"][0], "kty": "EC"}]}, "kty RSA"),
    }
    for name, (doc, message) in cases.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(doc))
        assert message in render_fails(helm, "--set-file", f"jwks={bad}"), name
    bad = tmp_path / "broken.json"
    bad.write_text('{"keys": [')
    assert "not valid JSON" in render_fails(helm, "--set-file", f"jwks={bad}")


def test_a_valid_config_the_service_would_refuse_is_caught_here(helm: str) -> None:
    """The chart only checks TOML syntax; parse_settings catches the rest (as the pod would)."""
    docs = render(helm, "--set-string", "config=[tokens]\nmax_lifetime = 'soon'\n")
    with pytest.raises(ValueError, match=r"tokens\.max_lifetime"):
        config_settings(docs)


# ---------------------------------------------------------------- NOTES.txt


def test_notes_tell_the_admin_the_slurm_lines(helm: str, tmp_path: Path) -> None:
    """helm template does not print NOTES.txt: render a copy where it is a normal template."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_body.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes + "\n{{- end -}}\n"
    )
    (chart / "templates" / "notes-as-configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "test.notes" . | toJson }}\n'
    )
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    args += ["-f", str(CHART / "examples" / "ingress-tls.yaml")]
    proc = helm_run(helm, *args, "--set", "rotation.enabled=true")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    text = one(docs, "ConfigMap", "notes")["data"]["notes"]
    assert "AuthAltTypes=auth/jwt" in text
    assert "AuthAltParameters=jwks=/etc/slurm/jwks.json" in text
    assert (
        "slurm-jwt-bridge jwks sync --url https://slurm-token.example.org/.well-known/jwks.json"
        in text
    )
    assert "--reconfigure" in text and "22.05" in text
    assert f"jwksKeyRef: {{name: {FULLNAME}-jwks, key: jwks.json}}" in text
    assert f"{FULLNAME}-rotate" in text
    # Without keys in values, the admin is told how to create the Secret.
    assert f"create secret generic {FULLNAME}-keys --from-file=./keys" not in text  # existing
    proc = helm_run(helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    text = one(docs, "ConfigMap", "notes")["data"]["notes"]
    assert f"create secret generic {FULLNAME}-keys --from-file=./keys" in text
    # Without an https ingress the only URL is plain http, which jwks sync refuses: the notes
    # never offer it as the URL to sync from.
    assert "jwks sync --url https://BRIDGE_HOST/.well-known/jwks.json" in text
    assert not re.search(r"jwks sync --url http://", text)


# ---------------------------------------------------------------- trust outside ConfigMaps


def test_no_configmap_carries_code_or_credentials(helm: str, keys_values: Path) -> None:
    """Write access to ConfigMaps must not be a master key: the key script run next to the
    private keys comes from the image, and the configuration is a Secret unless asked."""
    for args in ([], ["-f", str(keys_values), "--set", "rotation.enabled=true"]):
        docs = render(helm, *args)
        for cm in of_kind(docs, "ConfigMap"):
            assert "k8s_keys.py" not in cm.get("data", {}), cm["metadata"]["name"]
            assert "bridge.toml" not in cm.get("data", {}), cm["metadata"]["name"]
        assert one(docs, "Secret", f"{FULLNAME}-config")
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert re.search(
        rf"^COPY deploy/helm/slurm-jwt-bridge/files/k8s_keys\.py {SCRIPTS_DIR}/k8s_keys\.py$",
        dockerfile,
        re.M,
    ), "the image ships the chart's key script where the templates run it"


def test_server_granian_runs_granian_with_the_same_settings(helm: str) -> None:
    gunicorn = container(
        one(render(helm), "Deployment", FULLNAME)["spec"]["template"]["spec"], "bridge"
    )
    pod = one(render(helm, "--set", "server=granian"), "Deployment", FULLNAME)["spec"]["template"][
        "spec"
    ]
    check_hardened(pod)
    bridge = container(pod, "bridge")
    assert [*bridge["command"], *bridge["args"]] == [
        "python3",
        "-m",
        "slurm_jwt_bridge.granian_serve",
    ]
    assert (REPO / "app" / "slurm_jwt_bridge" / "granian_serve.py").exists()
    # the same bind, workers, threads, config, probes and port as under gunicorn
    for key in (
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "volumeMounts",
        "securityContext",
    ):
        assert bridge.get(key) == gunicorn.get(key), key


@pytest.mark.parametrize(
    "config",
    [
        '[[issuers]]\nname="k"\nkind="oidc"\nissuer="https://k.example.org"\n'
        'audiences=["b"]\nclient_id="c"\nclient_secret="s3cret"\n',
        '[rate_limit]\nstorage_uri="redis://:s3cret@redis:6379/0"\n',
        '[browser]\nsession_storage_uri="redis://:s3cret@redis:6379/1"\n',
    ],
)
def test_credentials_are_never_rendered_into_a_configmap(helm: str, config: str) -> None:
    err = render_fails(helm, "--set", "configAsSecret=false", "--set-string", f"config={config}")
    assert "configAsSecret" in err
    assert "s3cret" not in err


def test_service_monitor_needs_an_internal_allow_list(helm: str) -> None:
    err = render_fails(helm, "--set", "serviceMonitor.enabled=true")
    assert "internal_allow" in err


def test_live_key_ring_never_enters_release_history(helm: str, keys_values: Path) -> None:
    """No template reads live objects (lookup): what it read would be stored in the release,
    and `helm rollback` would put retired or revoked keys back. With rotation the keys Secret
    and the JWKS ConfigMap are created once, at install, and then left to the CronJob."""
    for template in (CHART / "templates").iterdir():
        assert not re.search(r"\blookup\b", template.read_text()), template.name
    docs = render(helm, "-f", str(keys_values), "--set", "rotation.enabled=true")
    for obj in (
        one(docs, "Secret", f"{FULLNAME}-keys"),
        one(docs, "ConfigMap", f"{FULLNAME}-jwks"),
    ):
        notes = obj["metadata"]["annotations"]
        assert notes["helm.sh/hook"] == "pre-install", obj["metadata"]["name"]
        assert notes["helm.sh/resource-policy"] == "keep"
