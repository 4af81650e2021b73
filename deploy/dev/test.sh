#!/usr/bin/env bash
# The one test command (README, .ci/run): runs every test against real brokers.
#
# Starts what is missing on loopback and stops only what it started:
#   - a Kafka-protocol broker on 127.0.0.1:9092: tansu (installed with `cargo install` when
#     absent; the first build takes ~12 minutes on 2 cores), in-memory storage;
#   - RabbitMQ on 127.0.0.1:5672 (guest/guest): Debian's rabbitmq-server when absent;
#   - PostgreSQL on 127.0.0.1:5432 (the shared dedupe store's tests): Debian's postgresql when
#     absent, with a database `test` and the password `postgres` for the role `postgres`;
#   - promtool (checks Prometheus config, alert rules and /metrics): Debian's prometheus package
#     when absent (only the tool is used; the server the package may start is stopped);
#   - cargo-audit (`cargo install`, ~4 minutes the first time), which checks Cargo.lock against
#     the RustSec advisory database: fetched from GitHub when it answers, else the snapshot in
#     deploy/dev/advisory-db.tar.gz (its date is printed; refresh it as advisory-db.snapshot says).
#     Advisories that do not apply are listed, with reasons, in .cargo/audit.toml.
# Then waits until both answer, checks formatting (`cargo fmt --check`) and lints (`cargo clippy
# --all-targets -D warnings`, with the `[lints]` of Cargo.toml), and runs `cargo test`. Tests
# never skip a missing broker: they fail. With arguments, only `cargo test <arguments>` runs.
set -euo pipefail

cd "$(dirname "$0")/../.."
TANSU_VERSION=0.6.0
CARGO_AUDIT_VERSION=0.22.2
KAFKA_PORT=9092
AMQP_PORT=5672
PG_PORT=5432
LOG_DIR=${ENTITY_BRIDGE_TEST_LOGS:-${TMPDIR:-/tmp}/entity-bridge-test}
mkdir -p "$LOG_DIR"
export PATH="$HOME/.cargo/bin:$PATH"

tansu_pid=""
started_rabbitmq=""
started_postgres=""

say() { printf '[test.sh] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  local name=$1 port=$2 seconds=$3 i
  for ((i = 0; i < seconds; i++)); do
    port_open "$port" && { say "$name answers on 127.0.0.1:$port"; return 0; }
    sleep 1
  done
  say "$name did not open 127.0.0.1:$port within ${seconds}s; see $LOG_DIR"
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

cleanup() {
  if [ -n "$tansu_pid" ]; then
    say "stopping tansu (pid $tansu_pid)"
    kill "$tansu_pid" 2>/dev/null || true
    wait "$tansu_pid" 2>/dev/null || true
  fi
  if [ -n "$started_postgres" ]; then
    say "stopping the PostgreSQL this script started"
    # shellcheck disable=SC2086 # "<version> <cluster>" are two arguments
    as_root pg_ctlcluster --skip-systemctl-redirect $started_postgres stop >/dev/null 2>&1 || true
  fi
  if [ -n "$started_rabbitmq" ]; then
    say "stopping the RabbitMQ this script started"
    as_root rabbitmqctl stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

ensure_kafka() {
  if port_open "$KAFKA_PORT"; then
    say "using the Kafka-protocol broker already on 127.0.0.1:$KAFKA_PORT"
    return
  fi
  if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    say "installing tansu $TANSU_VERSION (cargo install; ~12 minutes the first time)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
      >"$LOG_DIR/tansu-install.log" 2>&1 || { tail -40 "$LOG_DIR/tansu-install.log"; exit 1; }
  fi
  say "starting tansu on 127.0.0.1:$KAFKA_PORT (memory storage)"
  tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$LOG_DIR/tansu.log" 2>&1 &
  tansu_pid=$!
  wait_port tansu "$KAFKA_PORT" 60
}

ensure_rabbitmq() {
  if port_open "$AMQP_PORT"; then
    say "using the RabbitMQ already on 127.0.0.1:$AMQP_PORT"
    return
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    say "installing rabbitmq-server (Debian package)"
    as_root apt-get update -qq >"$LOG_DIR/apt.log" 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server \
      >>"$LOG_DIR/apt.log" 2>&1 || { tail -40 "$LOG_DIR/apt.log"; exit 1; }
  fi
  say "starting RabbitMQ"
  as_root env RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached \
    >"$LOG_DIR/rabbitmq.log" 2>&1
  started_rabbitmq=1
  wait_port RabbitMQ "$AMQP_PORT" 120
}

ensure_postgres() {
  if port_open "$PG_PORT"; then
    say "using the PostgreSQL already on 127.0.0.1:$PG_PORT"
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "installing postgresql (Debian package)"
    as_root apt-get update -qq >"$LOG_DIR/apt.log" 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
      >>"$LOG_DIR/apt.log" 2>&1 || { tail -40 "$LOG_DIR/apt.log"; exit 1; }
  fi
  local cluster
  cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR == 1 { print $1 " " $2 }')
  if [ -z "$cluster" ]; then
    as_root pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -1)" main >"$LOG_DIR/postgres.log" 2>&1
    cluster=$(pg_lsclusters -h | awk 'NR == 1 { print $1 " " $2 }')
  fi
  say "starting PostgreSQL ($cluster)"
  # shellcheck disable=SC2086 # "<version> <cluster>" are two arguments
  as_root pg_ctlcluster --skip-systemctl-redirect $cluster start >>"$LOG_DIR/postgres.log" 2>&1
  started_postgres=$cluster
  wait_port PostgreSQL "$PG_PORT" 60
  as_root su postgres -c "psql -q -c \"ALTER ROLE postgres PASSWORD 'postgres'\"" >>"$LOG_DIR/postgres.log" 2>&1
  as_root su postgres -c "createdb test" >>"$LOG_DIR/postgres.log" 2>&1 || true
}

ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    say "using $(promtool --version 2>&1 | head -1)"
    return
  fi
  say "installing promtool (Debian package prometheus)"
  as_root apt-get update -qq >"$LOG_DIR/apt.log" 2>&1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >>"$LOG_DIR/apt.log" 2>&1 || { tail -40 "$LOG_DIR/apt.log"; exit 1; }
  # The package enables a Prometheus server on :9090; the tests need only promtool.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if pgrep -x prometheus >/dev/null 2>&1; then
    as_root service prometheus stop >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 || { say "promtool still missing after install"; exit 1; }
}

# cargo audit against the live advisory database when GitHub answers, else the snapshot.
run_audit() {
  if ! cargo audit --version 2>/dev/null | grep -q "$CARGO_AUDIT_VERSION"; then
    say "installing cargo-audit $CARGO_AUDIT_VERSION (cargo install; ~4 minutes the first time)"
    cargo install cargo-audit --version "$CARGO_AUDIT_VERSION" --locked \
      >"$LOG_DIR/cargo-audit-install.log" 2>&1 || { tail -40 "$LOG_DIR/cargo-audit-install.log"; exit 1; }
  fi
  local db="$LOG_DIR/advisory-db"
  if timeout 15 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
    say "checking dependencies against the live RustSec advisory database (cargo audit)"
    rm -rf "$db"
    cargo audit --db "$db"
  else
    local date
    date=$(sed -n 's/^date=//p' deploy/dev/advisory-db.snapshot)
    say "GitHub unreachable: checking dependencies against the RustSec snapshot of $date (cargo audit)"
    rm -rf "$db" && mkdir -p "$db"
    tar xzf deploy/dev/advisory-db.tar.gz -C "$db"
    # cargo audit reads a database from a git repository.
    git -C "$db" init -q
    git -C "$db" add -A
    git -C "$db" -c user.name=snapshot -c user.email=snapshot@localhost commit -q -m snapshot
    cargo audit --db "$db" --no-fetch
  fi
}

ensure_kafka
ensure_rabbitmq
ensure_postgres
ensure_promtool

export ENTITY_BRIDGE_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
export ENTITY_BRIDGE_TEST_AMQP="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
export ENTITY_BRIDGE_TEST_POSTGRES="postgres://postgres:postgres@127.0.0.1:$PG_PORT/test"
if [ "$#" -eq 0 ]; then
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    say "installing rustfmt and clippy (rustup components)"
    rustup component add rustfmt clippy >"$LOG_DIR/rustup.log" 2>&1 || { tail -20 "$LOG_DIR/rustup.log"; exit 1; }
  fi
  say "checking formatting (cargo fmt --check)"
  cargo fmt --all -- --check
  say "checking lints (cargo clippy --all-targets -- -D warnings)"
  cargo clippy --locked --all-targets -- -D warnings
  run_audit
  # Doc tests first, so the run closes on the summary of the integration suite.
  say "running cargo test"
  cargo test --locked --doc
  cargo test --locked --lib --bins --tests
else
  say "running cargo test $*"
  cargo test --locked "$@"
fi
