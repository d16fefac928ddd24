#!/usr/bin/env bash
# Install what `make ha-test` needs to start a PRIVATE ZooKeeper and a PRIVATE PostgreSQL: Debian's
# `zookeeper` (the jars; the tests run `java` on them themselves) and `postgresql` (initdb,
# postgres, pg_ctl). Nothing is left running: the packages' own services are kept from
# starting while they install (a policy-rc.d that says no), and any that run anyway on their
# default ports (ZooKeeper 2181, PostgreSQL's packaged clusters) are stopped and set to manual.
# The tests start their own servers on free loopback ports under a temporary directory
# (tests/ha_servers.py); PostgreSQL runs there as the unprivileged `postgres` user.
#
# Idempotent: each step is skipped when already done. Needs root to install; without root it
# only checks (exit 0 when everything is present).
#
#   scripts/ha-local.sh            # install whatever is missing
#   scripts/ha-local.sh --check    # only report; exit 0 when everything is ready
set -euo pipefail
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

APT_LOCK_WAIT=300                    # seconds to wait for another apt/dpkg to finish
CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { printf 'ha-local [%3ss]: %s\n' "$(elapsed)" "$*" >&2; }
die() { printf 'ha-local: ERROR: %s\n' "$*" >&2; exit 1; }

# The facts tests/ha_servers.py relies on, checked the same way here.
zk_jar() { ls /usr/share/java/zookeeper.jar 2>/dev/null || ls /usr/share/java/zookeeper-3*.jar 2>/dev/null | head -n 1; }
pg_bindir() {  # the newest installed PostgreSQL's bin directory
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$d" && -x "$d/initdb" && -x "$d/postgres" && -x "$d/pg_ctl" ]] && echo "$d"
}
have_zookeeper() { [[ -n "$(zk_jar)" ]] && command -v java >/dev/null; }
have_postgresql() { [[ -n "$(pg_bindir)" ]] && getent passwd postgres >/dev/null; }

report() {
    local ok=1
    if have_zookeeper; then say "zookeeper: $(zk_jar), $(java -version 2>&1 | head -n 1)"
    else say "zookeeper: missing (no /usr/share/java/zookeeper.jar or no java)"; ok=0; fi
    if have_postgresql; then say "postgresql: $(pg_bindir) ($("$(pg_bindir)/postgres" --version)), user postgres"
    else say "postgresql: missing (no initdb/postgres/pg_ctl under /usr/lib/postgresql/*/bin, or no postgres user)"; ok=0; fi
    return $((1 - ok))
}

if ((CHECK_ONLY)); then report; exit $?; fi
if [[ $(id -u) -ne 0 ]]; then
    report || die "not root, and the HA prerequisites are missing: run this script as root"
    exit 0
fi

# 1. Packages. ------------------------------------------------------------------------------
need=()
have_zookeeper || need+=(zookeeper)
have_postgresql || need+=(postgresql)
if ((${#need[@]})); then
    command -v apt-get >/dev/null || die "no apt-get: install ZooKeeper (jars + java) and PostgreSQL by hand"
    # Keep the packages' services from starting while they install (Debian's policy-rc.d
    # protocol: exit 101 = action forbidden). An existing policy is left alone.
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# ha-local.sh: no service starts while installing\nexit 101\n' >"$policy"
        chmod +x "$policy"
        ours=$policy
        trap '[[ -n "$ours" ]] && rm -f "$ours"' EXIT
    fi
    say "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=$APT_LOCK_WAIT update -q >/dev/null || die "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout=$APT_LOCK_WAIT install -y -q "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
    if [[ -n "$ours" ]]; then rm -f "$ours"; ours=""; fi
else
    say "packages: zookeeper and postgresql present"
fi
report || die "installed ${need[*]:-nothing}, but the prerequisites are still missing (see above)"

# 2. No packaged service left running on a default port. --------------------------------------
# ZooKeeper: Debian's `zookeeperd` runs it as a service; `zookeeper` alone does not.
if [[ -x /etc/init.d/zookeeper ]] && /etc/init.d/zookeeper status >/dev/null 2>&1; then
    say "stopping the packaged ZooKeeper service (default port 2181)"
    /etc/init.d/zookeeper stop >/dev/null 2>&1 || say "could not stop the packaged ZooKeeper"
fi
command -v systemctl >/dev/null && systemctl disable zookeeper >/dev/null 2>&1 || true
# PostgreSQL: the package creates a cluster (15/main on 5432) and starts it when it can.
if command -v pg_lsclusters >/dev/null; then
    while read -r ver name port status _; do
        [[ "$ver" =~ ^[0-9]+$ ]] || continue
        conf=/etc/postgresql/$ver/$name/start.conf
        if [[ -w $conf ]] && ! grep -qx 'manual' "$conf"; then
            say "packaged cluster $ver/$name: start.conf set to manual (was $(grep -v '^#' "$conf" | tr -d '[:space:]'))"
            echo manual >"$conf"
        fi
        if [[ "$status" == online* ]]; then
            say "stopping the packaged PostgreSQL cluster $ver/$name (port $port)"
            pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || say "could not stop cluster $ver/$name"
        fi
    done < <(pg_lsclusters --no-header 2>/dev/null || true)
fi

say "ready in $(elapsed)s"
