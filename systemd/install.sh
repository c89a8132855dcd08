#!/bin/sh
# Install aigw as a systemd service, or remove it again.
#
#   systemd/install.sh [--prefix /opt/aigw] [--destdir DIR] [--python python3] [--uninstall]
#   make install / make uninstall   (same thing; PREFIX=, DESTDIR= and PYTHON= pass through)
#
# Install (idempotent; run it again to upgrade):
#   $PREFIX/venv                          a private virtualenv with aigw from this checkout
#   /etc/systemd/system/aigw.service      the hardened unit, $PREFIX substituted
#   /etc/aigw/conf.d/*.yaml               the shipped example routes (tracked by git in a
#                                         checkout), only if conf.d has none yet, and never
#                                         over an existing file
#   /etc/aigw/aigw.env                    from aigw.env.example, mode 0600, only if absent
# then `systemctl daemon-reload` when systemd is running, and the service is
# ready for `systemctl enable --now aigw`. An operator's config, secrets and
# local unit changes (drop-ins) are never overwritten.
#
# No sysusers.d or tmpfiles.d entry: the unit uses DynamicUser=, and systemd
# creates /var/lib/aigw, /run/aigw and /var/log/aigw for it on every start.
#
# Uninstall stops and disables the service, removes the unit and $PREFIX/venv,
# and keeps /etc/aigw (config and secrets) and /var/lib/aigw (last-known-good
# copies of the routes).
#
# --destdir stages everything under DIR (packaging, image builds, tests) and
# talks to no systemd. Paths inside the staged files are the final ones
# (the venv's scripts start with #!$PREFIX/venv/bin/python), so the venv runs
# only once the tree is in place, with --python's interpreter present there.
#
# --python must live outside /home, /root and /run/user (pyenv, a user's venv):
# the venv runs its base interpreter from there, and the unit's ProtectHome=yes
# with DynamicUser= hides it from the service (Permission denied at start).
set -eu

PREFIX=/opt/aigw
DESTDIR=
PYTHON=python3
ACTION=install
SRC=$(cd "$(dirname "$0")/.." && pwd)
UNIT_NAME=aigw.service

usage() {
    sed -n '2,5s/^# \{0,1\}//p' "$0"
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a value"; DESTDIR=$2; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a value"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# The prefix ends up unquoted in the unit's ExecStart= and in a sed
# replacement, and uninstall removes things under it: accept plain absolute
# paths only, and never the root itself.
case $PREFIX in
    /*) ;;
    *) die "--prefix must be an absolute path, got '$PREFIX'" ;;
esac
PREFIX=$(printf '%s' "$PREFIX" | sed 's#/*$##')
[ -n "$PREFIX" ] || die "--prefix must not be /"
case $PREFIX in
    *[!A-Za-z0-9._/+-]*) die "--prefix may only contain letters, digits and . _ / + -" ;;
esac
case $PREFIX/ in
    /home/* | /root/* | /run/user/*) die "--prefix $PREFIX: the unit's ProtectHome=yes hides it" ;;
esac
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
fi

VENV=$DESTDIR$PREFIX/venv
ETC=$DESTDIR/etc/aigw
UNIT=$DESTDIR/etc/systemd/system/$UNIT_NAME

# Talk to systemd only for a real install on a machine that runs it
# (the sd_booted() test: /run/systemd/system exists only when PID 1 is systemd).
systemd_running() {
    [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

need_root() {
    if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
        die "writes to $PREFIX and /etc: run as root, or stage with --destdir"
    fi
}

# Write stdin to $1 with mode $2 through a temporary file in the same
# directory, so the target is never seen half-written.
write_file() {
    tmp=$(mktemp "$(dirname "$1")/.aigw-install.XXXXXX")
    cat >"$tmp"
    chmod "$2" "$tmp"
    mv -f "$tmp" "$1"
}

# The real paths (symlinks resolved) of the base interpreter behind $1 and of
# its standard library: what a venv made from $1 runs, even when $1 is itself
# a venv's python or a pyenv shim.
interpreter_paths() {
    "$1" -c 'import os, sys
print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
print(os.path.realpath(sys.base_prefix))' 2>/dev/null
}

# Prints the first of the paths of interpreter $1 that ProtectHome=yes hides.
hidden_path() {
    interpreter_paths "$1" | while IFS= read -r path; do
        case $path/ in
            /home/* | /root/* | /run/user/*) echo "$path"; break ;;
        esac
    done
}

install_venv() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PYTHON is not Python >= 3.11 (choose one with --python)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        die "$PYTHON cannot create virtualenvs (Debian: apt install python3-venv)"
    hidden=$(hidden_path "$PYTHON")
    if [ -n "$hidden" ]; then
        die "$PYTHON runs from $hidden, which the service cannot read (the unit's" \
            "ProtectHome=yes and DynamicUser=): use a system Python >= 3.11 instead," \
            "e.g. make install PYTHON=/usr/bin/python3 (or --python /usr/bin/python3)"
    fi
    mkdir -p "$DESTDIR$PREFIX"
    if [ ! -e "$VENV/pyvenv.cfg" ]; then
        "$PYTHON" -m venv "$VENV"
    elif ! "$VENV/bin/python" -c '' 2>/dev/null || [ -n "$(hidden_path "$VENV/bin/python")" ]; then
        # The interpreter it was made from is gone (a Python upgrade), or it is
        # one the service cannot read (an earlier install from pyenv): rebuild.
        "$PYTHON" -m venv --clear "$VENV"
    fi
    # Build from a copy of the sources setuptools reads: an in-tree build
    # would write build/ and *.egg-info into the checkout, and a stale
    # build/lib from an earlier run can slip deleted modules into the wheel.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    for item in pyproject.toml setup.cfg setup.py MANIFEST.in README.md LICENSE aigw; do
        if [ -e "$SRC/$item" ]; then
            cp -R "$SRC/$item" "$build/"
        fi
    done
    find "$build" -name __pycache__ -type d -prune -exec rm -rf {} +
    # Non-editable, so the service never runs code from the checkout. A local
    # directory is rebuilt and reinstalled on every run (an upgrade, even at
    # the same version); dependencies move only where pyproject.toml's bounds
    # now require it (pip's only-if-needed strategy).
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$build"
    rm -rf "$build"
    trap - EXIT
    if [ -n "$DESTDIR" ]; then
        # Point the venv's scripts (console scripts' #! lines, activate) at
        # their final location rather than at the staging directory.
        # (grep -r does not follow the bin/python symlinks into the interpreter.)
        pattern=$(printf '%s' "$VENV" | sed 's/[][\\.*^$#]/\\&/g')
        grep -rlF "$VENV" "$VENV/bin" | while IFS= read -r file; do
            sed -i "s#$pattern#$PREFIX/venv#g" "$file"
        done
    fi
}

install_unit() {
    mkdir -p "$(dirname "$UNIT")"
    sed "s#/opt/aigw/#$PREFIX/#g" "$SRC/systemd/aigw.service" | write_file "$UNIT" 0644
    echo "unit: $UNIT"
}

# True when $1 holds a route file (the gateway reads *.yaml and *.yml,
# skipping hidden ones, which these globs skip too).
has_routes() {
    for file in "$1"/*.yaml "$1"/*.yml; do
        [ -e "$file" ] && return 0
    done
    return 1
}

# The names of the example routes this project ships, one a line: in a git
# checkout the files git tracks in conf.d (an untracked experiment there is not
# an example), else (an unpacked release) every route file in it.
shipped_examples() {
    if [ -e "$SRC/.git" ] && command -v git >/dev/null 2>&1; then
        # safe.directory: root installing from a checkout another user owns.
        tracked=$(git -c safe.directory="$SRC" -C "$SRC" ls-files -- conf.d) || return 1
        # Route files the gateway reads: *.yaml and *.yml, not hidden ones.
        printf '%s\n' "$tracked" | sed -n 's#^conf\.d/\([^/.][^/]*\.ya\{0,1\}ml\)$#\1#p'
    else
        for file in "$SRC"/conf.d/*.yaml "$SRC"/conf.d/*.yml; do
            if [ -f "$file" ]; then
                basename "$file"
            fi
        done
    fi
}

install_config() {
    [ -d "$ETC" ] || install -d -m 0755 "$ETC"
    [ -d "$ETC/conf.d" ] || install -d -m 0755 "$ETC/conf.d"
    # The example routes only go into an empty conf.d: an operator's routes are
    # theirs. 0644: the service's dynamic user reads them as "other" (they hold
    # ${VAR} references, never the secrets themselves).
    if has_routes "$ETC/conf.d"; then
        echo "config: $ETC/conf.d already has routes, left as is"
    else
        examples=$(shipped_examples) || die "cannot list the example routes in $SRC/conf.d"
        printf '%s\n' "$examples" | while IFS= read -r name; do
            target=$ETC/conf.d/$name
            if [ -z "$name" ] || [ ! -f "$SRC/conf.d/$name" ]; then
                continue
            fi
            # Never over anything already there, a dangling symlink included
            # (an operator's link to a config not mounted yet).
            if [ -e "$target" ] || [ -L "$target" ]; then
                echo "config: $target exists, left as is"
            else
                write_file "$target" 0644 <"$SRC/conf.d/$name"
                echo "config: example route $target"
            fi
        done
    fi
    if [ -e "$ETC/aigw.env" ]; then
        echo "secrets: $ETC/aigw.env exists, left as is"
        mode=$(stat -c %a "$ETC/aigw.env")
        if [ "$mode" != 600 ] && [ "$mode" != 400 ]; then
            echo "warning: $ETC/aigw.env is mode $mode; it holds the Azure key: chmod 600 it" >&2
        fi
    else
        # umask too: the file is never readable by others, not even briefly.
        (umask 077 && write_file "$ETC/aigw.env" 0600 <"$SRC/systemd/aigw.env.example")
        if [ "$(id -u)" = 0 ]; then
            chown root:root "$ETC/aigw.env"
        fi
        echo "secrets: $ETC/aigw.env created (mode 0600): set AZURE_OPENAI_KEY and AZURE_INSTANCE"
    fi
}

do_install() {
    need_root
    [ -f "$SRC/pyproject.toml" ] || die "no pyproject.toml in $SRC: run the script from a checkout"
    install_venv
    "$VENV/bin/python" -m aigw --version >/dev/null || die "the installed aigw does not run"
    echo "venv: $VENV ($("$VENV/bin/python" -m aigw --version))"
    install_unit
    install_config
    if systemd_running; then
        systemctl daemon-reload
        if systemctl is-active --quiet "$UNIT_NAME"; then
            echo "aigw is running the previous version: systemctl restart aigw"
        else
            echo "ready: systemctl enable --now aigw"
        fi
    elif [ -z "$DESTDIR" ]; then
        echo "systemd is not running here; on a systemd host: systemctl enable --now aigw"
    else
        echo "staged in $DESTDIR"
    fi
}

do_uninstall() {
    need_root
    if systemd_running; then
        # Fails harmlessly when the unit is not installed or never enabled.
        systemctl disable --now "$UNIT_NAME" 2>/dev/null || true
    fi
    rm -f "$UNIT" "$DESTDIR/etc/systemd/system/multi-user.target.wants/$UNIT_NAME"
    # Only the venv this script created: --prefix may point at a directory
    # that holds other things, and a mistyped prefix must not wipe it.
    if [ -f "$VENV/pyvenv.cfg" ]; then
        rm -rf "$VENV"
    fi
    rmdir "$DESTDIR$PREFIX" 2>/dev/null || true
    if systemd_running; then
        systemctl daemon-reload
    fi
    echo "removed: $UNIT and $VENV"
    if [ -d "$ETC" ]; then
        echo "kept: $ETC (config and secrets); delete it yourself when no longer needed"
    fi
    if [ -d "$DESTDIR/etc/systemd/system/$UNIT_NAME.d" ]; then
        echo "kept: $DESTDIR/etc/systemd/system/$UNIT_NAME.d (your drop-ins)"
    fi
    if [ -z "$DESTDIR" ] && [ -e /var/lib/private/aigw ]; then
        echo "kept: /var/lib/private/aigw (last-known-good routes)"
    fi
}

if [ "$ACTION" = install ]; then
    do_install
else
    do_uninstall
fi
