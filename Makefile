# Hatchway — build, demo and test on Debian 12 (as root).
#   make demo   build and install the .deb, start everything, log in over SSH
#   make test   build and install the .deb, run the unit and end-to-end tests
#   make deb    just the package: dist/hatchway_<version>_all.deb

VERSION := $(shell sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
DEB     := dist/hatchway_$(VERSION)_all.deb
PYTHON  := /usr/bin/python3
# One end-to-end stack per machine (fixed ports, the installed package, one
# /etc/hatchway): `make test` holds this lock from install to the last test.
LOCK    := flock /run/lock/hatchway-e2e.lock

.PHONY: deps deb install demo test unit e2e lint clean

deps:
	tests/setup/deps

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

e2e:
	$(PYTHON) -m pytest -q -rfE tests/e2e $(PYTEST_ARGS)

test: deb
	$(LOCK) $(MAKE) --no-print-directory install unit e2e

clean:
	rm -rf dist build .pybuild *.egg-info
