"""Benchmarks of slurm-jwt-bridge beside the alternatives (``make bench`` = ``python -m bench``).

One run on one machine measures the signing ceiling (openssl, PyJWT), the bridge under gunicorn
(token exchange RS256/HS256, JWKS), npm oidc-provider's client_credentials grant, ``scontrol
token`` and slurmrestd direct versus through the proxy, and writes docs/BENCHMARKS.md.

Modules: ``common`` (processes, CPU accounting, pinning), ``loadgen`` (wrk and its Lua scripts),
``servers`` (the bridge, oidc-provider, the local issuer, Slurm), ``scenarios`` (what is
measured), ``report`` (the Markdown). bench/soak.py and bench/fuzz.py are separate tools.
"""
