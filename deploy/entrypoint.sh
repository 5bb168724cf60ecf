#!/usr/bin/env bash
# Container entrypoint for a hashfed node: refuse to invent a node, upgrade the schema, then serve.
#
# Usage (the image's CMD is "serve"):
#   serve [ARGS...]    make sure a node exists, run 'hashfed db upgrade', then exec 'hashfed serve'
#   prepare            make sure a node exists and upgrade the schema, then exit (compose's init job)
#   anything else      exec 'hashfed ARGS...' (e.g. 'set create demo --tlp clear')
#
# Environment:
#   HASHFED_DATA          the node's data directory (image default: /data, a volume)
#   HASHFED_LISTEN        address 'serve' binds (default 0.0.0.0:8470; the healthcheck reads it too)
#   HASHFED_INIT=1        allow creating a node when HASHFED_DATA holds none; needs
#   HASHFED_ORIGIN        ... the log origin, like hashfed.example.org
#   HASHFED_ORG           ... your organisation id, like example.org
#   HASHFED_PUBLIC_URL    optional, written as public_url into a newly created hashfed.toml
#   HASHFED_DATABASE_URL  overrides database_url (node/config.py); at creation it is also written to
#                         hashfed.toml with the password removed, so the password lives only here
#   HASHFED_SHARED_DIR    run from a node created elsewhere: copy hashfed.toml, node.key and
#                         operator.token from this (read-only) directory into HASHFED_DATA first
#
# Why nothing is created implicitly: a node's Ed25519 key is its identity. Partners pin its vkey and
# every checkpoint it ever signed is checked against it. If a container started with a forgotten or
# mistyped volume quietly generated a fresh key, it would come up "healthy" as a different node,
# and the mistake would surface later as signatures nobody trusts (or as a lost key, if the new
# empty volume is the one that gets kept). Failing at start costs one restart; so creating a node
# takes an explicit HASHFED_INIT=1.
set -euo pipefail
umask 077 # node.key, operator.token and a hashfed.toml with a password are owner-only

data="${HASHFED_DATA:-/data}"
listen="${HASHFED_LISTEN:-0.0.0.0:8470}"

say() { printf 'hashfed-entrypoint: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 2 # the CLI's exit status for setup errors
}

# postgresql+asyncpg://user:secret@host/db -> postgresql+asyncpg://user@host/db
redact_password() {
	printf '%s\n' "$1" | sed -E 's#^([A-Za-z0-9+.-]+://[^:@/]*):[^@/]*@#\1@#'
}

ensure_node() {
	if [[ -f "$data/hashfed.toml" ]]; then
		return 0
	fi
	if [[ "${HASHFED_INIT:-}" != "1" ]]; then
		die "$data holds no hashfed node (no hashfed.toml). Refusing to create one implicitly: a node's key is its identity, and a new key by accident is worse than not starting. Mount the volume that holds your node, or set HASHFED_INIT=1 with HASHFED_ORIGIN and HASHFED_ORG to create a new node."
	fi
	if [[ -z "${HASHFED_ORIGIN:-}" || -z "${HASHFED_ORG:-}" ]]; then
		die "HASHFED_INIT=1 needs HASHFED_ORIGIN (like hashfed.example.org) and HASHFED_ORG (like example.org)"
	fi
	local public_url="${HASHFED_PUBLIC_URL:-}"
	if [[ "$public_url" =~ [\"\\[:cntrl:]] ]]; then
		die "HASHFED_PUBLIC_URL must not contain quotes, backslashes or control characters"
	fi
	local args=(init --data "$data" --origin "$HASHFED_ORIGIN" --org "$HASHFED_ORG")
	if [[ -n "${HASHFED_DATABASE_URL:-}" ]]; then
		# init migrates the database named by HASHFED_DATABASE_URL (the override applies as soon as
		# the config is loaded); the file keeps the URL without its password, so a copy of the
		# data directory never carries the database password and a start without the variable
		# fails to log in instead of silently falling back to SQLite.
		args+=(--database "$(redact_password "$HASHFED_DATABASE_URL")")
	fi
	say "creating a new hashfed node in $data (HASHFED_INIT=1)"
	hashfed "${args[@]}"
	if [[ -n "$public_url" ]]; then
		printf 'public_url = "%s"\n' "$public_url" >>"$data/hashfed.toml"
	fi
}

copy_shared() {
	local src="$HASHFED_SHARED_DIR"
	[[ "$src" != "$data" ]] || die "HASHFED_SHARED_DIR and HASHFED_DATA must differ"
	[[ -f "$src/hashfed.toml" ]] ||
		die "$src holds no hashfed node (no hashfed.toml); create it first (compose: the init service)"
	mkdir -p "$data"
	# A private copy, because 'hashfed serve' writes serve.json into its data directory (the
	# shared one is read-only) and the CLI inside this container must find this process's URL
	# there, not another replica's. Copied on every start so the shared directory stays the one
	# source of truth.
	local f
	for f in hashfed.toml node.key operator.token; do
		[[ -f "$src/$f" ]] || die "$src/$f is missing"
		cp "$src/$f" "$data/$f.tmp"
		chmod 600 "$data/$f.tmp"
		mv -f "$data/$f.tmp" "$data/$f"
	done
}

cmd="${1:-serve}"
if [[ $# -gt 0 ]]; then
	shift
fi

case "$cmd" in
serve)
	if [[ -n "${HASHFED_SHARED_DIR:-}" ]]; then
		copy_shared
	else
		ensure_node
	fi
	hashfed db upgrade --data "$data"
	# serve.json names the running server by pid, and in a container that pid is the same on
	# every start (we exec, so hashfed is pid 1). A serve.json left by a killed previous run of
	# this container would name our own pid and make 'hashfed serve' refuse to start, forever.
	# Only this entrypoint starts a server on this directory, so any serve.json here is stale.
	rm -f "$data/serve.json"
	# exec: hashfed becomes the process that receives SIGTERM from 'docker stop' and signs a
	# final checkpoint before exiting.
	exec hashfed serve --data "$data" --listen "$listen" "$@"
	;;
prepare)
	ensure_node
	hashfed db upgrade --data "$data"
	;;
hashfed)
	exec hashfed "$@"
	;;
*)
	exec hashfed "$cmd" "$@"
	;;
esac
