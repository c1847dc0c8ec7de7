"""The signing ceiling: ``openssl speed rsa2048`` and in-process PyJWT / raw HMAC on the same cores.

Run as a module in a pinned subprocess for the in-process figures:

    taskset -c 0 python -m bench.ceiling SECONDS
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from .common import Layout

_RSA_LINE = re.compile(r"^rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", re.M)


def openssl_rsa2048(layout: Layout, seconds: int) -> dict[str, float]:
    """sign/s and verify/s of ``openssl speed rsa2048`` on the layout's server cores (one
    process per core with -multi), summed over those cores."""
    cores = layout.server_cores
    argv = [*layout.server_prefix(), "openssl", "speed", "-seconds", str(seconds)]
    if cores > 1:
        argv += ["-multi", str(cores)]
    argv.append("rsa2048")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30 * seconds + 60).stdout
    if cores > 1:
        # -multi prints "rsa 2048 bits ... sign/s verify/s" as the sum over the processes,
        # sometimes in the "Got: +F2:..." form only: take the last rsa line, else the F2 lines.
        m = list(_RSA_LINE.finditer(out))
        if m:
            return {"sign_s": float(m[-1][1]), "verify_s": float(m[-1][2])}
        f2 = re.findall(r"^\+F2:\d+:2048:([\d.]+):([\d.]+)", out, re.M)
        sign = sum(1 / float(a) for a, _ in f2)
        verify = sum(1 / float(b) for _, b in f2)
        return {"sign_s": sign, "verify_s": verify}
    m = list(_RSA_LINE.finditer(out))
    if not m:
        raise RuntimeError(f"unexpected openssl speed output:\n{out[-2000:]}")
    return {"sign_s": float(m[-1][1]), "verify_s": float(m[-1][2])}


def inprocess(layout: Layout, seconds: float) -> dict[str, float]:
    """PyJWT RS256/HS256 encode and raw cryptography/hmac signing, one process per server
    core in parallel, summed."""
    argv = [*layout.server_prefix(), sys.executable, "-m", "bench.ceiling", str(seconds)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        for _ in range(layout.server_cores)
    ]
    total: dict[str, float] = {}
    for p in procs:
        out, _ = p.communicate(timeout=60 + 10 * seconds)
        for k, v in json.loads(out.strip().splitlines()[-1]).items():
            total[k] = total.get(k, 0.0) + v
    return total


def _rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    n = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while True:
        for _ in range(50):
            fn()
        n += 50
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - t0)


def _main(seconds: float) -> None:
    import hashlib
    import hmac
    import secrets

    import jwt
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    hs = secrets.token_bytes(64)
    claims = {"exp": 2000000000, "iat": 1999998200, "sun": "alice", "jti": "x" * 22}
    msg = b"e" * 200
    out = {
        "pyjwt_rs256_s": _rate(
            lambda: jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k"}), seconds
        ),
        "pyjwt_hs256_s": _rate(lambda: jwt.encode(claims, hs, algorithm="HS256"), seconds),
        "raw_rsa_sign_s": _rate(
            lambda: key.sign(msg, padding.PKCS1v15(), hashes.SHA256()), seconds
        ),
        "raw_hmac_s": _rate(lambda: hmac.new(hs, msg, hashlib.sha256).digest(), seconds),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    _main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
