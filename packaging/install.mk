# make man / install / uninstall / deb — included by the top-level Makefile.
#
#   make install [DESTDIR=/stage] [PREFIX=/usr/local]   files only, plus (DESTDIR empty,
#                                                       as root) the totpd user and dirs
#   make uninstall [DESTDIR=...] [PREFIX=...]           the same files; keeps /etc/totpd
#                                                       and /var/lib/totpd (secrets)
#   make deb                                            dist/totpd_VERSION_ARCH.deb
#
# `make install` puts the Python part into a private tree, $(LIBDIR)/site, never into
# the system Python (Debian marks it externally managed): pip installs totpd and its
# dependencies there with the system interpreter, so compiled wheels match it, and
# two small wrappers in $(BINDIR) run `/usr/bin/python3 -ISB` with that tree first on
# sys.path. A venv would hard-code its own path and cannot be staged in DESTDIR.
# The Debian package instead takes totpd's dependencies from Debian's python3-*
# packages (packaging/debian/rules: pybuild, then install-files with PY_SITE empty).
# docs/operations.md ("Installing") explains both.

PREFIX        ?= /usr/local
BINDIR        ?= $(PREFIX)/bin
LIBDIR        ?= $(PREFIX)/lib/totpd
MANDIR        ?= $(PREFIX)/share/man
DOCDIR        ?= $(PREFIX)/share/doc/totpd
SYSCONFDIR    ?= /etc
UNITDIR       ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR   ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR   ?= $(PREFIX)/lib/tmpfiles.d
# dbus-daemon, polkit and pam-auth-update read only these, whatever PREFIX is.
DBUSDIR       ?= /usr/share/dbus-1
POLKITDIR     ?= /usr/share/polkit-1/actions
PAMCONFIGDIR  ?= /usr/share/pam-configs
# The interpreter the wrappers run; the vendored wheels are built for its version.
SYSTEM_PYTHON ?= /usr/bin/python3
# The private tree the wrappers put first on sys.path; empty: the system's own
# site-packages (the Debian package), and the wrappers run python3 -I instead of -ISB.
PY_SITE       ?= $(LIBDIR)/site
# Extras vendored into the private tree: postgres = fleet mode (psycopg, libpq inside).
PY_EXTRAS     ?= postgres

MAN_PAGES := docs/man/totpd.8 docs/man/totpctl.8 docs/man/pam_totpd.8 docs/man/totpd.conf.5

.PHONY: man install install-files install-python uninstall deb

man: $(MAN_PAGES)

docs/man/%: docs/man/%.scd
	scdoc < $< > $@.tmp && mv $@.tmp $@

install: install-python install-files
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" -eq 0 ]; then \
	  $(LIBDIR)/setup-system "$(SYSUSERSDIR)/totpd.conf" "$(SYSCONFDIR)"; \
	else \
	  echo "staged: on the target, run $(LIBDIR)/setup-system (user totpd, /var/lib/totpd) as root"; \
	fi

install-files: pam man
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
	  $(DESTDIR)$(DBUSDIR)/system.d $(DESTDIR)$(DBUSDIR)/system-services $(DESTDIR)$(DBUSDIR)/interfaces \
	  $(DESTDIR)$(POLKITDIR) $(DESTDIR)$(PAMCONFIGDIR) \
	  $(DESTDIR)$(DOCDIR)/examples/pam.d $(DESTDIR)$(DOCDIR)/examples/ssh $(DESTDIR)$(DOCDIR)/examples/systemd
	for tool in totpd:totpd.daemon totpctl:totpd.cli; do \
	  sed -e 's|@PYTHON@|$(SYSTEM_PYTHON)|' -e "s|@MODULE@|$${tool#*:}|" \
	    $(if $(PY_SITE),-e 's|@FLAGS@|-ISB|' -e 's|@SITE@|$(PY_SITE)|',-e 's|@FLAGS@|-I|' -e '/@SITE@/d') \
	    packaging/wrapper.in > $(DESTDIR)$(BINDIR)/$${tool%%:*}.tmp; \
	  chmod 0755 $(DESTDIR)$(BINDIR)/$${tool%%:*}.tmp; \
	  mv $(DESTDIR)$(BINDIR)/$${tool%%:*}.tmp $(DESTDIR)$(BINDIR)/$${tool%%:*}; \
	done
	$(MAKE) -C pam install DESTDIR=$(DESTDIR) $(if $(PAMDIR),PAMDIR=$(PAMDIR))
	sed -e 's|/usr/bin/totpd|$(BINDIR)/totpd|' -e 's|/usr/share/doc/totpd|$(DOCDIR)|' \
	  packaging/systemd/totpd.service > $(DESTDIR)$(UNITDIR)/totpd.service
	sed -e 's|/usr/share/doc/totpd|$(DOCDIR)|' packaging/systemd/totpd.socket > $(DESTDIR)$(UNITDIR)/totpd.socket
	chmod 0644 $(DESTDIR)$(UNITDIR)/totpd.service $(DESTDIR)$(UNITDIR)/totpd.socket
	install -m 0755 packaging/setup-system.sh $(DESTDIR)$(LIBDIR)/setup-system
	install -m 0644 packaging/sysusers.d/totpd.conf $(DESTDIR)$(SYSUSERSDIR)/totpd.conf
	install -m 0644 packaging/tmpfiles.d/totpd.conf $(DESTDIR)$(TMPFILESDIR)/totpd.conf
	install -m 0644 packaging/dbus/org.totpd.Totpd1.conf $(DESTDIR)$(DBUSDIR)/system.d/org.totpd.Totpd1.conf
	install -m 0644 packaging/dbus/org.totpd.Totpd1.service $(DESTDIR)$(DBUSDIR)/system-services/org.totpd.Totpd1.service
	install -m 0644 packaging/dbus/org.totpd.Totpd1.xml $(DESTDIR)$(DBUSDIR)/interfaces/org.totpd.Totpd1.xml
	install -m 0644 packaging/polkit/org.totpd.policy $(DESTDIR)$(POLKITDIR)/org.totpd.policy
	install -m 0644 packaging/pam-configs/totpd $(DESTDIR)$(PAMCONFIGDIR)/totpd
	install -m 0644 docs/man/totpd.conf.5 $(DESTDIR)$(MANDIR)/man5/totpd.conf.5
	install -m 0644 docs/man/totpd.8 docs/man/totpctl.8 docs/man/pam_totpd.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 README.md docs/*.md $(DESTDIR)$(DOCDIR)/
	install -m 0644 packaging/pam.d/sshd packaging/pam.d/sudo $(DESTDIR)$(DOCDIR)/examples/pam.d/
	install -m 0644 packaging/ssh/totpd.conf $(DESTDIR)$(DOCDIR)/examples/ssh/totpd.conf
	install -m 0644 packaging/systemd/totpd-network.conf $(DESTDIR)$(DOCDIR)/examples/systemd/totpd-network.conf
	install -m 0644 packaging/systemd/totpd-grace.conf $(DESTDIR)$(DOCDIR)/examples/systemd/totpd-grace.conf
	# The configuration is the admin's: never overwrite one that is there.
	install -d -m 0750 $(DESTDIR)$(SYSCONFDIR)/totpd
	[ -e $(DESTDIR)$(SYSCONFDIR)/totpd/totpd.conf ] || \
	  install -m 0640 packaging/totpd.conf $(DESTDIR)$(SYSCONFDIR)/totpd/totpd.conf

# setuptools builds in ./build: clear it first, or a module deleted from the tree
# would linger there and be installed again.
install-python:
	@[ -n "$(PY_SITE)" ] || { echo "install-python: PY_SITE is empty; it names the private tree to install into" >&2; exit 1; }
	rm -rf --one-file-system $(DESTDIR)$(PY_SITE) build/lib build/bdist.*
	$(SYSTEM_PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
	  --no-compile --no-warn-script-location --target $(DESTDIR)$(PY_SITE) '.[$(PY_EXTRAS)]'
	rm -rf --one-file-system $(DESTDIR)$(PY_SITE)/bin
	# Byte-code checked by hash, not mtime: valid wherever the tree lands, and the
	# wrappers' -B means nothing ever writes a stray .pyc below $(LIBDIR).
	$(SYSTEM_PYTHON) -m compileall -q -j 0 --invalidation-mode unchecked-hash -d $(PY_SITE) $(DESTDIR)$(PY_SITE)

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/totpd $(DESTDIR)$(BINDIR)/totpctl
	rm -rf --one-file-system $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DOCDIR)
	$(MAKE) -C pam uninstall DESTDIR=$(DESTDIR) $(if $(PAMDIR),PAMDIR=$(PAMDIR))
	rm -f $(DESTDIR)$(UNITDIR)/totpd.service $(DESTDIR)$(UNITDIR)/totpd.socket \
	  $(DESTDIR)$(SYSUSERSDIR)/totpd.conf $(DESTDIR)$(TMPFILESDIR)/totpd.conf \
	  $(DESTDIR)$(DBUSDIR)/system.d/org.totpd.Totpd1.conf \
	  $(DESTDIR)$(DBUSDIR)/system-services/org.totpd.Totpd1.service \
	  $(DESTDIR)$(DBUSDIR)/interfaces/org.totpd.Totpd1.xml \
	  $(DESTDIR)$(POLKITDIR)/org.totpd.policy $(DESTDIR)$(PAMCONFIGDIR)/totpd \
	  $(DESTDIR)$(MANDIR)/man5/totpd.conf.5 $(DESTDIR)$(MANDIR)/man8/totpd.8 \
	  $(DESTDIR)$(MANDIR)/man8/totpctl.8 $(DESTDIR)$(MANDIR)/man8/pam_totpd.8
	@echo "kept $(SYSCONFDIR)/totpd and /var/lib/totpd (configuration, database, master key) and the user totpd"

# -- the Debian package -------------------------------------------------------------
# dpkg-buildpackage wants debian/ at the source root: stage a copy of the tree (files
# git tracks or would track) with packaging/debian as debian/, build there, and keep
# the .deb in $(DEB_DIST) (dist/). Every build dependency is a Debian package
# (packaging/debian/control): as root, make deb installs those dpkg-checkbuilddeps
# finds missing, with apt, as make test does for the tests.
DEB_STAGE ?= build/deb
DEB_DIST  ?= dist

deb:
	rm -rf --one-file-system $(DEB_STAGE)
	mkdir -p $(DEB_STAGE)/totpd $(DEB_DIST)
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(DEB_STAGE)/totpd
	rm -rf $(DEB_STAGE)/totpd/debian && cp -r packaging/debian $(DEB_STAGE)/totpd/debian
	@missing=$$(cd $(DEB_STAGE)/totpd && dpkg-checkbuilddeps 2>&1 | sed -n 's/.*[Uu]nmet build dependencies: //p' | sed 's/([^)]*)//g'); \
	if [ -n "$$missing" ]; then \
	  echo "installing the build dependencies: $$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "run as root (or: sudo make $@) to install: $$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	# pybuild runs whichever python3.X is first on PATH: make it Debian's, not a pyenv's or venv's.
	cd $(DEB_STAGE)/totpd && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc
	mv $(DEB_STAGE)/*.deb $(DEB_STAGE)/*.buildinfo $(DEB_STAGE)/*.changes $(DEB_DIST)/
	@ls $(DEB_DIST)/*.deb
