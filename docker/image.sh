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

# What Debian's own slim images do (debuerreotype): dpkg leaves out documentation, manual
# pages and translations from then on, apt keeps no package caches, and what is there already
# goes. Saves about 45 MB in the base and in every apt layer built on it.
slim() {
    cat >"$1/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
    cat >"$1/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
    find "$1/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$1/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$1"/usr/share/man/* "$1"/usr/share/groff/* "$1"/usr/share/info/* \
        "$1"/usr/share/lintian/* "$1"/usr/share/linda/* "$1"/usr/share/locale/* \
        "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin
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
    slim "$dir"
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
