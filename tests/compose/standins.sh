#!/usr/bin/env bash
# Local stand-ins for the images docker-compose.yml names, for tests/test_compose_live.py on a
# machine that reaches no image registry (Debian mirror, Maven Central and PyPI only). Root only.
#
#   tests/compose/standins.sh compose-plugin DIR   # compose v2 into DIR/cli-plugins (DOCKER_CONFIG=DIR)
#   tests/compose/standins.sh images               # build each missing or outdated stand-in
#
# compose-plugin: bookworm packages only docker-compose 1.29 (no `docker compose`, no --wait);
# trixie's docker-compose .deb holds the v2 CLI plugin. It is downloaded with private apt lists and
# unpacked into DIR, so nothing on the system changes.
#
# images: a Debian trixie base made with debootstrap (the machine's extra CA certificates added:
# TLS egress may be intercepted), then, tagged with the official names:
#   docker.elastic.co/elasticsearch/elasticsearch:ES  OpenJDK 21 + the integ-test-zip from Maven
#       Central + es-rerank's English analysis plugin (built by es_rerank.cluster.analysis_plugin)
#   opensearchproject/opensearch:OS                    OpenJDK 21 + the integ-test-zip + k-NN
#   python:3.11-slim                                   Debian's python3 in a venv on PATH
# Each stand-in carries the label es-rerank.standin=<hash of its inputs>: one with the current hash
# is kept (a re-run builds nothing), an outdated one is rebuilt, and an image of that name without
# the label (the real one, pulled) is left alone and used.
# Environment: DOCKER (a client that can build without buildx; default /usr/bin/docker, Debian's),
# PY (a Python with es-rerank importable; default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
D=${DOCKER:-/usr/bin/docker}
PY=${PY:-$REPO/.venv/bin/python}
BASE=es-rerank/standin-base:trixie
JRE=es-rerank/standin-jre:trixie
t0=$(date +%s)
step() { echo "[standins $(( $(date +%s) - t0 ))s] $*"; }

mirror() {  # the Debian mirror apt already uses (deb822 sources, else a one-line sources.list)
  local m
  m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

compose_plugin() {
  local dir=$1 work
  if [ -x "$dir/cli-plugins/docker-compose" ]; then return 0; fi
  work=$(mktemp -d); trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial" "$work/parts" "$work/cache" "$dir/cli-plugins"
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$(mirror)" >"$work/parts/trixie.sources"
  local apt=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
             -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
  apt-get "${apt[@]}" update -qq
  (cd "$work" && apt-get "${apt[@]}" download docker-compose >/dev/null && dpkg-deb -x docker-compose_*.deb x)
  install -m 0755 "$work/x/usr/libexec/docker/cli-plugins/docker-compose" "$dir/cli-plugins/docker-compose"
}

# label_of TAG: the stand-in hash on an image; "none" for an image without it; "" when absent
label_of() {
  $D image inspect -f '{{ with index .Config.Labels "es-rerank.standin" }}{{ . }}{{ else }}none{{ end }}' "$1" 2>/dev/null || true
}

# needs TAG HASH: true when TAG must be (re)built
needs() {
  local have; have=$(label_of "$1")
  case "$have" in
    "$2") step "$1: up to date"; return 1 ;;
    none) step "$1: an image without the stand-in label is there (the real one?): used as it is"; return 1 ;;
    *) return 0 ;;
  esac
}

hash_of() { { cat "$0"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16; }

base_image() {
  [ -n "$($D image ls -q "$BASE")" ] && return 0
  step "$BASE: debootstrap trixie (minbase)"
  local root; root=$(mktemp -d)
  debootstrap --variant=minbase --include=ca-certificates trixie "$root" "$(mirror)" >"$root.log" 2>&1 \
    || { tail -20 "$root.log"; rm -rf "$root" "$root.log"; return 1; }
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$root" update-ca-certificates >/dev/null 2>&1
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | $D import - "$BASE" >/dev/null
  rm -rf "$root" "$root.log"
}

jre_image() {
  [ -n "$($D image ls -q "$JRE")" ] && return 0
  step "$JRE: OpenJDK 21 and curl (the health checks use curl)"
  printf '%s\n' "FROM $BASE" \
    "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-21-jre-headless curl && rm -rf /var/lib/apt/lists/*" \
    | $D build -q -t "$JRE" - >/dev/null
}

# the official images' entrypoints turn lower-case dotted environment variables into -E settings
entrypoint() {
  cat >"$1" <<SH
#!/bin/bash
args=(); while IFS='=' read -r -d '' n v; do [[ \$n =~ ^[a-z0-9_]+\.[a-z0-9_.]+\$ ]] && args+=(-E "\$n=\$v"); done < <(env -0)
exec $2 "\${args[@]}" "\$@"
SH
  chmod +x "$1"
}

# unpack CTX ZIP: the distribution into CTX/dist (unzip keeps the scripts' modes); a zip that mvn
# copied into CTX goes, one in the local Maven repository stays
unpack() {
  local top
  top=$(unzip -Z1 "$2" | awk -F/ 'NR == 1 {print $1}')  # awk reads it all: head would SIGPIPE unzip
  unzip -q "$2" -d "$1" && mv "$1/$top" "$1/dist"
  case "$2" in "$1"/*) rm -f "$2" ;; esac
}

# server_image TAG NAME HOME ZIP_DIR PLUGIN_SCRIPT PLUGIN_ENV: one Dockerfile for both engines, as the
# official images lay them out (uid 1000, data under HOME/data, listening on every interface)
server_image() {
  local tag=$1 name=$2 home=$3 ctx=$4 plugin_cli=$5 plugin_env=$6 hash=$7
  entrypoint "$ctx/entrypoint.sh" "$home/bin/$name"
  cat >"$ctx/Dockerfile" <<DF
FROM $JRE
LABEL es-rerank.standin=$hash
RUN groupadd -g 1000 $name && useradd -u 1000 -g 1000 -d $home $name
COPY --chown=1000:1000 dist $home
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY plugin.zip /tmp/plugin.zip
RUN install -d -o 1000 -g 1000 $home/data && echo 'network.host: 0.0.0.0' >>$home/config/$name.yml
ENV ES_JAVA_HOME=/usr/lib/jvm/java-21-openjdk-amd64 OPENSEARCH_JAVA_HOME=/usr/lib/jvm/java-21-openjdk-amd64
WORKDIR $home
USER 1000:1000
RUN $plugin_env bin/$plugin_cli install --batch file:///tmp/plugin.zip
EXPOSE 9200 9300
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
DF
  $D build -q -t "$tag" "$ctx" >/dev/null
}

elasticsearch_image() {
  local v tag hash ctx
  v=$("$PY" -c 'from es_rerank._versions import ES_VERSION; print(ES_VERSION)')
  tag=docker.elastic.co/elasticsearch/elasticsearch:$v
  hash=$(hash_of "$v" "$(cat es_rerank/cluster/analysis_plugin.py)" "$("$PY" -c 'from es_rerank.cluster import analysis_plugin as a; print(a.plugin_version())')")
  needs "$tag" "$hash" || return 0
  step "$tag: the integ-test-zip from Maven Central and the English analysis plugin"
  ctx=$(mktemp -d)
  unpack "$ctx" "$("$PY" -c 'import sys; from pathlib import Path; from es_rerank.cluster import maven
from es_rerank.cluster.distributions import ELASTICSEARCH as E; print(maven.fetch(E.coordinates(sys.argv[1]), Path(sys.argv[2])))' "$v" "$ctx")"
  "$PY" - "$ctx" "$v" <<'PY'
import shutil, sys, tempfile
from pathlib import Path
from es_rerank.cluster import analysis_plugin
from es_rerank.cluster.local import find_java
ctx, version = Path(sys.argv[1]), sys.argv[2]
with tempfile.TemporaryDirectory() as work:
    bundle = analysis_plugin.build(ctx / "dist", java_home=find_java(), es_version=version, workdir=Path(work))
    shutil.copy(bundle, ctx / "plugin.zip")
PY
  server_image "$tag" elasticsearch /usr/share/elasticsearch "$ctx" elasticsearch-plugin "CLI_JAVA_OPTS=-Xmx512m" "$hash"
  rm -rf "$ctx"
}

opensearch_image() {
  local v tag hash ctx
  v=$("$PY" -c 'from es_rerank._versions import OPENSEARCH_VERSION; print(OPENSEARCH_VERSION)')
  tag=opensearchproject/opensearch:$v
  hash=$(hash_of "$v" "$(grep -n KNN_ARTIFACT es_rerank/cluster/distributions.py)")
  needs "$tag" "$hash" || return 0
  step "$tag: the integ-test-zip and the k-NN plugin from Maven Central"
  ctx=$(mktemp -d)
  unpack "$ctx" "$("$PY" -c 'import sys; from pathlib import Path; from es_rerank.cluster import maven
from es_rerank.cluster.distributions import OPENSEARCH as O; print(maven.fetch(O.coordinates(sys.argv[1]), Path(sys.argv[2])))' "$v" "$ctx")"
  # the k-NN plugin zip, as the local node installs it (its version must match the server exactly)
  "$PY" -c 'import shutil, sys; from pathlib import Path; from es_rerank.cluster.distributions import OPENSEARCH as O
knn, = O.plugins(sys.argv[1]); shutil.copy(knn.make_bundle(Path(sys.argv[2], "dist"), Path("/"), Path(sys.argv[2])), Path(sys.argv[2], "plugin.zip"))' "$v" "$ctx"
  server_image "$tag" opensearch /usr/share/opensearch "$ctx" opensearch-plugin "" "$hash"
  rm -rf "$ctx"
}

python_image() {
  local tag=python:3.11-slim hash
  hash=$(hash_of python)
  needs "$tag" "$hash" || return 0
  step "$tag: Debian's python3 in a venv"
  printf '%s\n' "FROM $BASE" "LABEL es-rerank.standin=$hash" \
    "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/* && python3 -m venv /usr/local/python" \
    "ENV PATH=/usr/local/python/bin:\$PATH LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
    | $D build -q -t "$tag" - >/dev/null
}

case "${1:-}" in
  compose-plugin) [ -n "${2:-}" ] || { echo "usage: $0 compose-plugin DIR" >&2; exit 2; }; compose_plugin "$2" ;;
  images) base_image; jre_image; elasticsearch_image; opensearch_image; python_image
          $D image prune -f --filter label=es-rerank.standin >/dev/null  # the outdated stand-ins, untagged now
          step "images ready" ;;
  *) echo "usage: $0 compose-plugin DIR | images (got '${1:-}')" >&2; exit 2 ;;
esac
