#!/usr/bin/env bash
# Install the system packages the test suite needs (run as root; idempotent).
#
# Why: the integration tests start real Slurm daemons (22.05 from this host's Debian packages,
# 24.11 from a cached Debian trixie chroot, 26.05 from a cached Debian sid chroot), redis, nginx
# and a headless browser. The packages must be
# installed without leaving system daemons running or enabled: a system munged/slurmctld/redis
# would hold sockets and ports that the tests' own daemons use.
#
# Env: SLURM_JWT_BRIDGE_SKIP_CHROOT=1 skips building the chroots (~40 s, ~300 MB each);
#      SLURM_JWT_BRIDGE_SID_CHROOT=DIR and SLURM_JWT_BRIDGE_TRIXIE_CHROOT=DIR put them elsewhere;
#      SLURM_JWT_BRIDGE_SKIP_KEYCLOAK=1 skips fetching and preparing Keycloak (~180 MB from
#      Maven Central, a few minutes once); SLURM_JWT_BRIDGE_KEYCLOAK_HOME=DIR puts it elsewhere.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-system-deps.sh: must run as root" >&2
    exit 1
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
    slurmctld slurmd slurmrestd slurm-client slurm-wlm-jwt-plugin munge
    debootstrap procps util-linux passwd mount coreutils
    redis-server chromium wrk systemd nginx
    python3 python3-venv ca-certificates
    openjdk-17-jre-headless maven unzip python3-requests
)
# Services (named like their packages) that a fresh install would start and enable.
SERVICES=(munge slurmctld slurmd slurmrestd redis-server nginx)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    echo "install-system-deps.sh: installing ${missing[*]}"
    start_epoch=$(date +%s)

    # Keep package scripts from starting daemons (invoke-rc.d honours policy-rc.d).
    policy=/usr/sbin/policy-rc.d
    policy_backup=""
    if ! { [[ -x $policy ]] && grep -qx 'exit 101' "$policy"; }; then
        if [[ -e $policy ]]; then
            policy_backup=$(mktemp /usr/sbin/policy-rc.d.sjb-backup.XXXXXX)
            cp -p "$policy" "$policy_backup"
        fi
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        restore_policy() {
            if [[ -n $policy_backup ]]; then
                mv -f "$policy_backup" "$policy"
            else
                rm -f "$policy"
            fi
        }
        trap restore_policy EXIT
    fi

    # apt-get update only when a missing package has no install candidate (or install fails).
    need_update=0
    for pkg in "${missing[@]}"; do
        candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [[ -z $candidate || $candidate == "(none)" ]]; then
            need_update=1
            break
        fi
    done
    if ((need_update)); then
        apt-get update -q
    fi
    install=(apt-get install -y -q --no-install-recommends "${missing[@]}")
    if ! "${install[@]}"; then
        ((need_update)) || { apt-get update -q && "${install[@]}"; }
    fi

    # Packages installed just now must not start at boot either (existing setups are left alone).
    for svc in "${SERVICES[@]}"; do
        [[ " ${missing[*]} " == *" $svc "* ]] || continue
        if [[ -e /lib/systemd/system/$svc.service ]] && command -v deb-systemd-helper >/dev/null; then
            deb-systemd-helper disable "$svc.service" >/dev/null 2>&1 || true
        fi
        if [[ -e /etc/init.d/$svc ]]; then
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    done

    # Belt and braces: a daemon that a package script started during this run is stopped by the
    # pid in its own pidfile (only if that process started after this script did).
    now=$(date +%s)
    for pidfile in /run/munge/munged.pid /run/slurmctld.pid /run/slurmd.pid \
        /run/slurmrestd.pid /run/redis/redis-server.pid /run/nginx.pid; do
        [[ -r $pidfile ]] || continue
        pid=$(head -n1 "$pidfile" | tr -dc '0-9')
        [[ -n $pid && -d /proc/$pid ]] || continue
        age=$(ps -o etimes= -p "$pid" | tr -d ' ')
        if [[ -n $age ]] && ((age <= now - start_epoch + 1)); then
            echo "install-system-deps.sh: stopping pid $pid from $pidfile (started by a package)"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                [[ -d /proc/$pid ]] || break
                sleep 0.1
            done
        fi
    done
else
    echo "install-system-deps.sh: system packages already installed"
fi

# Slurm 24.11 and 26.05 for the tests: cached Debian trixie and sid chroots, each rebuilt only
# when absent or incomplete.
if [[ ${SLURM_JWT_BRIDGE_SKIP_CHROOT:-0} != 1 ]]; then
    python3 "$REPO/tests/helpers/slurm.py" --ensure-chroot trixie sid
fi

# Keycloak for the tests: the pinned server distribution from Maven Central, prepared once.
if [[ ${SLURM_JWT_BRIDGE_SKIP_KEYCLOAK:-0} != 1 ]]; then
    python3 "$REPO/tests/helpers/keycloak.py" --ensure
fi
