# Thin wrapper over CMake, in the way Neovim's Makefile is: every target here
# can be done by hand with cmake and ctest.
BUILD_DIR      ?= build
ASAN_BUILD_DIR ?= build-asan
FUZZ_BUILD_DIR ?= build-fuzz
# make fuzz: how long each libFuzzer target runs, and which ones (tests/fuzz/fuzz_NAME.c).
FUZZ_SECONDS   ?= 60
FUZZ_TARGETS   ?= $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
JOBS           ?= $(shell nproc 2>/dev/null || echo 2)
CTEST_FLAGS    ?= --output-on-failure -j$(JOBS)

# Debian packages needed to build and test: chromium for the dashboard test, etcd-server and
# etcd-client for the fleet tests (real etcd processes on loopback), prometheus for promtool
# (the shipped alerting rules are checked and unit-tested), libc-ares-dev for asynchronous DNS
# of backend servers, clang and libclang-rt-14-dev for the libFuzzer targets, python3-yaml to
# parse the shipped Kubernetes and compose files, systemd for systemd-analyze verify.
PACKAGES = build-essential cmake pkg-config python3 openssl libuv1-dev libjansson-dev \
           libssl-dev libcmocka-dev zlib1g-dev node-llhttp chromium etcd-server etcd-client \
           prometheus libc-ares-dev clang libclang-rt-14-dev python3-yaml systemd

.PHONY: all deps build build-asan build-fuzz test test-plain test-asan test-fuzz fuzz demo bench \
        format clean image-deps image image-test

all: build

# Installs the Debian packages of $(1) that are missing (as root), or prints the apt-get line.
define install_packages
	@missing=$$(for p in $(1); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing:" $$missing; \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "Missing packages. Run:"; echo "  sudo apt-get install -y" $$missing; exit 1; \
	  fi; \
	fi
endef

deps:
	$(call install_packages,$(PACKAGES))

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo

$(ASAN_BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(ASAN_BUILD_DIR) -DCMAKE_BUILD_TYPE=Debug -DFICUS_SANITIZE=ON

# The libFuzzer targets need clang, whatever CC says.
$(FUZZ_BUILD_DIR)/CMakeCache.txt:
	CC=clang cmake -S . -B $(FUZZ_BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFICUS_FUZZ=ON

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j$(JOBS)

build-asan: deps $(ASAN_BUILD_DIR)/CMakeCache.txt
	cmake --build $(ASAN_BUILD_DIR) -j$(JOBS)

build-fuzz: deps $(FUZZ_BUILD_DIR)/CMakeCache.txt
	cmake --build $(FUZZ_BUILD_DIR) --target fuzzers -j$(JOBS)

test: test-plain test-asan test-fuzz

test-plain: build
	cd $(BUILD_DIR) && ctest $(CTEST_FLAGS)

test-asan: build-asan
	cd $(ASAN_BUILD_DIR) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest $(CTEST_FLAGS)

# Each fuzz target for a few seconds over its seed corpus: a regression the corpus covers fails.
test-fuzz: build-fuzz
	cd $(FUZZ_BUILD_DIR) && ctest -L fuzz $(CTEST_FLAGS)

# Each fuzz target for FUZZ_SECONDS; what they find accumulates in build-fuzz/fuzz/NAME/corpus,
# a failing input is saved beside it (crash-*, leak-*, timeout-*) and stops the run.
fuzz: build-fuzz
	@set -e; for t in $(FUZZ_TARGETS); do \
	    echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	    sh tests/fuzz/run.sh $(FUZZ_BUILD_DIR)/fuzz_$$t tests/fuzz/corpus/$$t $(FUZZ_SECONDS) \
	        $(FUZZ_BUILD_DIR)/fuzz/$$t; \
	done

demo: build
	$(BUILD_DIR)/ficus demo

bench: build
	bench/run

# The container image (docker/Dockerfile), built with buildah under --isolation=chroot, so no
# container runtime is needed; a base image is made with debootstrap when no registry answers.
# Not part of `make test`: they take minutes and need the image tools (README "Deploying").
IMAGE          ?= localhost/ficus:latest
IMAGE_PACKAGES  = podman buildah debootstrap python3

image-deps:
	$(call install_packages,$(IMAGE_PACKAGES))

image: image-deps
	IMAGE=$(IMAGE) docker/image.sh build

image-test: image
	IMAGE=$(IMAGE) python3 docker/image_test.py

format:
	clang-format -i src/*.c include/ficus/*.h tests/unit/*.c tests/fuzz/*.c tests/fuzz/*.h

clean:
	rm -rf $(BUILD_DIR) $(ASAN_BUILD_DIR) $(FUZZ_BUILD_DIR)
