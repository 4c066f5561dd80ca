#!/bin/sh
# Builds the ficus image with buildah, without a container runtime (--isolation=chroot).
#
#   docker/image.sh base     make sure the base image exists: pull it, or make it with debootstrap
#   docker/image.sh build    base, then build docker/Dockerfile into $IMAGE
#
# Environment: IMAGE (default localhost/ficus:latest), BASE_IMAGE (default
# docker.io/library/debian:bookworm-slim), DEBIAN_MIRROR (default: the Debian archive apt uses
# on this machine). `make image` and `make image-test` call this; README "Deploying" says more.
set -eu
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/ficus:latest}
BASE_IMAGE=${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
SUITE=bookworm

need() {
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || {
            echo "image: $t is missing (make image-deps installs it)" >&2
            exit 1
        }
    done
}

# "SITE CODENAME" of each bookworm archive apt reads here (main, updates, security), so that the
# base image installs from the same places as this machine.
apt_sites() {
    apt-get indextargets --format '$(SITE) $(CODENAME)' 'Created-By: Packages' 2>/dev/null |
        awk -v s="$SUITE" '$2 == s || index($2, s "-") == 1' | sort -u
}

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    m=$(apt_sites | awk -v s="$SUITE" '$2 == s { print $1; exit }')
    echo "${m:-http://deb.debian.org/debian}"
}

base() {
    need buildah podman
    if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "image: base $BASE_IMAGE is here"
        return
    fi
    if timeout 120 buildah pull --quiet "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "image: pulled $BASE_IMAGE"
        return
    fi
    need debootstrap
    m=$(mirror)
    echo "image: no registry reachable for $BASE_IMAGE; making it with debootstrap from $m"
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ficus-base.XXXXXX")
    trap 'rm -rf "$dir"' EXIT INT TERM
    debootstrap --variant=minbase "$SUITE" "$dir" "$m" >"$dir.log" 2>&1 || {
        tail -20 "$dir.log" >&2
        rm -f "$dir.log"
        exit 1
    }
    rm -f "$dir.log"
    # The same archives as this machine's apt (security updates included) rather than the one
    # mirror debootstrap wrote down; no package lists or downloaded packages kept.
    sites=$(apt_sites)
    if [ -n "$sites" ]; then
        echo "$sites" | awk '{ print "deb " $1 " " $2 " main" }' >"$dir/etc/apt/sources.list"
    fi
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
    tar -C "$dir" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$dir"
    trap - EXIT INT TERM
    echo "image: imported $BASE_IMAGE"
}

build() {
    base
    need buildah
    # --format docker keeps HEALTHCHECK (the OCI format has no field for it); --layers caches
    # the package steps between builds.
    buildah build --isolation=chroot --format docker --layers --pull=false \
        --build-arg DEBIAN_IMAGE="$BASE_IMAGE" -f docker/Dockerfile -t "$IMAGE" .
    echo "image: built $IMAGE"
}

case "${1:-}" in
base) base ;;
build) build ;;
*)
    echo "usage: docker/image.sh base|build" >&2
    exit 2
    ;;
esac
