#!/usr/bin/env bash
# docker-compose.yml brought up with a real container engine, used, scaled and stopped.
#
#   scripts/compose-check.sh            # as root; prints its timings, exits non-zero on any failure
#
# The engine is podman (Debian's; runs the containers as root), driven by docker-compose 1.29
# through `podman system service` on a unix socket. podman-compose is not used: it ignores
# `service_healthy` and `--scale`. Each step has a timeout, and all traffic goes to 127.0.0.1.
#
#  1. podman: `default_ulimits = []` in /etc/containers/containers.conf (the defaults fail
#     here); the API service on a socket of our own, stopped at the end.
#  2. Base images: no registry serves them here, so local stand-ins are built once (cached
#     by tag) from a `debootstrap --variant=minbase` root and loaded with `podman import`,
#     under the names the Dockerfile's FROM and the compose file's `image:` lines use:
#     python:3.11-slim (Debian's python3), redis:7-alpine (Debian's redis-server, run with
#     --protected-mode no as the official image does), postgres:17-alpine (Debian's
#     PostgreSQL, initialised from POSTGRES_USER/PASSWORD/DB as the official image does).
#     The Python stand-in trusts the host's CA bundle (the one the host's pip uses), so that
#     `pip install` inside the build reaches PyPI through this host's TLS proxy.
#  3. `docker-compose build` and `up -d`. podman schedules health checks through systemd,
#     which this machine lacks, so a loop here runs `podman healthcheck run` on each container.
#  4. A key made with `docker-compose exec` (`run` fails under podman: "link is not
#     supported"); the openai SDK (the host venv's) for a chat, a stream and embeddings.
#  5. `--scale quota=2`: seconds until the new replica gets traffic, and how one sequential
#     client's requests split over the two replicas (their meshgate_quota_decisions_total).
#  6. `docker-compose down -v`, whatever happened before.
#
# Environment: COMPOSE_CHECK_WORK (cache and scratch, default /var/tmp/meshgate-compose-check),
# COMPOSE_CHECK_PORT (the edge on 127.0.0.1, default 18080), DEBIAN_MIRROR (default: the
# first Debian mirror in /etc/apt/sources.list*), PYTHON (with openai, default .venv/bin/python),
# COMPOSE_CHECK_CLUSTER=1 (on a Redis Cluster). The stand-ins are rebuilt only when missing:
# `podman rmi python:3.11-slim redis:7-alpine postgres:17-alpine` forces it (a new host CA).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${COMPOSE_CHECK_WORK:-/var/tmp/meshgate-compose-check}
PORT=${COMPOSE_CHECK_PORT:-18080}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SOCKET=$WORK/podman.sock
PROJECT=meshgatecheck
SUITE=bookworm

export DOCKER_HOST=unix://$SOCKET
export COMPOSE_PROJECT_NAME=$PROJECT
export COMPOSE_FILE=$ROOT/docker-compose.yml
# COMPOSE_CHECK_CLUSTER=1: the same check on a Redis Cluster (docker-compose.cluster.yml),
# whose one-shot `redis-cluster` service joins the nodes and exits.
ONESHOT=
if [ "${COMPOSE_CHECK_CLUSTER:-0}" = 1 ]; then
  COMPOSE_FILE=$COMPOSE_FILE:$ROOT/docker-compose.cluster.yml
  ONESHOT=redis-cluster
fi
# The edge and the admin API on this host's loopback only, on ports of the check's own.
export MESHGATE_EDGE_PUBLISH=127.0.0.1:$PORT
export MESHGATE_ADMIN_PORT=$((PORT + 1))
export COMPOSE_HTTP_TIMEOUT=120

log() { printf '[compose-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
compose() { timeout "${COMPOSE_TIMEOUT:-300}" docker-compose --ansi never "$@"; }

[ "$(id -u)" = 0 ] || die "run as root: podman runs the containers as root here"
for tool in podman debootstrap docker-compose iptables timeout; do
  command -v "$tool" >/dev/null \
    || die "$tool is not installed (Debian: apt-get install podman netavark aardvark-dns iptables debootstrap docker-compose)"
done
# Compose's service names resolve through aardvark-dns, which apt installs only as a Recommends.
[ -x /usr/lib/podman/aardvark-dns ] || [ "$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null)" != netavark ] \
  || die "aardvark-dns is not installed: containers could not resolve each other (apt-get install aardvark-dns)"
"$PYTHON" -c 'import openai' 2>/dev/null || die "$PYTHON has no openai SDK (scripts/test.sh makes the venv)"
mkdir -p "$WORK"

# --- 1. podman ------------------------------------------------------------------------------
conf=/etc/containers/containers.conf
if ! grep -qE '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[\]' "$conf" 2>/dev/null; then
  log "setting default_ulimits = [] in $conf"
  mkdir -p /etc/containers
  if grep -qE '^\[containers\]' "$conf" 2>/dev/null; then
    sed -i '/^\[containers\]/a default_ulimits = []' "$conf"
  else
    printf '[containers]\ndefault_ulimits = []\n' >>"$conf"
  fi
fi

HEALTH_PID='' SERVICE_PID='' TRAFFIC_PID='' STARTED=''
cleanup() {
  status=$?
  trap - EXIT INT TERM
  [ -z "$HEALTH_PID" ] || kill "$HEALTH_PID" 2>/dev/null || true
  [ -z "$TRAFFIC_PID" ] || kill "$TRAFFIC_PID" 2>/dev/null || true
  if [ -n "$STARTED" ]; then
    if [ "$status" != 0 ]; then
      log "logs of the failed run (last 30 lines each):"
      COMPOSE_TIMEOUT=60 compose logs --no-color --tail=30 >&2 || true
    fi
    log "docker-compose down -v"
    COMPOSE_TIMEOUT=120 compose down -v --remove-orphans --timeout 10 >&2 || status=1
  fi
  if [ -n "$SERVICE_PID" ]; then
    kill "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
  fi
  rm -f "$SOCKET"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -f "$SOCKET"
podman system service --time=0 "unix://$SOCKET" >"$WORK/podman-service.log" 2>&1 &
SERVICE_PID=$!
# api_ping: the API answers GET /_ping on the socket.
api_ping() {
  "$PYTHON" - "$SOCKET" 2>/dev/null <<'EOF'
import socket, sys
conn = socket.socket(socket.AF_UNIX)
conn.settimeout(2)
conn.connect(sys.argv[1])
conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
sys.exit(b" 200 " not in conn.recv(4096))
EOF
}
for _ in $(seq 100); do
  ! api_ping || break
  kill -0 "$SERVICE_PID" 2>/dev/null || die "podman system service exited: $(tail -5 "$WORK/podman-service.log")"
  sleep 0.2
done
api_ping || die "podman's API socket does not answer"
# Leftovers of an interrupted run would make names and ports clash.
COMPOSE_TIMEOUT=120 compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# --- 2. base images (cached by tag) ---------------------------------------------------------
mirror=${DEBIAN_MIRROR:-$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
  /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | grep -E '^(deb|URIs:)' \
  | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)}
mirror=${mirror:-http://deb.debian.org/debian}

have_image() { podman image exists "$1"; }

# A minbase root, made once and kept as a tarball; each base copies it.
minbase() {
  local tarball=$WORK/minbase-$SUITE.tar
  if [ ! -s "$tarball" ]; then
    log "debootstrap --variant=minbase $SUITE from $mirror"
    rm -rf "$WORK/minbase"
    timeout 900 debootstrap --variant=minbase "$SUITE" "$WORK/minbase" "$mirror" \
      >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed: $(tail -5 "$WORK/debootstrap.log")"
    tar -C "$WORK/minbase" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$WORK/minbase"
  fi
}

# build_base TAG PACKAGES FILES CHANGES...: the minbase root with PACKAGES, and the tree
# FILES copied over it, imported as docker.io/library/TAG with the Dockerfile CHANGES.
build_base() {
  local tag=$1 packages=$2 files=$3 name=${1//[:\/]/-}
  shift 3
  local dir=$WORK/root-$name changes=() change
  minbase
  rm -rf "$dir" && mkdir -p "$dir"
  tar -C "$dir" -xf "$WORK/minbase-$SUITE.tar"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod +x "$dir/usr/sbin/policy-rc.d"
  cp -a "$files/." "$dir/"
  log "building the stand-in $tag: $packages"
  timeout 900 chroot "$dir" /bin/sh -c "export DEBIAN_FRONTEND=noninteractive LC_ALL=C
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages
    apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/sbin/policy-rc.d" \
    >"$WORK/base-$name.log" 2>&1 || die "building $tag failed: $(tail -5 "$WORK/base-$name.log")"
  : >"$dir/etc/resolv.conf"
  for change in "$@"; do changes+=(--change "$change"); done
  tar -C "$dir" -c . | timeout 300 podman import "${changes[@]}" - "docker.io/library/$tag" \
    >>"$WORK/base-$name.log" 2>&1 || die "podman import $tag failed: $(tail -5 "$WORK/base-$name.log")"
  rm -rf "$dir"
}

files=$WORK/files
rm -rf "$files"
PATH_ENV="ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
t_bases=$(now)
if ! have_image docker.io/library/python:3.11-slim; then
  # pip inside the build trusts what the host's pip trusts (this host's TLS proxy's CA among
  # them), and uses its index if one is set; nothing of it is committed.
  cert=${PIP_CERT:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}
  cert=${cert:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
  [ -s "$cert" ] || die "no CA bundle at $cert"
  index=${PIP_INDEX_URL:-$("$PYTHON" -m pip config get global.index-url 2>/dev/null || true)}
  mkdir -p "$files/python/etc/ssl/certs" "$files/python/usr/local/bin"
  cp "$cert" "$files/python/etc/ssl/certs/host-pip-ca.crt"
  {
    printf '[global]\ncert = /etc/ssl/certs/host-pip-ca.crt\n'
    case $index in http://* | https://*) printf 'index-url = %s\n' "$index" ;; esac
  } >"$files/python/etc/pip.conf"
  ln -s /usr/bin/python3 "$files/python/usr/local/bin/python"
  build_base python:3.11-slim "python3 python3-venv python3-pip ca-certificates" "$files/python" \
    "$PATH_ENV" "ENV LANG=C.UTF-8" 'CMD ["python3"]'
fi
if ! have_image docker.io/library/redis:7-alpine; then
  mkdir -p "$files/redis/usr/local/bin" "$files/redis/data"
  cat >"$files/redis/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# As the official image does: redis-server without protected mode (the network is private).
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server "$@" --protected-mode no
fi
exec "$@"
EOF
  chmod +x "$files/redis/usr/local/bin/docker-entrypoint.sh"
  build_base redis:7-alpine "redis-server redis-tools" "$files/redis" \
    "$PATH_ENV" "WORKDIR /data" 'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["redis-server"]'
fi
if ! have_image docker.io/library/postgres:17-alpine; then
  mkdir -p "$files/postgres/usr/local/bin" "$files/postgres/etc/postgresql-common/createcluster.d"
  # Debian's package makes no cluster of its own; the entrypoint makes PGDATA's.
  echo "create_main_cluster = false" >"$files/postgres/etc/postgresql-common/createcluster.d/none.conf"
  cat >"$files/postgres/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# As the official image does: on first start, initialise PGDATA from POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB; then run the command as the postgres user.
set -e
user=${POSTGRES_USER:-postgres}
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pwfile
  chown postgres /tmp/pwfile
  runuser -u postgres -- initdb -U "$user" --pwfile=/tmp/pwfile \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm /tmp/pwfile
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$user\"" \
      | runuser -u postgres -- postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
if [ "$1" = postgres ]; then
  shift
  exec runuser -u postgres -- postgres -c listen_addresses='*' "$@"
fi
exec "$@"
EOF
  chmod +x "$files/postgres/usr/local/bin/docker-entrypoint.sh"
  build_base postgres:17-alpine "postgresql-15" "$files/postgres" \
    "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "ENV PGDATA=/var/lib/postgresql/data" 'ENTRYPOINT ["docker-entrypoint.sh"]' \
    'CMD ["postgres"]' "STOPSIGNAL SIGINT"
fi
rm -rf "$files"
bases_s=$(since "$t_bases")
log "base images ready in $bases_s s"

# --- 3. build, up, healthy ------------------------------------------------------------------
t_build=$(now)
# Every meshgate service shares the image meshgate:local: building it once is enough.
rm -f "$WORK/health.log"
compose build edge >"$WORK/build.log" 2>&1 || die "docker-compose build failed: $(tail -20 "$WORK/build.log")"
build_s=$(since "$t_build")
image_mb=$(podman image inspect --format '{{.Size}}' meshgate:local | awk '{ printf "%.0f", $1 / 1e6 }')
log "image built in $build_s s; meshgate:local is $image_mb MB"

containers() { podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'; }
# podman would schedule the health checks through systemd; without it, we run them as
# Docker would: each container's every 5 s (the compose file's interval) until it is
# healthy, then every 30 s; at most two at a time, since each starts a Python process
# and ten at once on 2 busy cores push them past their 3 s timeout. $WORK/health.log
# has each failed check.
health_loop() {
  local name status
  declare -A last=()
  set +e
  while :; do
    while read -r name status; do
      [ -n "$name" ] || continue
      local every=5
      [[ $status != *"(healthy)"* ]] || every=30
      [ $((SECONDS - ${last[$name]:--999})) -ge "$every" ] || continue
      while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
      last[$name]=$SECONDS
      {
        out=$(timeout 15 podman healthcheck run "$name" 2>&1) \
          || echo "$(date -u +%T) $name: ${out:-failed}" >>"$WORK/health.log"
      } &
    done < <(podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}')
    wait
    sleep 0.5
  done
}
health_loop &
HEALTH_PID=$!

# wait_healthy SECONDS N: N containers of the project, every one of them healthy (a
# one-shot service's container, once it has exited 0, is left out).
wait_healthy() {
  local limit=$1 expected=$2 deadline=$((SECONDS + $1)) states
  while :; do
    states=$(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}' \
      | { if [ -n "$ONESHOT" ]; then grep -vE "^${PROJECT}_${ONESHOT}_[0-9]+ Exited \(0\)"; else cat; fi; })
    if [ "$(grep -c '(healthy)' <<<"$states")" -ge "$expected" ] && ! grep -qv '(healthy)' <<<"$states"; then
      return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "not all healthy within $limit s:"$'\n'"$states"
    sleep 0.5
  done
}

STARTED=1
count=$(compose config --services | grep -cvxF "${ONESHOT:-/}")
t_up=$(now)
# docker-compose gives up on `up` when a dependency reports unhealthy, which a slow
# check on a busy machine can make it do for a moment; a container recovers at its
# next passing check, and `up` again carries on from where it stopped.
up_attempts=1
until compose up -d >"$WORK/up.log" 2>&1; do
  if ! grep -q 'is unhealthy' "$WORK/up.log" || [ "$up_attempts" -ge 3 ]; then
    die "docker-compose up failed: $(tail -20 "$WORK/up.log")"
  fi
  up_attempts=$((up_attempts + 1))
  log "up -d stopped at an unhealthy dependency; again (attempt $up_attempts of 3)"
  sleep 5
done
wait_healthy 240 "$count"
healthy_s=$(since "$t_up")
log "all $count containers healthy $healthy_s s after up -d"

if [ -n "$ONESHOT" ]; then
  info=$(COMPOSE_TIMEOUT=30 compose exec -T redis redis-cli cluster info | tr -d '\r')
  if ! grep -q '^cluster_state:ok' <<<"$info" || ! grep -q '^cluster_size:3' <<<"$info"; then
    die "redis is not a 3-master cluster: $info"
  fi
  log "redis: a cluster of 3 masters, cluster_state:ok"
fi

# --- 4. a key, and the openai SDK -----------------------------------------------------------
# `exec`, not `run`: under podman's API, `run` fails with "link is not supported". Tried
# three times: on 2 busy cores the CLI's first Redis connection can time out.
secret=
for attempt in 1 2 3; do
  secret=$(COMPOSE_TIMEOUT=60 compose exec -T auth meshgate keys create --name "compose-check-$attempt" \
    --rpm 100000 | grep -oE 'sk-mg-[A-Za-z0-9_-]+' | head -1) || true
  [ -z "$secret" ] || break
  sleep 2
done
[ -n "$secret" ] || die "docker-compose exec auth meshgate keys create printed no secret"
export CHECK_KEY=$secret CHECK_BASE_URL=http://127.0.0.1:$PORT/v1
timeout 120 "$PYTHON" scripts/compose_check.py sdk >&2 || die "the openai SDK checks failed"

# --- 5. --scale quota=2 ---------------------------------------------------------------------
# admitted NAME: the Reserve calls that quota replica admitted (its /metrics, inside its container).
admitted() {
  timeout 20 podman exec "$1" python -c '
import urllib.request
body = urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=5).read().decode()
print(int(sum(float(line.split()[-1]) for line in body.splitlines()
              if line.startswith("meshgate_quota_decisions_total{") and "admitted" in line)))'
}
quotas() { containers | grep -E "^${PROJECT}_quota_[0-9]+$" | sort; }

first_quota=$(quotas | head -1)
[ -n "$first_quota" ] || die "no quota container"
# One sequential client runs through the scale-out, so the new replica is seen the moment
# the edge's round robin picks it.
timeout 300 "$PYTHON" scripts/compose_check.py traffic 240 >"$WORK/traffic.out" 2>"$WORK/traffic.err" &
TRAFFIC_PID=$!
t_scale=$(now)
compose up -d --no-deps --no-recreate --scale quota=2 quota >"$WORK/scale.log" 2>&1 \
  || die "docker-compose up --scale quota=2 failed: $(tail -20 "$WORK/scale.log")"
second_quota=$(quotas | grep -vx "$first_quota" | head -1) || true
[ -n "$second_quota" ] || die "--scale quota=2 started no second replica"
wait_healthy 120 $((count + 1))
t_healthy=$(now)
scaled_healthy_s=$(since "$t_scale")
deadline=$((SECONDS + 90))
while :; do
  seen=$(admitted "$second_quota") || die "cannot read $second_quota's /metrics"
  [ "$seen" = 0 ] || break
  kill -0 "$TRAFFIC_PID" 2>/dev/null || die "the client stopped: $(tail -5 "$WORK/traffic.err")"
  [ "$SECONDS" -lt "$deadline" ] || die "$second_quota got no traffic within 90 s of being healthy"
  sleep 0.25
done
traffic_s=$(since "$t_scale")
after_healthy_s=$(since "$t_healthy")
kill "$TRAFFIC_PID" 2>/dev/null || true
wait "$TRAFFIC_PID" 2>/dev/null || true
TRAFFIC_PID=
scale_retried=$(grep -c '^compose_check: ' "$WORK/traffic.err" || true)
log "$second_quota: healthy $scaled_healthy_s s and its first Reserve $traffic_s s after --scale ($after_healthy_s s after healthy)"

# One sequential client, now that both replicas are known: its Reserves should reach both.
sleep 1 # the killed client's last request, if any, settles first
before1=$(admitted "$first_quota") || die "cannot read $first_quota's /metrics"
before2=$(admitted "$second_quota") || die "cannot read $second_quota's /metrics"
read -r sent retried < <(timeout 60 "$PYTHON" scripts/compose_check.py traffic 15 2>"$WORK/split.err") \
  || die "the sequential client failed: $(tail -5 "$WORK/split.err")"
[ -n "$retried" ] || die "the sequential client failed: $(tail -5 "$WORK/split.err")"
after1=$(admitted "$first_quota") || die "cannot read $first_quota's /metrics"
after2=$(admitted "$second_quota") || die "cannot read $second_quota's /metrics"
got1=$((after1 - before1)) got2=$((after2 - before2))
log "one sequential client, $sent requests: $got1 / $got2 Reserves on $first_quota / $second_quota"
# Every request admitted once (twice only if the edge retried a Reserve whose replica failed).
if [ $((got1 + got2)) -lt "$sent" ] || [ $((got1 + got2)) -gt $((sent + 2)) ]; then
  die "$sent requests but $((got1 + got2)) Reserves admitted"
fi
# Round robin over 2 replicas gives about 50/50; under a quarter on either is a fault.
if [ $((got1 * 4)) -lt "$sent" ] || [ $((got2 * 4)) -lt "$sent" ]; then
  die "one sequential client's requests did not spread: $got1 / $got2"
fi

printf 'compose-check: passed\n'
row() { printf '  %-44s %s\n' "$1" "$2"; }
row "base images (cached after the first run):" "$bases_s s"
row "image build (docker-compose build):" "$build_s s"
row "image size (meshgate:local):" "$image_mb MB"
row "up -d until all $count containers healthy:" "$healthy_s s ($up_attempts attempt(s) of up -d)"
row "--scale quota=2 until the replica healthy:" "$scaled_healthy_s s"
row "--scale quota=2 until its first Reserve:" "$traffic_s s ($after_healthy_s s after healthy)"
row "one sequential client over 2 quota replicas:" "$got1 / $got2 of $sent requests"
row "answers other than 200 (the SDK retried):" "$scale_retried during the scale-out, $retried after"
