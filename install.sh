#!/usr/bin/env bash
# catdog-agent installer.
#
#   sudo ./install.sh      device install on a Raspberry Pi (Pi OS bullseye/bookworm, 32/64-bit), an NVIDIA
#                          Jetson (JetPack 6) or another Debian/Ubuntu machine: apt packages, the system user
#                          catdog-agent, a venv in /opt/catdog-agent, /etc/catdog-agent/agent.yaml (never
#                          overwritten), the systemd unit (enabled). Idempotent; run it again to upgrade.
#   ./install.sh --dev     development checkout: .venv with the package (editable) and test tools,
#                          plus mosquitto from apt for the demo and the tests. Idempotent and quick
#                          when nothing changed.
#
# See usage() for --uninstall, --purge, --dry-run, --root DIR, --no-system and --detect.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
STAMP="$VENV/.catdog-dev-stamp"
MIN_PYTHON="3.9"

# Device layout. Every path is taken under $ROOT ("" = this system; --root DIR for a directory tree).
APP=catdog-agent
PREFIX=/opt/catdog-agent
DEVICE_VENV=$PREFIX/venv
CONSTRAINTS=$PREFIX/constraints.txt
EXAMPLES=$PREFIX/examples
FINGERPRINT=$PREFIX/.installed-fingerprint
CONF_DIR=/etc/catdog-agent
CONF=$CONF_DIR/agent.yaml
STATE_DIR=/var/lib/catdog-agent
CACHE_DIR=/var/cache/catdog-agent
UNIT=/etc/systemd/system/catdog-agent.service
DROPIN_DIR=$UNIT.d
DROPIN=$DROPIN_DIR/jetson.conf
SYSUSERS=/etc/sysusers.d/catdog-agent.conf
LINK=/usr/local/bin/catdog-agent

ROOT=""
DRY_RUN=0
NO_SYSTEM=0

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
usage: sudo ./install.sh [--board pi|jetson|other] [--arch ARCH] [--dry-run]
       sudo ./install.sh --uninstall [--purge] [--dry-run]
       ./install.sh --detect
       ./install.sh --dev [--python PYTHON]

  (no mode)        install or upgrade on this device (needs root): apt packages, user catdog-agent (group
                   video), venv /opt/catdog-agent/venv, /etc/catdog-agent/agent.yaml if absent, the systemd
                   unit (enabled, restarted if it was running). Running it again changes nothing.
  --uninstall      remove the unit, the venv, the command and the user file; keep /etc/catdog-agent,
                   /var/lib/catdog-agent and the user
  --purge          with --uninstall: also remove the config, the state, the cache and the user
  --dry-run        print every action instead of doing it
  --detect         print what the installer detects (board, model, userland arch, L4T) and exit
  --board NAME     skip board detection: pi, jetson or other
  --arch ARCH      userland architecture (default: dpkg --print-architecture)
  --root DIR       act on the directory tree DIR instead of / (for tests and images); needs --no-system
  --no-system      print the commands that act on the running system (apt-get, systemd-sysusers, usermod,
                   python3 -m venv, pip, systemctl) instead of running them; files are still written
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
    # A Pi's first boot often has unattended-upgrades holding the dpkg lock: wait for it.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
    as_root "${apt[@]}" install -y --no-install-recommends "$@" >/dev/null 2>&1 \
        || { as_root "${apt[@]}" update >/dev/null 2>&1 \
             && as_root "${apt[@]}" install -y --no-install-recommends "$@" >/dev/null; }
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

# ---------------------------------------------------------------------------------------------------
# Device install: every change goes through one of three helpers, so --dry-run and --no-system are
# honoured everywhere.
#   fs_do CMD...     changes files under $ROOT             (printed under --dry-run)
#   sys_do CMD...    acts on the running system            (printed under --dry-run and --no-system)
#   sys_query        true when the running system may be asked (not under --no-system)

quote() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }

# Both die when the command fails: their callers often run inside `cmd && x=1` lists, where bash
# ignores `set -e` for the whole function, so a failed pip would otherwise be reported as installed.
fs_do() {
    if [ "$DRY_RUN" = 1 ]; then log "[dry-run] would run: $(quote "$@")"; else "$@" || die "failed: $(quote "$@")"; fi
}

sys_do() {
    if [ "$DRY_RUN" = 1 ]; then
        log "[dry-run] would run: $(quote "$@")"
    elif [ "$NO_SYSTEM" = 1 ]; then
        log "[no-system] would run: $(quote "$@")"
    else
        log "run: $(quote "$@")"
        "$@" || die "failed: $(quote "$@")"
    fi
}

sys_try() {  # like sys_do, for steps whose failure is expected and harmless (uninstalling what is gone)
    if [ "$DRY_RUN" = 1 ] || [ "$NO_SYSTEM" = 1 ]; then
        sys_do "$@"
    else
        log "run: $(quote "$@")"
        "$@" || log "(that failed; continuing)"
    fi
}

sys_query() { [ "$NO_SYSTEM" = 0 ]; }

systemd_running() { sys_query && [ -d /run/systemd/system ]; }

# Board detection reads the device tree and L4T's release file under $ROOT. Device-tree strings end
# in NUL (the model) or are NUL-separated (compatible): bash must not see the NULs.
detect_board() {
    local compatible="" release
    MODEL=""
    [ -r "$ROOT/proc/device-tree/model" ] && MODEL="$(tr -d '\0' < "$ROOT/proc/device-tree/model")"
    [ -r "$ROOT/proc/device-tree/compatible" ] && compatible="$(tr '\0' ' ' < "$ROOT/proc/device-tree/compatible")"
    release="$(head -n 1 "$ROOT/etc/nv_tegra_release" 2>/dev/null || true)"
    # "# R36 (release), REVISION: 3.0, GCID: ..." -> 36.3.0
    L4T="$(printf '%s\n' "$release" | sed -n 's/^# R\([0-9][0-9]*\) (release), REVISION: \([0-9][0-9.]*\).*/\1.\2/p')"
    if [ -z "$MODEL" ] && [ -r "$ROOT/sys/class/dmi/id/product_name" ]; then
        MODEL="$(head -n 1 "$ROOT/sys/class/dmi/id/product_name")"
    fi
    if [ -n "${BOARD:-}" ]; then
        :
    elif [ -n "$release" ] || [[ " $compatible" == *" nvidia,tegra"* ]]; then
        BOARD=jetson
    elif [[ "$MODEL" == "Raspberry Pi"* ]] || [[ " $compatible" == *" raspberrypi,"* ]]; then
        BOARD=pi
    else
        BOARD=other
    fi
    if [ -z "${ARCH:-}" ]; then
        # Not uname -m: 32-bit Pi OS runs a 64-bit kernel (aarch64) under an armhf userland.
        if command -v dpkg >/dev/null 2>&1; then
            ARCH="$(dpkg --print-architecture)"
        else
            case "$(uname -m)" in
                x86_64) ARCH=amd64 ;; aarch64) ARCH=arm64 ;; armv7l|armv6l) ARCH=armhf ;; *) ARCH="$(uname -m)" ;;
            esac
        fi
    fi
}

print_detection() {
    printf 'board=%s\nmodel=%s\narch=%s\nl4t=%s\n' "$BOARD" "$MODEL" "$ARCH" "$L4T"
}

# What each board gets. Pi: picamera2 and OpenCV from apt (pip's lack libcamera and pull numpy 2);
# Jetson: JetPack's OpenCV (GStreamer, nvarguscamerasrc), never Ubuntu's or pip's; both see those
# apt modules through --system-site-packages. Elsewhere: pip's OpenCV (the [opencv] extra).
apt_packages() {
    local packages=(python3-venv)
    case "$BOARD" in
        pi) packages+=(python3-picamera2 python3-numpy python3-opencv) ;;
        jetson)
            packages+=(python3-numpy)
            # JetPack's OpenCV (GStreamer inside) comes from NVIDIA's repo; add it only when cv2 is missing.
            sys_query && /usr/bin/python3 -c 'import cv2' 2>/dev/null || packages+=(libopencv-python) ;;
    esac
    # piwheels' armv7 numpy wheels link against the system OpenBLAS.
    [ "$ARCH" = armhf ] && packages+=(libopenblas0)
    printf '%s\n' "${packages[@]}"
}

pip_extra() { case "$BOARD" in pi|jetson) echo "" ;; *) echo "[opencv]" ;; esac; }

system_site_packages() { case "$BOARD" in pi|jetson) echo 1 ;; *) echo 0 ;; esac; }

write_constraints() {
    {
        echo "# catdog-agent: pip constraints for board=$BOARD arch=$ARCH (written by install.sh)."
        case "$BOARD" in
            pi|jetson)
                echo "# The camera stack from apt (picamera2, simplejpeg, cv2) is built against numpy 1.x:"
                echo "# a numpy 2 wheel in the venv breaks it (numpy.dtype size changed)."
                echo "numpy<2"
                echo "# OpenCV comes from apt (Pi) or JetPack (Jetson, with GStreamer): a pip OpenCV would shadow it"
                echo "# (and opencv-python-headless>=4.12 pulls numpy 2). These lines make pip fail instead."
                echo "opencv-python<0"
                echo "opencv-python-headless<0"
                echo "opencv-contrib-python<0"
                echo "opencv-contrib-python-headless<0"
                ;;
            *) echo "# No constraints on this board." ;;
        esac
    } > "$1"
}

# The example that becomes /etc/catdog-agent/agent.yaml on a first install.
config_example() {
    local name=minimal.yaml
    case "$BOARD" in
        pi) [ -f "$HERE/config/pi-camera.yaml" ] && name=pi-camera.yaml ;;
        jetson) [ -f "$HERE/config/jetson-csi.yaml" ] && name=jetson-csi.yaml ;;
    esac
    echo "$HERE/config/$name"
}

# ---- file helpers (paths without $ROOT; they return 0 when they changed something) ----

mode_of() { stat -c '%a' "$1"; }

put_file() {  # SRC DEST MODE: copy when missing or different
    local src="$1" dest="$ROOT$2" mode="$3"
    if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(mode_of "$dest")" = "${mode#0}" ]; then
        return 1
    fi
    fs_do install -D -m "$mode" "$src" "$dest"
    [ "$DRY_RUN" = 1 ] || log "installed $2"
}

put_file_once() {  # SRC DEST MODE: copy only when missing (local edits are never overwritten)
    local dest="$ROOT$2"
    if [ -e "$dest" ]; then
        log "kept $2 (yours; the example is $EXAMPLES/$(basename "$1"))"
        return 1
    fi
    put_file "$@"
}

make_dir() {  # DIR MODE
    local dir="$ROOT$1" mode="$2"
    if [ -d "$dir" ]; then
        [ "$(mode_of "$dir")" = "${mode#0}" ] && return 1
        fs_do chmod "$mode" "$dir"
    else
        fs_do install -d -m "$mode" "$dir"
    fi
    [ "$DRY_RUN" = 1 ] || log "made $1 (mode $mode)"
}

set_owner() {  # OWNER:GROUP PATH: the user exists only on the running system
    local owner="$1" path="$2"
    if sys_query && [ -e "$ROOT$path" ] && [ "$(stat -c '%U:%G' "$ROOT$path")" = "$owner" ]; then
        return 0
    fi
    sys_do chown "$owner" "$ROOT$path"
}

remove() {  # PATH...: remove what exists
    local path
    for path in "$@"; do
        if [ -e "$ROOT$path" ] || [ -L "$ROOT$path" ]; then
            fs_do rm -rf "$ROOT$path"
            [ "$DRY_RUN" = 1 ] || log "removed $path"
        fi
    done
}

# ---- install steps ----

require_root() {
    if [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
        die "the device install changes the system: run it as root (sudo ./install.sh), or see what it would do with --dry-run"
    fi
}

check_device_python() {
    if [ "$BOARD" = jetson ] && [ -n "$L4T" ] && [ "${L4T%%.*}" -lt 35 ]; then
        die "L4T $L4T (JetPack 4) is not supported: its Python 3.6 is too old for catdog-agent (Python >= $MIN_PYTHON); use JetPack 6"
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= $MIN_PYTHON"
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
        local hint=""
        [ "$BOARD" = jetson ] && hint=" (JetPack 5 ships Python 3.8: use JetPack 6)"
        die "$("$PYTHON" -V 2>&1) is too old; catdog-agent needs Python >= $MIN_PYTHON$hint"
    fi
}

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

ensure_packages() {
    local missing=() package
    while read -r package; do
        if ! sys_query || ! package_installed "$package"; then missing+=("$package"); fi
    done < <(apt_packages)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$DRY_RUN" = 1 ] || [ "$NO_SYSTEM" = 1 ]; then
        sys_do apt-get install -y --no-install-recommends "${missing[@]}"
    else
        apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed (try: sudo apt-get update)"
    fi
}

ensure_user() {
    put_file "$HERE/systemd/catdog-agent.sysusers" "$SYSUSERS" 0644 || true
    # Idempotent: creates the user and group once, adds the user to group video if it is not in it.
    if ! sys_query || ! id -nG "$APP" 2>/dev/null | grep -qw video; then
        sys_do systemd-sysusers "$SYSUSERS"
    fi
    if [ "$BOARD" = jetson ]; then
        if ! sys_query || ! getent group render >/dev/null; then sys_do groupadd --system render; fi
        if ! sys_query || ! id -nG "$APP" 2>/dev/null | grep -qw render; then sys_do usermod -a -G render "$APP"; fi
    fi
}

install_files() {
    make_dir "$CONF_DIR" 0750 || true
    set_owner "root:$APP" "$CONF_DIR"
    put_file_once "$(config_example)" "$CONF" 0640 || true
    set_owner "root:$APP" "$CONF"
    make_dir "$STATE_DIR" 0750 || true
    set_owner "$APP:$APP" "$STATE_DIR"
    local example
    for example in "$HERE"/config/*.yaml; do
        put_file "$example" "$EXAMPLES/$(basename "$example")" 0644 || true
    done
    write_constraints "$WORK/constraints.txt"
    if put_file "$WORK/constraints.txt" "$CONSTRAINTS" 0644 && [ "$DRY_RUN" = 1 ]; then
        { grep -v '^#' "$WORK/constraints.txt" || true; } | sed 's/^/install: [dry-run]   constraint: /'
    fi
    local target=$DEVICE_VENV/bin/catdog-agent
    if [ -L "$ROOT$LINK" ] && [ "$(readlink "$ROOT$LINK")" = "$target" ]; then
        :
    elif [ -e "$ROOT$LINK" ] && [ ! -L "$ROOT$LINK" ]; then
        log "warning: $LINK exists and is not ours; left alone (the command is $target)"
    else
        fs_do mkdir -p "$(dirname "$ROOT$LINK")"
        fs_do ln -sfn "$target" "$ROOT$LINK"
    fi
}

venv_matches() {  # the venv runs, on the same Python as $PYTHON, with the wanted site-packages setting
    local cfg="$ROOT$DEVICE_VENV/pyvenv.cfg" want_ssp=false
    [ "$(system_site_packages)" = 1 ] && want_ssp=true
    [ -x "$ROOT$DEVICE_VENV/bin/python" ] && [ -f "$cfg" ] || return 1
    grep -qx "include-system-site-packages = $want_ssp" "$cfg" || return 1
    local ver='import sys; print(sys.version_info[:2])'
    [ "$("$ROOT$DEVICE_VENV/bin/python" -c "$ver" 2>/dev/null)" = "$("$PYTHON" -c "$ver")" ]
}

ensure_device_venv() {
    if sys_query && venv_matches; then return 1; fi
    local flags=()
    [ "$(system_site_packages)" = 1 ] && flags+=(--system-site-packages)
    [ -e "$ROOT$DEVICE_VENV" ] && sys_do rm -rf "$DEVICE_VENV"
    sys_do "$PYTHON" -m venv "${flags[@]}" "$DEVICE_VENV"
    sys_do "$DEVICE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
}

# The package is built from a clean copy of the checkout (no build/ or egg-info left behind as root).
stage_source() {
    local stage="$WORK/src" file
    mkdir -p "$stage"
    cp -R "$HERE/agent" "$HERE/pyproject.toml" "$HERE/README.md" "$stage/"
    for file in "$HERE"/LICENSE*; do [ -e "$file" ] && cp "$file" "$stage/"; done
    find "$stage" -name __pycache__ -prune -exec rm -rf {} +
    echo "$stage"
}

source_fingerprint() {
    {
        cat "$ROOT$CONSTRAINTS" "$HERE/pyproject.toml"
        pip_extra
        "$ROOT$DEVICE_VENV/bin/python" -V 2>&1 || true
        (cd "$HERE" && find agent -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
}

ensure_agent_installed() {
    local want=""
    if sys_query && [ "$DRY_RUN" = 0 ]; then
        want="$(source_fingerprint)"
        if [ -f "$ROOT$FINGERPRINT" ] && [ "$(cat "$ROOT$FINGERPRINT")" = "$want" ] \
            && [ -x "$ROOT$DEVICE_VENV/bin/catdog-agent" ]; then
            return 1
        fi
    fi
    local source="$HERE"
    if sys_query && [ "$DRY_RUN" = 0 ]; then
        source="$(stage_source)" || die "could not stage a copy of $HERE to install"
        [ -f "$source/pyproject.toml" ] || die "could not stage a copy of $HERE to install"
    fi
    sys_do "$DEVICE_VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
        --constraint "$CONSTRAINTS" "$source$(pip_extra)"
    if sys_query && [ "$DRY_RUN" = 0 ]; then
        echo "$want" > "$ROOT$FINGERPRINT"
    fi
    [ "$BOARD" = jetson ] && check_jetson_opencv
    return 0
}

check_jetson_opencv() {
    sys_query && [ "$DRY_RUN" = 0 ] || return 0
    local info
    if ! info="$("$DEVICE_VENV/bin/python" -c 'import cv2; print(cv2.getBuildInformation())' 2>/dev/null)"; then
        log "warning: JetPack's OpenCV is missing (no cv2 for $($PYTHON -V 2>&1)): sudo apt-get install nvidia-opencv"
    elif ! grep -Eq 'GStreamer:[[:space:]]+YES' <<<"$info"; then
        log "warning: this cv2 has no GStreamer: CSI cameras (csi://) will not open; use JetPack's OpenCV"
    fi
}

verify_unit() {
    systemd_running && [ "$DRY_RUN" = 0 ] && command -v systemd-analyze >/dev/null 2>&1 || return 0
    local out
    out="$(systemd-analyze verify "$UNIT" 2>&1)" || true
    [ -z "$out" ] || log "warning: systemd-analyze verify $UNIT says: $out"
}

install_unit() {  # returns 0 when the unit or its drop-in changed
    local changed=1
    put_file "$HERE/systemd/catdog-agent.service" "$UNIT" 0644 && changed=0
    if [ "$BOARD" = jetson ]; then
        put_file "$HERE/systemd/jetson.conf" "$DROPIN" 0644 && changed=0
    elif [ -e "$ROOT$DROPIN" ]; then
        remove "$DROPIN"; changed=0
    fi
    return "$changed"
}

enable_unit() {  # UNIT_CHANGED AGENT_CHANGED (1/0)
    if ! sys_query; then
        sys_do systemctl daemon-reload
        sys_do systemctl enable "$APP.service"
        return 0
    fi
    if ! systemd_running; then
        log "warning: systemd is not running here; enable the service later: systemctl enable $APP"
        return 0
    fi
    if [ "$1" = 1 ] || [ "$(systemctl show -p NeedDaemonReload --value "$APP.service" 2>/dev/null)" = yes ]; then
        sys_do systemctl daemon-reload
    fi
    systemctl is-enabled --quiet "$APP.service" 2>/dev/null || sys_do systemctl enable "$APP.service"
    # An upgrade restarts a running agent on the new code; a stopped one stays stopped.
    if { [ "$1" = 1 ] || [ "$2" = 1 ]; } && systemctl is-active --quiet "$APP.service"; then
        sys_do systemctl restart --no-block "$APP.service"  # Type=notify: do not wait for READY here
    fi
}

next_steps() {
    cat <<EOF

catdog-agent is installed (board: $BOARD${MODEL:+, $MODEL}). Next:
  1. edit $CONF: device.id, camera.source, server.url, mqtt.host
     (examples: $EXAMPLES/)
  2. check it as the service will run it:
       sudo -u $APP $LINK check --config $CONF
  3. start it and follow its log:
       sudo systemctl start $APP && journalctl -u $APP -f
Upgrade: pull the new version and run sudo ./install.sh again (config and state are kept).
Remove:  sudo ./install.sh --uninstall   (add --purge to delete config, state and the user)
EOF
}

install_device() {
    require_root
    detect_board
    log "board=$BOARD model=${MODEL:-unknown} arch=$ARCH${L4T:+ l4t=$L4T}${ROOT:+ root=$ROOT}"
    check_device_python
    ensure_packages
    ensure_user
    install_files
    local unit_changed=0 agent_changed=0
    ensure_device_venv && agent_changed=1
    ensure_agent_installed && agent_changed=1
    install_unit && unit_changed=1
    verify_unit
    enable_unit "$unit_changed" "$agent_changed"
    if [ "$DRY_RUN" = 1 ]; then log "dry run: nothing was changed"; else next_steps; fi
}

uninstall_device() {
    local purge="$1"
    require_root
    if ! sys_query || { systemd_running && [ -e "$UNIT" ]; }; then
        sys_try systemctl disable --now "$APP.service"
    fi
    remove "$DROPIN" "$UNIT"
    if [ "$purge" = 1 ]; then
        remove "$DROPIN_DIR"
    elif [ -d "$ROOT$DROPIN_DIR" ] && [ -z "$(ls -A "$ROOT$DROPIN_DIR")" ]; then
        fs_do rmdir "$ROOT$DROPIN_DIR"
    fi
    if ! sys_query || systemd_running; then
        sys_do systemctl daemon-reload
        sys_try systemctl reset-failed "$APP.service"
    fi
    if [ -L "$ROOT$LINK" ] && [ "$(readlink "$ROOT$LINK")" = "$DEVICE_VENV/bin/catdog-agent" ]; then
        remove "$LINK"
    fi
    remove "$PREFIX" "$SYSUSERS"
    if [ "$purge" = 1 ]; then
        remove "$CONF_DIR" "$STATE_DIR" "$CACHE_DIR"
        if ! sys_query || id "$APP" >/dev/null 2>&1; then sys_do userdel "$APP"; fi
        if ! sys_query || getent group "$APP" >/dev/null; then sys_try groupdel "$APP"; fi
        [ "$DRY_RUN" = 1 ] || log "purged: config, state, cache and the user are gone"
    else
        [ "$DRY_RUN" = 1 ] || log "kept $CONF_DIR, $STATE_DIR and the user $APP (--uninstall --purge removes them)"
    fi
}

main() {
    local mode=device purge=0 python_given=0
    PYTHON=python3
    BOARD=""
    ARCH=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --dev) mode=dev ;;
            --python) shift; PYTHON="${1:?--python needs a value}"; python_given=1 ;;
            --uninstall) mode=uninstall ;;
            --purge) purge=1 ;;
            --detect) mode=detect ;;
            --dry-run) DRY_RUN=1 ;;
            --no-system) NO_SYSTEM=1 ;;
            --root) shift; ROOT="${1:?--root needs a directory}" ;;
            --board) shift; BOARD="${1:?--board needs pi, jetson or other}" ;;
            --arch) shift; ARCH="${1:?--arch needs a value}" ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    case "$BOARD" in ""|pi|jetson|other) ;; *) die "--board must be pi, jetson or other (got $BOARD)" ;; esac
    if [ -n "$ROOT" ]; then
        [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
        ROOT="$(cd "$ROOT" && pwd)"
        [ "$ROOT" = / ] && ROOT=""
    fi
    if [ -n "$ROOT" ] && [ "$NO_SYSTEM" = 0 ] && [ "$mode" != detect ]; then
        die "--root needs --no-system: apt-get, systemd-sysusers, pip and systemctl act on the running system, not on $ROOT"
    fi
    [ "$purge" = 1 ] && [ "$mode" != uninstall ] && die "--purge goes with --uninstall"
    if [ "$mode" = dev ] && { [ -n "$ROOT" ] || [ "$DRY_RUN" = 1 ] || [ "$NO_SYSTEM" = 1 ]; }; then
        die "--dev takes only --python"
    fi
    case "$mode" in
        dev) install_dev ;;
        detect) detect_board; print_detection ;;
        device|uninstall)
            # The venv under /opt must be readable by the service user whatever root's umask is, and
            # built on the distribution's Python (the one apt's picamera2 and JetPack's cv2 belong to),
            # not a self-built one that sudo's PATH may find first in /usr/local/bin.
            umask 022
            if [ "$python_given" = 0 ] && [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; fi
            WORK="$(mktemp -d)"
            trap 'rm -rf "$WORK"' EXIT
            if [ "$mode" = device ]; then install_device; else uninstall_device "$purge"; fi
            ;;
    esac
}

# Sourcing (for tests of single functions) defines them without running anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
