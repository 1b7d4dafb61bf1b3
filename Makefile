# Installing multiwan on a router from source (the lab and the tests need no install: see
# README). On Debian, prefer the package: ./scripts/deb.
SHELL := /bin/bash
PREFIX ?= /usr/local
# A static musl binary where rustup can add the target, else the host's (scripts/deps.sh).
TRIPLE := $(shell . scripts/deps.sh && release_target)
BIN := target/$(TRIPLE)/release/multiwan

.PHONY: build install uninstall

build:
	cargo build --release --locked --target $(TRIPLE) -p multiwan

install: build
	install -Dm755 $(BIN) $(DESTDIR)$(PREFIX)/bin/multiwan
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/usr/bin/multiwan|$(PREFIX)/bin/multiwan|g' contrib/multiwan.service > $(DESTDIR)/etc/systemd/system/multiwan.service
	install -d $(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)/usr/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(BIN) manpage > $(DESTDIR)$(PREFIX)/share/man/man8/multiwan.8
	$(BIN) completions bash > $(DESTDIR)/usr/share/bash-completion/completions/multiwan
	$(BIN) completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_multiwan
	$(BIN) completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/multiwan.fish
	install -d -m755 $(DESTDIR)/etc/multiwan
	test -e $(DESTDIR)/etc/multiwan/multiwan.toml || install -m644 examples/seed-003-connmark-round-robin.toml $(DESTDIR)/etc/multiwan/multiwan.toml.example

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/multiwan $(DESTDIR)/etc/systemd/system/multiwan.service \
		$(DESTDIR)$(PREFIX)/share/man/man8/multiwan.8 \
		$(DESTDIR)/usr/share/bash-completion/completions/multiwan \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_multiwan \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/multiwan.fish
