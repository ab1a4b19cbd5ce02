# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run): idempotent set-up of what
# Septum needs on a fresh Debian machine with Python 3.11. As root it installs Debian packages
# (nftables for the compiler's check mode and the kernel tests); as another user it skips them.
set -euo pipefail

ensure_debian_packages() {
    # usage: ensure_debian_packages CMD:PACKAGE ...  (install PACKAGE when CMD is missing;
    # a CMD starting with / is a file that the package installs)
    local missing=() what
    for pair in "$@"; do
        what="${pair%%:*}"
        if [ "${what#/}" != "$what" ]; then
            [ -e "$what" ] || missing+=("${pair#*:}")
        else
            command -v "$what" >/dev/null 2>&1 || [ -x "/usr/sbin/$what" ] || missing+=("${pair#*:}")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "septum: installing Debian packages: ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "septum: not root, so not installing ${missing[*]} (tests needing them will skip)" >&2
    fi
}

ensure_venv() {
    # usage: ensure_venv EXTRA   (EXTRA: "" for the tool, "dev" for the test suite)
    local extra="${1:-}" python="${PYTHON:-python3}" stamp
    if [ ! -x .venv/bin/python ]; then
        if ! "$python" -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            ensure_debian_packages "false:python3-venv"
            "$python" -m venv .venv
        fi
    fi
    stamp=".venv/.septum-installed${extra:+-$extra}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}"
        touch "$stamp"
    fi
}
