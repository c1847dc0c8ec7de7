"""Build the project's Go programs (examples/go, bench/oauth2-proxy) with the machine's Go, cached.

Why: the Slinky example and the oauth2-proxy benchmark peer are real Go modules pinned by their
go.mod and go.sum. Fetching them through the Go module proxy and compiling them (slurm-client's
generated API alone takes minutes on two busy cores) must happen once per machine, not once per
test run: the module cache (GOMODCACHE), the build cache (GOCACHE) and the finished binaries live
under /var/cache/slurm-jwt-bridge/go (env SLURM_JWT_BRIDGE_GO_CACHE overrides), keyed by a hash of
the module's files, and are rebuilt when absent. ``-mod=readonly`` makes a go.sum that does not
match the fetched modules an error instead of a silent rewrite.

    python3 tests/helpers/gobuild.py examples/go [bench/oauth2-proxy ...]   # build if needed
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GO_CACHE_ENV = "SLURM_JWT_BRIDGE_GO_CACHE"
DEFAULT_GO_CACHE = Path("/var/cache/slurm-jwt-bridge/go")
ROOT = Path(__file__).resolve().parents[2]

# module directory (relative to the repository) -> (binary name, package to build)
PROGRAMS = {
    "examples/go": ("slinky", "."),
    "bench/oauth2-proxy": ("oauth2-proxy", "github.com/oauth2-proxy/oauth2-proxy/v7"),
}


class GoBuildError(RuntimeError):
    """The go command failed; the message holds the command and the end of its output."""


def go_cache_root() -> Path:
    return Path(os.environ.get(GO_CACHE_ENV) or DEFAULT_GO_CACHE).absolute()


def go_executable() -> str | None:
    """The machine's ``go`` (PATH, then the usual /usr/local/go/bin)."""
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.is_file() else None


def go_env(cache: Path | None = None) -> dict[str, str]:
    """The environment every go command here runs with: the shared caches, pinned modules."""
    cache = cache or go_cache_root()
    env = dict(os.environ)
    env.update(
        {
            "GOMODCACHE": str(cache / "mod"),
            "GOCACHE": str(cache / "build"),
            "GOPATH": str(cache / "gopath"),
            "GOFLAGS": "-mod=readonly -buildvcs=false",
            "GOTOOLCHAIN": env.get("GOTOOLCHAIN", "local"),
        }
    )
    return env


def module_hash(module_dir: Path) -> str:
    """A digest of the module's own files (go.mod, go.sum, *.go): the binary's cache key."""
    digest = hashlib.sha256()
    for path in sorted(module_dir.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
            digest.update(path.relative_to(module_dir).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> None:
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise GoBuildError(f"{' '.join(argv)} (in {cwd}) timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise GoBuildError(
            f"{' '.join(argv)} (in {cwd}) exited {proc.returncode}:\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )


def build_program(module: str, *, timeout: float = 1800, log: bool = False) -> Path:
    """The cached binary of ``module`` (a key of PROGRAMS), built first if absent.

    Raises GoBuildError with the failing command and its output (no Go, a module the proxy does
    not serve, a go.sum mismatch, a compile error)."""
    name, package = PROGRAMS[module]
    module_dir = ROOT / module
    go = go_executable()
    if go is None:
        raise GoBuildError("no Go toolchain: `go` is not on PATH nor at /usr/local/go/bin/go")
    cache = go_cache_root()
    binary = cache / "bin" / f"{name}-{module_hash(module_dir)}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = go_env(cache)
    start = time.monotonic()
    _run([go, "mod", "download"], module_dir, env, timeout)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}.tmp")
    try:
        _run([go, "build", "-o", str(partial), package], module_dir, env, timeout)
        partial.replace(binary)  # atomic: a concurrent build never sees half a binary
    finally:
        partial.unlink(missing_ok=True)
    for old in binary.parent.glob(f"{name}-*"):  # builds of earlier go.mod/go.sum/sources
        if old != binary:
            old.unlink(missing_ok=True)
    if log:
        print(
            f"gobuild: built {module} -> {binary} in {time.monotonic() - start:.0f}s",
            file=sys.stderr,
        )
    return binary


def main(argv: list[str] | None = None) -> int:
    modules = (argv if argv is not None else sys.argv[1:]) or list(PROGRAMS)
    for module in modules:
        module = module.rstrip("/")
        if module not in PROGRAMS:
            print(f"gobuild: unknown module {module!r} (known: {', '.join(PROGRAMS)})")
            return 2
        try:
            print(build_program(module, log=True))
        except GoBuildError as exc:
            print(f"gobuild: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
