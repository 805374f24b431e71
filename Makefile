# Hatchway — build, demo and test on Debian 12 (as root).
#   make demo   build and install the .deb, start everything, log in over SSH
#   make test   lint, build the .deb (its build runs the unit tests, once), run
#               the packaging tests, install it, run the end-to-end tests and the
#               backend contract suite (make contract)
#   make lint   pyflakes, imports pointing one way, no comment citing a file that is not here
#   make deb    just the package: dist/hatchway_<version>_all.deb
#   make package-test   the .deb in clean Debian 12/13 roots and under systemd
#   make soak   mixed load with faults on the installed stack; prints figures
#   make contract       every backend (Docker, the real Kubernetes cluster)
#                       against one contract, through the Backend interface

VERSION := $(shell sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
DEB     := dist/hatchway_$(VERSION)_all.deb
PYTHON  := /usr/bin/python3
# One end-to-end stack per machine (fixed ports, the installed package, one
# /etc/hatchway): `make test` holds this lock from install to the last test.
# -o: daemons a command leaves running (e.g. `make demo`'s) must not inherit it.
LOCK    := flock -o /run/lock/hatchway-e2e.lock
# The .deb in throwaway roots (cached in /var/cache/hatchway-test), never on
# this host, so without the lock.
PACKAGE_TEST := $(PYTHON) -m pytest -q -rfE tests/package $(PACKAGE_TEST_ARGS)

.PHONY: soak fuzz deps lint deb install demo test unit e2e contract package-test bench clean

# Everything Python of ours, the extensionless entry points included.
LINTED := hatchway tests keyhelper/hatchway-keys shim/hatchway-shell shim/hatchwayd packaging/bin/hatchway

deps:
	tests/setup/deps

lint: deps
	pyflakes3 $(LINTED)
	$(PYTHON) tests/lint/cited_paths.py
	$(PYTHON) tests/lint/layers.py

deb: deps
	tests/setup/build-deb

install: deb
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall \
	  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold ./$(DEB) >/dev/null
	@echo "installed $(DEB)"

demo: install
	tests/setup/demo

unit:
	$(PYTHON) -m pytest -q tests/unit

# The fuzz tests with fresh random seeds and many more examples than the
# test run's fixed 150 (FUZZ=N); not part of `make test`.
FUZZ ?= 3000
fuzz:
	HATCHWAY_FUZZ_EXAMPLES=$(FUZZ) $(PYTHON) -m pytest -q tests/unit/test_fuzz.py

E2E ?= tests/e2e
e2e:
	$(PYTHON) -m pytest -q -rfExX $(E2E) $(PYTEST_ARGS)

# The backend contract suite: the work tree's backends against dockerd and a
# real Kubernetes cluster built from Debian's packages (tests/setup/k8s-cluster;
# ~12 min the first time on a machine, cached after).  It uses neither the
# installed package nor the stack's ports, so it needs no e2e lock; the
# cluster's own lock is taken by the suite.
CONTRACT := tests/contract
contract:
	$(PYTHON) -m pytest -q -rfExX $(CONTRACT) $(PYTEST_ARGS)

package-test: deb
	$(PACKAGE_TEST)

# The unit tests run inside the package build (pybuild, debian/rules), so
# first and once; `make unit` runs them alone from the work tree.  The
# contract suite runs in the e2e tests' pytest session: a session brings the
# cluster up once (~20 s) for every suite in it, and the e2e Kubernetes tests
# need it too.  That holds the e2e lock a few minutes longer than the
# contract suite alone needs.
test: lint deb
	$(PACKAGE_TEST)
	$(LOCK) $(MAKE) --no-print-directory install e2e E2E="tests/e2e $(CONTRACT)"

# Benchmarks print ratios against floors measured in the same run; see tests/bench/run.py.
bench: deb
	$(LOCK) sh -c '$(MAKE) --no-print-directory install && tests/setup/services && $(PYTHON) -m tests.bench.run $(BENCH_ARGS)'

# Sustained mixed load with faults injected on the installed stack, then
# figures; non-zero exit if a session failed without a clear line, a transfer
# was not byte-exact or anything was left behind (tests/soak/soak.py; not part
# of `make test`).  SOAK_ARGS="--sessions 200 --concurrency 20 --max-time 900".
soak: deb
	$(LOCK) sh -c '$(MAKE) --no-print-directory install && tests/setup/services && $(PYTHON) -m tests.soak.soak $(SOAK_ARGS)'

clean:
	rm -rf dist build .pybuild *.egg-info
