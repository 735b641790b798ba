#!/usr/bin/env bash
# The whole arcd test suite: the Debian packages it needs, formatting, lints, every cargo test
# target, the API fuzzing stage (scripts/schemathesis.sh: a few minutes, installs schemathesis into
# target/ the first time), then the end-to-end scripts: every executable scripts/e2e/*.sh except
# the helpers listed below.
#
#   scripts/test.sh                        # run everything this user can run
#   scripts/test.sh --beside-default-arcd  # as root: also start `arcd serve` with its built-in
#                                          # defaults (TUN arc0, API :8443, UDP :11010, control
#                                          # socket /var/run/wireguard/arc-apne1.sock) and run the
#                                          # cargo tests, fuzzing and end-to-end stages next to it
#   ARCD_REQUIRE_E2E=1 scripts/test.sh     # fail when anything that needs root was skipped (CI)
#
# As root it installs the missing Debian packages of APT_PACKAGES below and runs everything:
# the cargo tests that need root too (they are marked `#[ignore = "needs root: ..."]`, so a plain
# `cargo test` skips them; this script passes --include-ignored as root, and #[ignore] is kept
# for root-only tests) and the end-to-end scripts (network namespaces, TUN devices, WireGuard).
# As another user it installs nothing (it lists missing packages), skips those parts and ends
# with the list of what it skipped and why.
#
# Tests never use arcd's defaults on the host (TUN `arc0`, ports 8443 and 11010+, socket names in
# /var/run/wireguard), so the suite passes while `arcd serve` runs with them on the same machine;
# --beside-default-arcd checks exactly that (CI uses it). If something already holds a default
# (your own `arcd serve`, say), the tests simply run next to that.
#
# Exit status: non-zero as soon as a stage fails, or at the end if ARCD_REQUIRE_E2E=1 and
# something was skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/procs.sh # stop_pids

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

beside_default_arcd=0
for arg in "$@"; do
    case $arg in
        --beside-default-arcd) beside_default_arcd=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "scripts/test.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done

# arcd reads every ARCD_* environment variable naming a configuration key as configuration, so
# this switch must not reach the tests (they start arcd, in-process and as a child process).
require_e2e=${ARCD_REQUIRE_E2E:-0}
unset ARCD_REQUIRE_E2E
if compgen -e | grep -q '^ARCD_'; then
    echo "note: ARCD_* variables are set ($(compgen -e | grep '^ARCD_' | tr '\n' ' ')); arcd reads them as configuration, so some tests may fail"
fi

is_root=0
[[ ${EUID} -eq 0 ]] && is_root=1
skipped=() # "what: why", printed at the end

banner() {
    printf '\n==== %s ====\n' "$*"
}

# Everything the test suite and the end-to-end stages need from Debian, one package a line.
APT_PACKAGES=(
    build-essential # C toolchain for the bundled SQLite and ring
    pkg-config      # finding system libraries while building
    ca-certificates # HTTPS downloads (crates, PyPI, npm)
    jq              # API checks in the end-to-end scripts
    curl            # API checks in the end-to-end scripts
    iproute2        # network namespaces, veth links, routes (ip)
    nftables        # egress masquerade tests (egress.masquerade)
    wireguard-tools # wg: device peers and `wg show` against arcd's control sockets
    wireguard-go    # userspace WireGuard device peers in the end-to-end scripts
    iputils-ping    # reachability through the tunnel
    iperf3          # throughput through the tunnel
    bind9-dnsutils  # dig: the devices' side of the DNS service test
    netcat-openbsd  # nc: the devices' side of the Harvest TCP/UDP test
    python3         # the Beam destination of the services test (scripts/e2e/beam-sink.py)
    python3-venv    # the virtualenv scripts/schemathesis.sh installs schemathesis (PyPI) into
    ruby            # `ruby -c Vagrantfile` and the checks of scripts/e2e/vagrantfile.sh
    chromium        # the management page's browser test (scripts/e2e/web.sh)
    prometheus      # promtool: checks a real metrics scrape in scripts/e2e/netns.sh (stage 6i)
    systemd         # systemd-analyze verify, sysusers, tmpfiles of the package (scripts/e2e/package.sh; nothing is started)
    postgresql-15   # the store's second engine: scripts/test-postgres.sh starts a throw-away server (initdb in a temp dir); multinode.sh and pg-failover.sh run servers and a streaming standby in namespaces
    procps          # ps --ppid: the PostgreSQL servers' children, killed by PID (scripts/e2e/multinode.sh, pg-failover.sh)
    mosquitto       # the MQTT broker Funnel delivers to (tests/funnel_funk.rs, scripts/e2e/funnel.sh)
    mosquitto-clients # mosquitto_sub, mosquitto_passwd: the broker's side of scripts/e2e/funnel.sh
    acl             # getfacl: checks the /run/wireguard ACL of the package's tmpfiles.d rule (package.sh)
    python3-jwt     # PyJWT: the verifier outside arcd of Endorse's tokens (scripts/e2e/lib/endorse-verify.py)
    python3-cryptography # PyJWT's RS256 (RSA) support
)
# Node.js and npm (the page test; npm installs only playwright-core from
# tests/web/package-lock.json and never downloads a browser) only when missing: a machine with
# NodeSource's nodejs (which bundles npm) cannot also take Debian's npm package (they conflict).
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)

banner "stage 0/5: Debian packages"
if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "no dpkg-query (not Debian?): not checking packages; needed: ${APT_PACKAGES[*]}"
else
    missing=()
    for package in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("${package}")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "all ${#APT_PACKAGES[@]} packages installed"
    elif ((is_root)); then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    else
        echo "missing Debian packages (not root: not installing them): ${missing[*]}"
        echo "  install with: sudo apt-get install -y --no-install-recommends ${missing[*]}"
    fi
fi

banner "stage 1/5: cargo fmt --check"
cargo fmt --all --check

banner "stage 2/5: cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

# --beside-default-arcd: an `arcd serve` with its built-in defaults in a temporary directory,
# stopped by PID when this script exits.
neighbour=()
neighbour_dir=""
stop_neighbour() {
    ((${#neighbour[@]})) && stop_pids "${neighbour[@]}"
    [[ -n ${neighbour_dir} ]] && rm -rf "${neighbour_dir}"
    return 0
}
trap stop_neighbour EXIT

start_default_arcd() {
    if ! ((is_root)); then
        skipped+=("--beside-default-arcd: needs root (the default arcd creates the TUN device arc0)")
        return
    fi
    if ip link show arc0 >/dev/null 2>&1 || ss -Htln 'sport = :8443' | grep -q . ||
        ss -Huln 'sport = :11010' | grep -q .; then
        echo "arcd's defaults are already in use on this machine (arc0, TCP 8443 or UDP 11010); the tests run next to that"
        return
    fi
    cargo build --locked --bin arcd
    neighbour_dir=$(mktemp -d /tmp/arcd-default-XXXXXX)
    # Built-in defaults only: no ARCD_* variable, no configuration file.
    local arcd_bin=${PWD}/target/debug/arcd variable
    (
        for variable in $(compgen -e | grep '^ARCD_' || true); do unset "${variable}"; done
        cd "${neighbour_dir}"
        exec "${arcd_bin}" serve >stdout.log 2>stderr.log
    ) &
    neighbour=("$!:arcd")
    local i
    for ((i = 0; i < 600; i++)); do
        if curl -skf -o /dev/null https://127.0.0.1:8443/openapi.yaml && ip link show arc0 >/dev/null 2>&1; then
            echo "arcd with its defaults runs beside the tests (PID ${neighbour[0]%%:*}, data in ${neighbour_dir}):"
            ip -br link show arc0
            ss -Hltnp 'sport = :8443' || true
            ss -Hulnp 'sport = :11010' || true
            ls /var/run/wireguard/arc-apne1.sock || echo "(no control socket /var/run/wireguard/arc-apne1.sock: see ${neighbour_dir}/stderr.log)"
            return
        fi
        if ! kill -0 "${neighbour[0]%%:*}" 2>/dev/null; then
            cat "${neighbour_dir}/stderr.log" >&2
            echo "arcd with its defaults did not start" >&2
            exit 1
        fi
        sleep 0.1
    done
    cat "${neighbour_dir}/stderr.log" >&2
    echo "arcd with its defaults did not answer on https://127.0.0.1:8443 within 60 s" >&2
    exit 1
}

if ((beside_default_arcd)); then
    banner "beside the default arcd: starting \`arcd serve\` with its built-in defaults"
    start_default_arcd
fi

if ((is_root)); then
    banner "stage 3/5: cargo test --all-targets --locked -- --include-ignored (root: root-only tests included)"
    cargo test --all-targets --locked -- --include-ignored
else
    banner "stage 3/5: cargo test --all-targets --locked (not root: tests that need root are skipped)"
    cargo test --all-targets --locked
    # The skipped ones, by name (listing runs no test).
    while IFS= read -r name; do
        skipped+=("cargo test ${name%: test}: needs root (#[ignore = \"needs root: ...\"])")
    done < <(cargo test --tests --locked -q -- --ignored --list 2>/dev/null | grep ': test$' || true)
fi

banner "stage 3b/5: the store on PostgreSQL (scripts/test-postgres.sh: a throw-away PostgreSQL 15)"
scripts/test-postgres.sh

banner "stage 4/5: API fuzzing against the OpenAPI document (scripts/schemathesis.sh)"
scripts/schemathesis.sh

banner "stage 5/5: end-to-end scripts (scripts/e2e/*.sh)"
e2e_dir=scripts/e2e
# Helpers the end-to-end scripts call, not tests themselves. Better: keep helpers in
# scripts/e2e/lib/, which the glob below does not reach.
e2e_helpers=(render-wg-conf.sh)

shopt -s nullglob
scripts=()
for script in "${e2e_dir}"/*.sh; do
    if [[ " ${e2e_helpers[*]} " == *" $(basename "${script}") "* ]]; then
        continue
    elif [[ -x ${script} ]]; then
        scripts+=("${script}")
    else
        echo "note: ${script} is not executable; not run"
    fi
done
shopt -u nullglob

if [[ ${#scripts[@]} -eq 0 ]]; then
    echo "no executable end-to-end scripts in ${e2e_dir}/ yet"
fi
for script in "${scripts[@]}"; do
    if ! ((is_root)); then
        skipped+=("${script}: needs root (network namespaces, TUN, WireGuard)")
        continue
    fi
    banner "e2e: ${script}"
    "${script}"
done

if [[ ${#skipped[@]} -eq 0 ]]; then
    banner "all stages passed, nothing skipped"
    exit 0
fi
banner "passed, but ${#skipped[@]} part(s) SKIPPED; run as root to include them"
printf '  skipped: %s\n' "${skipped[@]}"
if [[ ${require_e2e} == 1 ]]; then
    echo "ARCD_REQUIRE_E2E=1: anything skipped is a failure" >&2
    exit 1
fi
