#!/usr/bin/env bash
# build-arcd.sh — provide the arcd binary for the rendezvous host: build it from the source tree
# with cargo (`cargo build --release --locked`), or check a prebuilt one; optionally install it.
#
#   build-arcd.sh [options]
#
# Options:
#   --src DIR          the arcd source tree (default: this repository)
#   --target-dir DIR   cargo's target directory (default: DIR/target); the VM builds outside the
#                      synced folder so `vagrant rsync` (--delete) does not wipe the build
#   --prebuilt FILE    do not build: use this arcd binary (checked with `arcd version`)
#   --install PATH     copy the binary to PATH (mode 0755, replaced atomically, so a running arcd
#                      is not disturbed); printed instead of the build output's path
#   --install-toolchain  when cargo is missing, install Debian's build-essential, pkg-config,
#                      curl and ca-certificates and the stable Rust toolchain with rustup
#                      (minimal profile, in /opt/arcd-rust). Implied by --install-packages.
#   --install-packages same as PROVISION_INSTALL=1 (see lib.sh)
#   -h, --help         this text
#
# Output: the path of the arcd binary to use, on standard output (cargo's output goes to stderr).
# Used by scripts/e2e/netns.sh (stage 1) and by the rendezvous VM of the Vagrantfile.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TOOLCHAIN_DIR=/opt/arcd-rust
src=$REPO_DIR
target_dir=""
prebuilt=""
install_to=""
toolchain=0
while (($#)); do
    case $1 in
        --src) src=${2:?--src needs a value}; shift ;;
        --target-dir) target_dir=${2:?--target-dir needs a value}; shift ;;
        --prebuilt) prebuilt=${2:?--prebuilt needs a value}; shift ;;
        --install) install_to=${2:?--install needs a value}; shift ;;
        --install-toolchain) toolchain=1 ;;
        --install-packages) PROVISION_INSTALL=1 ;;
        -h | --help) print_usage "$0"; exit 0 ;;
        *) usage_error "unknown argument $1" ;;
    esac
    shift
done
[[ $PROVISION_INSTALL == 1 ]] && toolchain=1
[[ -z $install_to || $install_to == /* ]] || usage_error "--install: give an absolute path"
[[ -n $prebuilt ]] || [[ -f $src/Cargo.toml || $PROVISION_VALIDATE_ONLY == 1 ]] ||
    usage_error "--src: no Cargo.toml in $src"
if [[ -n $prebuilt ]]; then
    plan="use the prebuilt $prebuilt"
else
    plan="cargo build $src${target_dir:+ into $target_dir}"
fi
validate_only_exit "$plan${install_to:+, install to $install_to}"

arcd_env_unset
if [[ -n $prebuilt ]]; then
    bin=$(realpath -m -- "$prebuilt")
    [[ -f $bin && -x $bin ]] || die "--prebuilt: no executable file at $bin"
else
    # A toolchain this script installed lives in $TOOLCHAIN_DIR (whatever HOME sudo leaves).
    use_toolchain_dir() {
        export CARGO_HOME=$TOOLCHAIN_DIR/cargo RUSTUP_HOME=$TOOLCHAIN_DIR/rustup
        PATH=$CARGO_HOME/bin:$PATH
    }
    if ! command -v cargo >/dev/null 2>&1; then
        if [[ -x $TOOLCHAIN_DIR/cargo/bin/cargo ]]; then
            use_toolchain_dir
        elif [[ -n ${HOME:-} && -x $HOME/.cargo/bin/cargo ]]; then
            PATH=$HOME/.cargo/bin:$PATH
        fi
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        ((toolchain)) || die "cargo is missing: install Rust (https://rustup.rs) or pass --install-toolchain"
        PROVISION_INSTALL=1
        need_tools cc:build-essential pkg-config:pkg-config curl:curl update-ca-certificates:ca-certificates
        log "installing the stable Rust toolchain with rustup (minimal profile) in $TOOLCHAIN_DIR"
        use_toolchain_dir
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --no-modify-path --profile minimal --default-toolchain stable >&2 ||
            die "rustup installation failed"
    fi
    command -v cargo >/dev/null || die "cargo is still missing"
    [[ -f $src/Cargo.toml ]] || die "no Cargo.toml in $src"
    args=(build --release --locked --manifest-path "$src/Cargo.toml")
    [[ -n $target_dir ]] && args+=(--target-dir "$target_dir")
    log "cargo ${args[*]}"
    env "${ARCD_ENV_UNSET[@]}" cargo "${args[@]}" >&2 || die "cargo build failed"
    bin=${target_dir:-$src/target}/release/arcd
    [[ -x $bin ]] || die "cargo built no $bin"
fi

version=$(env "${ARCD_ENV_UNSET[@]}" "$bin" version 2>&1) || die "$bin does not run: $version"
log "arcd: $bin ($version)"

if [[ -n $install_to ]]; then
    mkdir -p "$(dirname "$install_to")"
    install -m 0755 "$bin" "$install_to.new.$$"
    mv -f "$install_to.new.$$" "$install_to"
    log "installed $install_to"
    bin=$install_to
fi
printf '%s\n' "$bin"
