# totpd — build, test, demo and install.
#
#   make demo    install what the demo needs, then run a real daemon (SQLite),
#                enroll an account with its QR code, and log in through real PAM
#   make test    install what the tests need, then run the whole suite (and part of it
#                again on Debian's own python3-* packages: make check-debian)
#   make         build the PAM module

PYTHON      ?= python3
VENV        ?= .venv
VPY          = $(VENV)/bin/python
PYTEST_ARGS ?=
# Debian's interpreter with Debian's python3-* packages (and this tree on sys.path):
# the oldest dependency versions setup.cfg allows, the ones the .deb runs on.
DEBIAN_VENV ?= .venv-debian
DVPY         = $(DEBIAN_VENV)/bin/python
# What runs on them: the daemon, totpctl (and its PSKC decryption), D-Bus, logins through real libpam, and the
# daemon under the unit's sandbox (MemoryDenyWriteExecute with Debian's compiled modules).
DEBIAN_TESTS ?= tests/test_otp.py tests/test_protocol.py tests/test_config.py tests/test_sealing.py tests/test_daemon.py tests/test_enrollment_tools.py tests/test_import.py tests/test_pskc.py \
                tests/test_login.py tests/test_enrollment.py tests/test_judging.py tests/test_admin.py tests/test_recovery_codes.py \
                tests/test_handling.py tests/test_bulk_import.py tests/pam/test_pam_daemon.py tests/dbus tests/test_systemd.py

# What `make demo` runs (tests/demo.py): the PAM module's build, a venv with totpd's own
# dependencies (pip takes them from PyPI as wheels), a daemon on SQLite, libpam.
DEMO_APT_PACKAGES = build-essential libpam0g-dev python3 python3-venv
# What `make test` runs besides: sshd, sudo and pam_wrapper logins, zbarimg and oathtool
# against enrollment, faketime (a daemon with a wrong clock), the PAM peers, PostgreSQL, systemd, D-Bus, packaging and man pages.
TEST_APT_PACKAGES = $(DEMO_APT_PACKAGES) libpam-wrapper python3-dev \
               openssh-server openssh-client openssl sudo zbar-tools oathtool faketime util-linux \
               libpam-google-authenticator libpam-oath postgresql systemd \
               dbus dbus-daemon dbus-bin libglib2.0-bin libdbus-1-dev libglib2.0-dev pkg-config \
               debhelper dpkg-dev python3-pip scdoc man-db groff-base clang libclang-rt-dev \
               dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel lintian mmdebstrap \
               python3-pyotp python3-segno python3-argon2 python3-cryptography python3-dbus-fast \
               python3-psycopg python3-psycopg-pool python3-pytest python3-dbusmock python3-hypothesis python3-aiosmtpd

.PHONY: all pam deps deps-apt deps-python deps-demo deps-apt-demo deps-python-demo demo test check check-debian clean bench

all: pam

pam:
	$(MAKE) -C pam

# -- dependencies: deps-demo for `make demo`, deps (a superset) for `make test` -------
# $(call apt-install,PACKAGES): install those of PACKAGES that are missing (as root).
apt-install = @missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "run as root (or: sudo make $@) to install: $$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deps-apt-demo:
	$(call apt-install,$(DEMO_APT_PACKAGES))

deps-apt:
	$(call apt-install,$(TEST_APT_PACKAGES))

# totpd and its dependencies (all the demo needs), then the test extras on top.
$(VENV)/.installed-demo: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-demo
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

# No pip here: everything comes from Debian; a .pth file puts this tree on sys.path.
$(DEBIAN_VENV)/.installed:
	/usr/bin/python3 -m venv --system-site-packages --without-pip $(DEBIAN_VENV)
	echo '$(CURDIR)' > "$$($(DVPY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/totpd-source.pth"
	touch $@

deps-python-demo: $(VENV)/.installed-demo

deps-python: $(VENV)/.installed $(DEBIAN_VENV)/.installed

deps-demo: deps-apt-demo deps-python-demo

deps: deps-apt deps-python

# -- the two commands of README.md ------------------------------------------------
demo: deps-demo pam
	$(VPY) tests/demo.py

test: deps pam
	$(VPY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory check-debian

check: pam
	$(VPY) -m pytest $(PYTEST_ARGS)

check-debian: pam $(DEBIAN_VENV)/.installed
	$(DVPY) tests/debian_python.py
	$(DVPY) -m pytest $(DEBIAN_TESTS)

# -- make bench: PAM modules side by side, the daemon alone, scale (docs/performance.md) --
BENCH_TOOLS = bench/loadgen bench/pamdrive bench/logsink
BENCH_ARGS ?=

bench/loadgen bench/logsink: bench/%: bench/%.c
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

bench/pamdrive: bench/pamdrive.c
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $< -lpam

bench: deps pam $(BENCH_TOOLS)
	$(VPY) bench/bench.py $(BENCH_ARGS)

# make man / install / uninstall / deb: packaging/install.mk
include packaging/install.mk

clean:
	$(MAKE) -C pam clean
	rm -rf build dist *.egg-info .pytest_cache
	rm -f $(MAN_PAGES)
	rm -f $(BENCH_TOOLS)
