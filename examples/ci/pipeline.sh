#!/usr/bin/env bash
# Build, push, scan and promote an image with dockyard: the steps every example pipeline
# (GitLab CI/CD, GitHub Actions, Jenkins) runs, so they stay the same. docs/ci.md.
#
#   pipeline.sh build     build the image, push it by tag; write dockyard.env (its digest)
#   pipeline.sh scan      wait for dockyard's scan of that digest; fail on findings at or
#                         above BLOCK_SEVERITY, or when the pull policy refuses the image
#   pipeline.sh promote   tag the tested digest RELEASE_TAG (a manifest PUT of the same
#                         bytes: no rebuild, no blob uploaded again)
#
# Settings (environment variables):
#   DOCKYARD_URL         the registry, https://registry.example.com (http:// for a test one)
#   DOCKYARD_USER        a robot's user name, robot$NAME (dockyard tokens create --name NAME)
#   DOCKYARD_PASSWORD    its secret (a masked/secret CI variable, never in the file)
#   IMAGE_REPOSITORY     team/app
#   IMAGE_TAG            the tag the build pushes (default: the commit, from the CI system)
#   RELEASE_TAG          the tag promote writes (default: release)
#   BLOCK_SEVERITY       UNKNOWN, LOW, MEDIUM, HIGH (default) or CRITICAL; empty: never fail
#                        on findings (the registry's pull policy still applies)
#   SCAN_TIMEOUT         seconds to wait for the scan (default 600)
#   NONE_GRACE           seconds a scan may stay "none" before asking for one (default 10)
#   BUILDER              buildah (default) or podman
#   CONTAINERFILE        default Containerfile;  BUILD_CONTEXT  default .
#   DOCKYARD_TLS_VERIFY  false to accept a self-signed certificate (default true)
#
# Needs bash, curl, jq, sha256sum and buildah or podman.
set -euo pipefail

: "${DOCKYARD_URL:?set DOCKYARD_URL, e.g. https://registry.example.com}"
: "${IMAGE_REPOSITORY:?set IMAGE_REPOSITORY, e.g. team/app}"
DOCKYARD_URL=${DOCKYARD_URL%/}
REGISTRY=${DOCKYARD_URL#*://}
IMAGE_TAG=${IMAGE_TAG:-${CI_COMMIT_SHORT_SHA:-${GITHUB_SHA:-${GIT_COMMIT:-latest}}}}
IMAGE_TAG=${IMAGE_TAG:0:40}
RELEASE_TAG=${RELEASE_TAG:-release}
BLOCK_SEVERITY=${BLOCK_SEVERITY-HIGH}
SCAN_TIMEOUT=${SCAN_TIMEOUT:-600}
BUILDER=${BUILDER:-buildah}
CONTAINERFILE=${CONTAINERFILE:-Containerfile}
BUILD_CONTEXT=${BUILD_CONTEXT:-.}
SEVERITIES=(UNKNOWN LOW MEDIUM HIGH CRITICAL)
MANIFEST_TYPES="application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.docker.distribution.manifest.v2+json"

CURL=(curl --silent --show-error --location)
TLS_VERIFY=true
if [[ ${DOCKYARD_TLS_VERIFY:-true} == false || $DOCKYARD_URL == http://* ]]; then
    # Plain HTTP needs it too: buildah and podman only speak HTTP to an "insecure" registry.
    TLS_VERIFY=false
    [[ $DOCKYARD_URL == https://* ]] && CURL+=(--insecure)
fi

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

need_credentials() {
    : "${DOCKYARD_USER:?set DOCKYARD_USER (robot\$NAME)}"
    : "${DOCKYARD_PASSWORD:?set DOCKYARD_PASSWORD (the robot secret)}"
}

# The digest pushed by the build step (the build writes dockyard.env; GitLab's dotenv
# report, a GitHub step output or a Jenkins stash carry it to later steps).
image_digest() {
    if [[ -z ${IMAGE_DIGEST:-} && -f dockyard.env ]]; then
        IMAGE_DIGEST=$(sed -n 's/^IMAGE_DIGEST=//p' dockyard.env)
    fi
    [[ ${IMAGE_DIGEST:-} =~ ^sha256:[0-9a-f]{64}$ ]] \
        || die "no IMAGE_DIGEST (run the build step first; it writes dockyard.env)"
    printf '%s' "$IMAGE_DIGEST"
}

# Authorization for the registry's HTTP API: a bearer token from the registry's token
# service when it challenges with Bearer (auth.mode "token"), Basic otherwise. The header
# goes to curl through a config on stdin, so no secret shows in the process list.
AUTH_HEADER=""
authenticate() { # SCOPE, e.g. repository:team/app:pull,push
    local challenge realm service basic token
    basic="Authorization: Basic $(printf '%s:%s' "$DOCKYARD_USER" "$DOCKYARD_PASSWORD" | base64 | tr -d '\n')"
    challenge=$("${CURL[@]}" --output /dev/null --dump-header - "$DOCKYARD_URL/v2/") \
        || die "cannot reach $DOCKYARD_URL/v2/"
    challenge=$(tr -d '\r' <<<"$challenge" | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: *//p' | head -n 1)
    if [[ $challenge == [Bb]earer* ]]; then
        realm=$(sed -n 's/.*realm="\([^"]*\)".*/\1/p' <<<"$challenge")
        service=$(sed -n 's/.*service="\([^"]*\)".*/\1/p' <<<"$challenge")
        token=$(printf 'header = "%s"\n' "$basic" | "${CURL[@]}" --fail --config - --get \
            --data-urlencode "service=$service" --data-urlencode "scope=$1" "$realm" \
            | jq -r '.token // .access_token') || die "the token service refused $DOCKYARD_USER"
        AUTH_HEADER="Authorization: Bearer $token"
    else
        AUTH_HEADER=$basic
    fi
}

api() { # curl arguments; the authorization from the last authenticate
    printf 'header = "%s"\n' "$AUTH_HEADER" | "${CURL[@]}" --config - "$@"
}

build() {
    need_credentials
    local image="$REGISTRY/$IMAGE_REPOSITORY:$IMAGE_TAG"
    log "building $image with $BUILDER from $CONTAINERFILE"
    "$BUILDER" build --file "$CONTAINERFILE" --tag "$image" "$BUILD_CONTEXT"
    log "logging in to $REGISTRY as $DOCKYARD_USER"
    printf '%s' "$DOCKYARD_PASSWORD" | "$BUILDER" login --tls-verify="$TLS_VERIFY" \
        --username "$DOCKYARD_USER" --password-stdin "$REGISTRY"
    log "pushing $image"
    rm -f dockyard.digest
    "$BUILDER" push --tls-verify="$TLS_VERIFY" --digestfile dockyard.digest "$image" \
        "docker://$image"
    IMAGE_DIGEST=$(tr -d '[:space:]' <dockyard.digest)
    rm -f dockyard.digest
    printf 'IMAGE_DIGEST=%s\n' "$IMAGE_DIGEST" >dockyard.env
    log "pushed $REGISTRY/$IMAGE_REPOSITORY@$IMAGE_DIGEST"
}

# Findings at or above BLOCK_SEVERITY, from the scan's summary.
blocking_count() { # SCAN_JSON
    jq --arg severity "$BLOCK_SEVERITY" '["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"] as $order
        | [$order[($order | index($severity)):][] as $s | .summary[$s] // 0] | add' <<<"$1"
}

scan() {
    need_credentials
    local digest scans_url deadline response status blocking code body why ask_at error last_error=""
    digest=$(image_digest)
    if [[ -n $BLOCK_SEVERITY && ! " ${SEVERITIES[*]} " == *" $BLOCK_SEVERITY "* ]]; then
        die "BLOCK_SEVERITY must be one of ${SEVERITIES[*]} or empty, not '$BLOCK_SEVERITY'"
    fi
    scans_url="$DOCKYARD_URL/v2/_dockyard/repositories/$IMAGE_REPOSITORY/scans/$digest"
    deadline=$((SECONDS + SCAN_TIMEOUT))
    # A scan on push is queued from the event log a moment after the push: "none" for a
    # while is normal. Still "none" after NONE_GRACE seconds: scanning on push is off for
    # this repository, so ask for a scan.
    ask_at=$((SECONDS + ${NONE_GRACE:-10}))
    log "waiting for the scan of $IMAGE_REPOSITORY@$digest (at most $SCAN_TIMEOUT s)"
    while :; do
        authenticate "repository:$IMAGE_REPOSITORY:pull,push"
        response=$(api --fail-with-body "$scans_url") || die "GET $scans_url: $response"
        status=$(jq -r .status <<<"$response")
        case $status in
            done) break ;;
            queued | running)
                # A scan that failed (scanner down, no database yet) is queued again with
                # backoff: say why it is taking long, once per new error.
                error=$(jq -r '.lastError // ""' <<<"$response")
                if [[ -n $error && $error != "$last_error" ]]; then
                    log "waiting: the last attempt failed ($error), next at $(jq -r '.nextAttempt // "?"' <<<"$response")"
                    last_error=$error
                fi ;;
            none)
                if ((SECONDS >= ask_at)); then
                    log "not scanned on push: asking for a scan"
                    api --fail-with-body --request POST "$scans_url" >/dev/null \
                        || die "POST $scans_url refused"
                    ask_at=$deadline
                fi ;;
            failed) die "the scan of $digest failed for good: $(jq -r '.lastError // "?"' <<<"$response")" ;;
            unsupported) die "dockyard cannot scan $digest (not an image it knows how to scan)" ;;
        esac
        ((SECONDS < deadline)) || die "no scan result for $digest after $SCAN_TIMEOUT s (status $status)"
        sleep 2
    done
    log "scanned by $(jq -r '.scanner // "?"' <<<"$response") (database of $(jq -r '.dbUpdated // "?"' <<<"$response")): $(jq -c .summary <<<"$response")"
    jq -r '.findings[]? | "  \(.severity)\t\(.id)\t\(.package) \(.installed) (fixed in \(.fixed // "-"))"' <<<"$response" >&2
    if [[ -n $BLOCK_SEVERITY ]]; then
        blocking=$(blocking_count "$response")
        ((blocking == 0)) || die "$blocking finding(s) at or above $BLOCK_SEVERITY in $IMAGE_REPOSITORY@$digest"
    fi
    # The registry's own pull policy ([[scanning.policies]]) has the last word: what it
    # refuses to serve must not be released.
    body=$(mktemp)
    code=$(api --output "$body" --write-out '%{http_code}' \
        --header "Accept: $MANIFEST_TYPES" "$DOCKYARD_URL/v2/$IMAGE_REPOSITORY/manifests/$digest")
    if [[ $code != 200 ]]; then
        why=$(jq -r '[.errors[]?.message] | join("; ")' "$body" 2>/dev/null || cat "$body")
        rm -f "$body"
        [[ $code == 403 ]] && die "the registry's pull policy refuses $digest: $why"
        die "GET manifest $digest answered $code: $why"
    fi
    rm -f "$body"
    log "scan passed: no finding at or above ${BLOCK_SEVERITY:-(no threshold)}"
}

promote() {
    need_credentials
    local digest tmp content_type got code
    digest=$(image_digest)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    log "promoting $IMAGE_REPOSITORY@$digest to :$RELEASE_TAG"
    authenticate "repository:$IMAGE_REPOSITORY:pull,push"
    # The manifest exactly as pushed, in its own media type ...
    code=$(api --output "$tmp/manifest" --dump-header "$tmp/headers" --write-out '%{http_code}' \
        --header "Accept: $MANIFEST_TYPES" "$DOCKYARD_URL/v2/$IMAGE_REPOSITORY/manifests/$digest")
    [[ $code == 200 ]] || die "GET manifest $digest answered $code: $(cat "$tmp/manifest")"
    got="sha256:$(sha256sum "$tmp/manifest" | cut -d' ' -f1)"
    [[ $got == "$digest" ]] || die "the registry sent a manifest of digest $got, not $digest"
    content_type=$(tr -d '\r' <"$tmp/headers" | sed -n 's/^[Cc]ontent-[Tt]ype: *//p' | tail -n 1)
    # ... PUT back under the release tag: the blobs are already there, nothing is uploaded.
    code=$(api --output "$tmp/answer" --dump-header "$tmp/put-headers" --write-out '%{http_code}' \
        --request PUT --header "Content-Type: $content_type" --data-binary "@$tmp/manifest" \
        "$DOCKYARD_URL/v2/$IMAGE_REPOSITORY/manifests/$RELEASE_TAG")
    [[ $code == 201 ]] || die "PUT manifest :$RELEASE_TAG answered $code: $(cat "$tmp/answer")"
    got=$(tr -d '\r' <"$tmp/put-headers" | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p' | tail -n 1)
    [[ $got == "$digest" ]] || die "the registry stored :$RELEASE_TAG as $got, not $digest"
    log "$REGISTRY/$IMAGE_REPOSITORY:$RELEASE_TAG is $digest"
}

case ${1:-} in
    build) build ;;
    scan) scan ;;
    promote) promote ;;
    *) echo "usage: $0 build|scan|promote (settings: see the top of this file)" >&2; exit 2 ;;
esac
