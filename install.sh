#!/usr/bin/env bash
# catdog-agent installer.
#
#   ./install.sh --dev     development checkout: .venv with the package (editable) and test tools,
#                          plus mosquitto from apt for the demo and the tests. Idempotent and quick
#                          when nothing changed.
#
# The device install (sudo ./install.sh on a Pi or Jetson: system user, /opt venv, config, systemd
# unit) comes in a later release; its steps will live in the install_device function.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
STAMP="$VENV/.catdog-dev-stamp"
MIN_PYTHON="3.9"

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
usage: ./install.sh --dev [--python PYTHON]

  --dev            set up this checkout for development: .venv (editable package + test extras)
                   and mosquitto (apt) for the demo and tests
  --python PYTHON  interpreter for the venv (default: python3)
  -h, --help       this help
EOF
}

# Run a command as root: directly when we are root, through sudo when it works without a prompt
# or when a terminal can answer it; otherwise return 1 so the caller can say what to do by hand.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
        sudo "$@"
    else
        return 1
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
        || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null 2>&1 \
             && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

ensure_mosquitto() {
    have_mosquitto && return 0
    if apt_install mosquitto; then
        # The demo and the tests start their own broker on a free port; the system service is not needed.
        log "mosquitto installed"
        return 0
    fi
    die "mosquitto is missing and cannot be installed here (need root or sudo with apt-get).
       Install it by hand, then run this again:  sudo apt-get install mosquitto"
}

check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= $MIN_PYTHON"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || die "$("$PYTHON" -V 2>&1) is too old; catdog-agent needs Python >= $MIN_PYTHON"
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$VENV"
    log "creating $VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian and Ubuntu strip ensurepip out of python3: it lives in python3-venv.
        rm -rf "$VENV"
        local pyver
        pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install python3-venv "python${pyver}-venv" || apt_install python3-venv \
            || die "python3 -m venv failed; install python3-venv (sudo apt-get install python3-venv)"
        "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed"
    fi
}

# Fingerprint of what decides the venv's contents; pip runs only when it changed.
dev_fingerprint() {
    { cat "$HERE/pyproject.toml"; "$VENV/bin/python" -V; } | sha256sum | cut -d' ' -f1
}

install_dev() {
    check_python
    ensure_mosquitto
    ensure_venv
    local want
    want="$(dev_fingerprint)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c 'import agent' 2>/dev/null; then
        log "development environment is up to date ($VENV)"
        return 0
    fi
    log "installing catdog-agent (editable) with test extras into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "${HERE}[test]"
    echo "$want" > "$STAMP"
    log "done: try  .venv/bin/catdog-agent demo   and   .venv/bin/pytest"
}

install_device() {
    die "the device install (Pi/Jetson, systemd) is not in this version yet; use --dev for a checkout"
}

main() {
    local mode=device
    PYTHON=python3
    while [ $# -gt 0 ]; do
        case "$1" in
            --dev) mode=dev ;;
            --python) shift; PYTHON="${1:?--python needs a value}" ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    case "$mode" in
        dev) install_dev ;;
        device) install_device ;;
    esac
}

main "$@"
