# Two commands on a fresh Debian/Ubuntu machine, as root:
#   make run    install what is missing, then run the agent on the default rules
#   make test   install what is missing (test tools too), then the whole test suite

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# bcc comes from Debian (python3-bpfcc): the venv must see the system site-packages of the
# system interpreter, not whatever `python3` is first on PATH.
SYSTEM_PYTHON := /usr/bin/python3

RUN_DEBS := python3-bpfcc bpfcc-tools bpftool python3-venv python3-pip
# (Debian's `loki` is a genetics tool, not Grafana Loki: the Loki output is tested against
# the push/query API served by the test harness.)
TEST_DEBS := tmux rsyslog rsyslog-gnutls rsyslog-relp openssl iproute2 gcc libc6-dev \
             dpkg-dev fakeroot systemd debootstrap logrotate util-linux valgrind
PYTEST_ARGS ?=

.PHONY: run test deps-run deps-test venv bench lsm-test deb container-test clean

run: deps-run venv
	$(VENV)/bin/sentinel run

# The LSM guest run (~85 s) is part of it: the BPF LSM programs cannot load on every host.
test: deps-test venv
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) lsm-test

# Installs only the Debian packages that are missing, so a second run costs nothing.
deps-run:
	@./scripts/apt-ensure $(RUN_DEBS)

deps-test: deps-run
	@./scripts/apt-ensure $(TEST_DEBS)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c 'import bcc, sentinel' 
	touch $@

bench: deps-test venv
	$(PY) -m benchmarks.run_all

# The BPF LSM programs, for real: a guest kernel with the BPF LSM (Debian's, under QEMU;
# the first run downloads it and qemu through apt) runs tests/lsm against this checkout,
# which the guest sees read-only at the same path. ~45-65 s once set up.
# The guest's /lib/modules is a tmpfs whose entry points into the host's work directory,
# which the guest does not see: point `build` and `source` at the Debian headers (host /usr/src).
LSM_GUEST_HEADERS := r=$$(uname -r) && rm -f /lib/modules/$$r && mkdir -p /lib/modules/$$r && ln -s /usr/src/linux-headers-$$r /lib/modules/$$r/build && ln -s /usr/src/linux-headers-$${r%-amd64}-common /lib/modules/$$r/source
# The whole sensor's compile takes 2-4 min there (measured 185-245 s on a busy host): the guest
# gets 20 min, and stacks are printed for a test stuck past 7 min.
lsm-test: venv
	VMLSM_TIMEOUT=$${VMLSM_TIMEOUT:-1200} ./tests/lsm/lsm_vm.sh 'cd $(CURDIR) && $(LSM_GUEST_HEADERS) && PYTHONDONTWRITEBYTECODE=1 SENTINEL_BTF_CACHE_DIR=/run/sentinel-btf $(CURDIR)/$(PY) -m pytest -p no:cacheprovider -o faulthandler_timeout=420 --basetemp=/run/sentinel-lsm-tests tests/lsm -v -rs'

# dist/sentinel_<version>_<arch>.deb: dpkg-deb over a staging root, the Python
# dependencies bundled in /usr/lib/sentinel/venv (see packaging/deb/build.sh)
deb: deps-run
	./packaging/deb/build.sh

# The image of packaging/container/Containerfile built as a debootstrap root (no container
# engine needed), the .deb installed in it, its entrypoint run in a chroot
container-test: deps-test venv
	$(PY) -m pytest tests/packaging/test_container.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
