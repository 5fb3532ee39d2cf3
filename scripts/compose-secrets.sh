#!/usr/bin/env bash
# Creates the secrets docker-compose.yml hands to its containers, one value per file under ./secrets/
# (override with SECRETS_DIR). A file that exists is kept, so running it again changes nothing.
#   secret_key           Django's signing key (64 random URL-safe characters)
#   postgres_password    the corral database user's password (read by PostgreSQL on its first start only)
#   database_url         postgres://corral:<that password>@postgres:5432/corral
#   email_host_password  empty; put the SMTP password here if EMAIL_HOST is set
#   metrics_token        the bearer token Prometheus sends to /metrics (docs/operations.md)
# The directory is 0700 (only you reach it on this host); the files are 0444, because the containers'
# unprivileged user (uid 10001) reads them through compose's bind mounts.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${SECRETS_DIR:-$ROOT/secrets}"
mkdir -p "$DIR"
chmod 700 "$DIR"

random() {  # $1 characters from [A-Za-z0-9]
    local value=""
    while [ "${#value}" -lt "$1" ]; do
        value+="$(head -c 256 /dev/urandom | tr -dc 'A-Za-z0-9')"
    done
    printf '%s' "${value:0:$1}"
}

write() {  # name value: only if the file does not exist yet
    local file="$DIR/$1"
    if [ -e "$file" ]; then
        echo "kept    $file"
        return
    fi
    (umask 077 && printf '%s\n' "$2" >"$file")
    chmod 444 "$file"
    echo "created $file"
}

write secret_key "$(random 64)"
write postgres_password "$(random 40)"
write database_url "postgres://corral:$(cat "$DIR/postgres_password")@postgres:5432/corral"
write email_host_password ""
write metrics_token "$(random 48)"
