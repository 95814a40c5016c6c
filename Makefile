# Aeterna developer entry points.
#
# Works on a fresh Debian 12 machine that has only python3: as root, missing
# Debian packages are installed with apt-get (once, and only when something is
# missing); as a normal user, what is missing is reported and the run goes on
# (tests that need those tools skip).
#
#   make demo    venv + `aeterna start -c units/` in the foreground
#   make test    system packages, venv with test extras, ruff, mypy, pytest
#                (extra pytest arguments: make test PYTEST_ARGS='-k loader -x')
#   make bench   system packages, venv, then every bench/*.py
#   make lint    ruff, mypy and the layers' import contracts (import-linter)
#   make deb     the Debian packages, in build/deb/ (cached: rebuilt when sources change)
#   make deb-check  lintian and piuparts on them (piuparts is slow)
#   make image   the container image (packaging/container/Containerfile), with docker
#                or podman, whichever is here (DOCKER_HOST is honoured):
#                make image BASE=REF IMAGE=NAME:TAG [ENGINE=docker|podman]
#   make clean   remove the venv, caches and build output

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
PIP         := $(VPY) -m pip
PIP_FLAGS   ?= --quiet --disable-pip-version-check
PYTEST_ARGS ?=

STAMP_RUN   := $(VENV)/.stamp-run
STAMP_TEST  := $(VENV)/.stamp-test

# Debian packages the test suite and benchmarks use.
APT_PACKAGES ?= python3-venv python3-dev gcc pkg-config libsystemd-dev systemd \
                tini dumb-init supervisor wrk util-linux procps iproute2 golang-go \
                mmdebstrap docker.io podman runc debhelper dh-python \
                pybuild-plugin-pyproject lintian piuparts fakeroot default-jdk-headless \
                python3-setuptools python3-yaml python3-jinja2 python3-psutil man-db \
                nodejs init-system-helpers

# Go (sdk/go, examples/go-counter) builds with the standard library only and
# caches under build/, so a fresh CI run compiles once; no module is downloaded.
export GOCACHE := $(CURDIR)/build/go-cache
export GOPATH := $(CURDIR)/build/go
export GOPROXY := off
export GOFLAGS := -mod=mod

# Debian daemons whose shipped unit files the drop-in tests run unchanged
# (tests/e2e/test_debian_daemons.py skips one that is missing). Separate, so that
# `make test DAEMON_PACKAGES=` skips them. Their maintainer scripts would start
# them: a policy-rc.d that answers 101 ("not allowed") holds them for the install.
DAEMON_PACKAGES ?= nginx php8.2-fpm openssh-server redis-server postgresql

# The `test` extra from pyproject.toml, less systemd-python.
TEST_DEPS_NO_SYSTEMD := import tomllib; \
    d = tomllib.load(open("pyproject.toml", "rb")); \
    print(" ".join(r for r in d["project"]["optional-dependencies"]["test"] \
                   if not r.lower().startswith("systemd-python")))

export DEBIAN_FRONTEND := noninteractive

.PHONY: help demo test lint bench clean sysdeps daemons venv rootfs deb deb-check image

help:
	@echo "targets: demo test lint bench deb deb-check image clean sysdeps"

# --------------------------------------------------------------------------- system packages
# Cheap when everything is there: a single dpkg-query call.
sysdeps:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
	    echo "sysdeps: not a Debian system; make sure these are installed: $(APT_PACKAGES)"; \
	    exit 0; \
	fi; \
	installed=" $$( { dpkg-query -W -f='$${Package} $${db:Status-Status}\n' $(APT_PACKAGES) 2>/dev/null || true; } \
	               | awk '$$2 == "installed" { printf "%s ", $$1 }')"; \
	missing=""; \
	for p in $(APT_PACKAGES); do \
	    case "$$installed" in *" $$p "*) ;; *) missing="$$missing $$p";; esac; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" -ne 0 ]; then \
	    echo "sysdeps: WARNING: missing Debian packages:$$missing"; \
	    echo "sysdeps: run 'sudo make sysdeps' (or: sudo apt-get install$$missing);"; \
	    echo "sysdeps: continuing, tests that need them will skip."; \
	    exit 0; \
	fi; \
	echo "sysdeps: installing missing Debian packages:$$missing"; \
	apt-get update -q; \
	apt-get install -y -q --no-install-recommends $$missing

daemons:
	@[ -n "$(strip $(DAEMON_PACKAGES))" ] || exit 0; \
	command -v dpkg-query >/dev/null 2>&1 || exit 0; \
	missing=""; \
	for p in $(DAEMON_PACKAGES); do \
	    dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed \
	        || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" -ne 0 ]; then \
	    echo "daemons: not root; missing:$$missing (their tests skip)"; exit 0; \
	fi; \
	echo "daemons: installing$$missing, held stopped by policy-rc.d"; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	fi; \
	{ apt-get install -y -q --no-install-recommends $$missing \
	  || { apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; }; } \
	  || echo "daemons: apt-get could not install them; their tests skip"

# A Debian 12 root file system (tarball) for the package and container tests,
# built once from apt's own mirror and cached.
ROOTFS ?= build/rootfs/bookworm.tar

rootfs: sysdeps
	packaging/rootfs.sh $(ROOTFS)

# --------------------------------------------------------------------------- Debian packages
# aeterna_VERSION-1_ARCH.deb and python3-aeterna-sdk_VERSION-1_all.deb, built
# with dh and pybuild from a copy of the tree (packaging/deb/build.sh).
DEB_DIR ?= build/deb

deb: sysdeps
	packaging/deb/build.sh $(DEB_DIR)

# lintian runs in `make test` too (tests/e2e/test_deb.py); piuparts only here:
# it installs, upgrades and purges in a fresh root of its own (minutes).
deb-check: deb rootfs
	lintian --fail-on warning $(DEB_DIR)/aeterna_*.deb $(DEB_DIR)/python3-aeterna-sdk_*.deb
	packaging/deb/piuparts.sh $(ROOTFS) $(DEB_DIR)

# The container image. Its build context is build/image: the Containerfile and
# dist/, which holds the Debian packages of the checkout (`make deb`). A base that
# is here is used as it is (podman: --pull=never; docker's builder has no
# "never", and pulls a base only when it is missing): the tests import
# build/rootfs/bookworm.tar as theirs.
BASE      ?= debian:bookworm-slim
IMAGE     ?= aeterna:latest
ENGINE    ?=
IMAGE_CTX := build/image

image: deb
	rm -rf $(IMAGE_CTX) && mkdir -p $(IMAGE_CTX)/dist
	cp $(DEB_DIR)/aeterna_*.deb $(DEB_DIR)/python3-aeterna-sdk_*_all.deb $(IMAGE_CTX)/dist/
	cp packaging/container/Containerfile $(IMAGE_CTX)/Containerfile
	@engine="$(ENGINE)"; \
	if [ -z "$$engine" ]; then \
	    if command -v docker >/dev/null 2>&1; then engine=docker; \
	    elif command -v podman >/dev/null 2>&1; then engine=podman; \
	    else echo "image: neither docker nor podman is installed"; exit 3; fi; \
	fi; \
	case "$$engine" in \
	    docker) pull="--pull=false"; export DOCKER_BUILDKIT=0;; \
	    *) pull="--pull=never --format=docker";; \
	esac; \
	echo "image: $$engine build $(IMAGE) from $(BASE)"; \
	$$engine build $$pull --network=host --build-arg BASE=$(BASE) -t $(IMAGE) \
	    -f $(IMAGE_CTX)/Containerfile $(IMAGE_CTX)

# --------------------------------------------------------------------------- virtualenv
# Debian's python3 has no ensurepip until python3-venv is installed.
$(VPY):
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory sysdeps APT_PACKAGES=python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

venv: $(VPY)

$(STAMP_RUN): pyproject.toml | $(VPY)
	$(PIP) install $(PIP_FLAGS) -e .
	@touch $@

# systemd-python compiles against libsystemd-dev; when that is missing (not
# root, not Debian) install the rest of the test extra without it.
$(STAMP_TEST): pyproject.toml sdk/python/pyproject.toml | sysdeps $(VPY)
	if ! $(PIP) install $(PIP_FLAGS) -e '.[test]'; then \
	    echo "WARNING: installing .[test] failed; retrying without systemd-python"; \
	    $(PIP) install $(PIP_FLAGS) -e . ; \
	    $(PIP) install $(PIP_FLAGS) $$($(VPY) -c '$(TEST_DEPS_NO_SYSTEMD)'); \
	fi
	$(PIP) install $(PIP_FLAGS) -e sdk/python
	@touch $@ $(STAMP_RUN)

# --------------------------------------------------------------------------- targets
DEMO_CONTROL ?= /tmp/aeterna-demo.sock

demo: $(STAMP_RUN)
	@echo "demo: starting Aeterna on units/ (Ctrl-C stops everything)"
	@echo "demo: try   curl http://127.0.0.1:8080/   (a socket-activated web app)"
	@echo "demo: and   curl -d '{\"session\":\"s1\",\"message\":\"hi\"}' http://127.0.0.1:8081/chat"
	@echo "demo:       (the SRP agent; relay it with: $(VENV)/bin/aeterna --control $(DEMO_CONTROL) reload agent)"
	@echo "demo: and   $(VENV)/bin/aeterna --control $(DEMO_CONTROL) status"
	@echo "demo: and   curl http://127.0.0.1:9090/metrics   (Prometheus; also /healthz, /readyz)"
	@exec $(VENV)/bin/aeterna --control $(DEMO_CONTROL) start -c units/

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check aeterna sdk tests bench examples packaging
	$(VENV)/bin/mypy aeterna sdk/python/aeterna_sdk
	$(VENV)/bin/lint-imports --no-cache

# pytest exits 5 when it collects no test; that is not a failure of the build.
test: sysdeps daemons lint
	@rc=0; $(VENV)/bin/pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; \
	exit $$rc

# Each writes its section of docs/benchmarks.md (the other bench/*.py are their helpers).
BENCHES ?= footprint notify activation relay srp scale

bench: sysdeps $(STAMP_TEST)
	@for b in $(BENCHES); do \
	    echo "== bench/$$b.py"; \
	    $(VPY) "bench/$$b.py"; \
	done

clean:
	rm -rf $(VENV) build dist *.egg-info sdk/python/*.egg-info sdk/python/build \
	       .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
