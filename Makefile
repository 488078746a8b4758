# gopasst: build, test, benchmark.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Debian packages the tests use as real peers: the kernel in a network
# namespace is the guest, busybox provides udhcpc, ping and nslookup,
# dhclient is its DHCPv6 client (busybox-static has none), QEMU boots a
# real guest with a Debian kernel, qemu-user runs the package tests as a
# big-endian s390x machine, tcpdump reads the --pcap capture, uidmap
# (newuidmap) lets rootlesskit map a subordinate ID range for pasta,
# libcap2-bin's setcap gives a copy of gopasst a file capability.
TEST_DEBS := iproute2 busybox-static qemu-system-x86 linux-image-amd64 cpio iperf3 passt isc-dhcp-client qemu-user-static tcpdump uidmap libcap2-bin

.PHONY: all build test test-bigendian test-arm64 test-32bit deps fuzz fuzz-targets bench lint clean install uninstall install-libvirt uninstall-libvirt install-pasta uninstall-pasta man

all: build

# A position-independent executable where Go links one without a C
# toolchain; on 386 and 32-bit arm it cannot, and the build is Go's
# default executable.
PIE := $(if $(filter 386 arm,$(shell $(GO) env GOARCH)),,-buildmode=pie)
BIN ?= gopasst

build:
	CGO_ENABLED=0 $(GO) build $(PIE) -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/gopasst

# libvirt 11 and QEMU with stream reconnect come from bookworm-backports,
# from the Debian mirror already configured.
BACKPORTS_DEBS := libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86

# deps installs the test packages (tests/deps.sh); quick when present.
deps:
	tests/deps.sh --backports $(BACKPORTS_DEBS)
	tests/deps.sh $(TEST_DEBS)

# test is what CI runs: vet, unit and end-to-end tests, then each fuzz
# target briefly from its checked-in corpus. The fuzz budget is a count,
# not a time: a timed run can end in a spurious "context deadline
# exceeded" when an input is still running at the deadline.
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 25m ./...
	GOPASST_CGO=1 $(GO) test -count=1 -timeout 10m -run '^(TestSandbox|TestDHCPLease|TestTCPTransfer)$$' ./tests
	$(MAKE) test-bigendian
	$(MAKE) test-arm64
	$(MAKE) test-32bit
	$(MAKE) fuzz FUZZTIME=50000x

# test-bigendian runs the package tests again as s390x under qemu-user,
# against this kernel: header views and socket addresses must not depend
# on byte order, and qemu-user, having no SO_PEEK_OFF, also exercises the
# path for kernels before 6.9.
test-bigendian:
	GOARCH=s390x $(GO) test -count=1 -exec qemu-s390x-static ./pkg/...

# test-arm64 runs the qemusock tests again as arm64 under qemu-user, on a
# CPU without LSE2 (cortex-a72), where an atomic load or store must be
# aligned: vhost-user loads the rings' indexes atomically from guest
# memory, where the front-end chose their alignment.
test-arm64:
	GOARCH=arm64 QEMU_CPU=cortex-a72 $(GO) test -count=1 -exec qemu-aarch64-static ./pkg/qemusock/...

# test-32bit runs the package and command tests again as 386, natively
# on x86-64, where int is 32 bits wide: a length a peer sends must be
# checked before it becomes an int. The qemusock tests run again as
# 32-bit arm under qemu-user, whose stores of guest memory are a byte at
# a time; and make build must build there.
test-32bit:
	GOARCH=386 CGO_ENABLED=0 $(GO) test -count=1 ./pkg/... ./cmd/...
	GOARCH=arm CGO_ENABLED=0 $(GO) test -count=1 -exec qemu-arm-static ./pkg/qemusock/...
	GOARCH=arm $(MAKE) --no-print-directory build BIN=/dev/null

# fuzz runs every fuzz target from its corpus for FUZZTIME, inside a
# network namespace of its own whose one interface is loopback: FuzzFlows
# opens host sockets wherever a fuzzed frame points, and from there
# nothing leaves the machine. Without namespaces (no root and no user
# namespaces) the targets run here and FuzzFlows skips.
FUZZTIME ?= 30s
fuzz:
	@if unshare -rn true 2>/dev/null; then \
		unshare -rn sh -c 'ip link set lo up && exec $(MAKE) --no-print-directory fuzz-targets FUZZTIME=$(FUZZTIME)'; \
	else \
		$(MAKE) --no-print-directory fuzz-targets FUZZTIME=$(FUZZTIME); \
	fi

fuzz-targets:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# bench compares gopasst with passt (PASST=path), slirp4netns and gvproxy on the test
# harness (never part of make test); gvproxy is installed with go install
# into tests/.cache/bin. Rounds alternate between backends, each first in
# turn; results go to bench/. GOPASST_BENCH_ROUNDS (default 5) and
# GOPASST_BENCH_ONLY=gopasst,passt narrow a run.
BENCH_DEBS := slirp4netns librsvg2-bin

# PASST is the passt to beat: by default upstream passt (2026-03, with
# vhost-user), built from the tarball in ../shared/peers into the test
# cache. The report names it by its own --version.
PASST ?= $(shell ../shared/peers/build-passt.sh $(CURDIR)/tests/.cache/passt)

bench: deps
	tests/deps.sh $(BENCH_DEBS)
	PASST="$(PASST)" GOPASST_BENCH=1 $(GO) test -count=1 -timeout 60m -run '^TestBench(QEMU|Migrate|Pasta)?$$' -v ./tests | grep -v '^=== '
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

lint:
	gofmt -l . | tee /dev/stderr | (! read)
	$(GO) vet ./...
	staticcheck ./...

# The manual page is written from the command line's own model (gopasst
# man); cmd/gopasst's TestManPage keeps the committed gopasst.1 current.
man: build
	./gopasst man > gopasst.1

install: build
	install -D -m 0755 gopasst $(DESTDIR)$(PREFIX)/bin/gopasst
	install -D -m 0644 gopasst.1 $(DESTDIR)$(PREFIX)/share/man/man1/gopasst.1
	ln -sf gopasst $(DESTDIR)$(PREFIX)/bin/pasta

# uninstall takes back what install made (run uninstall-libvirt and
# uninstall-pasta first if you ran their install).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/gopasst $(DESTDIR)$(PREFIX)/share/man/man1/gopasst.1
	[ "$$(readlink $(DESTDIR)$(PREFIX)/bin/pasta)" != gopasst ] || rm -f $(DESTDIR)$(PREFIX)/bin/pasta

# install-libvirt makes libvirt's passt backend run gopasst: Debian's
# /usr/bin/passt is diverted aside and replaced by a link to gopasst.
# Debian's /usr/bin/pasta is a link to passt, so pasta runs gopasst too.
# DESTDIR, if set, is the root whose dpkg database and /usr/bin change.
DIVERT = dpkg-divert $(if $(DESTDIR),--root=$(DESTDIR))

# divert(NAME) sets Debian's /usr/bin/NAME aside and links gopasst there;
# undivert(NAME) undoes it, and only it: without the diversion it leaves
# /usr/bin/NAME, which is then Debian's own, alone.
define divert
	$(DIVERT) --local --rename --divert /usr/bin/$(1).distrib --add /usr/bin/$(1)
	ln -sf $(PREFIX)/bin/gopasst $(DESTDIR)/usr/bin/$(1)
endef
define undivert
	@if [ "$$($(DIVERT) --truename /usr/bin/$(1))" = /usr/bin/$(1).distrib ]; then \
		rm -f $(DESTDIR)/usr/bin/$(1) && $(DIVERT) --local --rename --divert /usr/bin/$(1).distrib --remove /usr/bin/$(1); \
	else \
		echo "/usr/bin/$(1) is not diverted (make install-$(2)): left alone"; \
	fi
endef

install-libvirt: install
	$(call divert,passt)

uninstall-libvirt:
	$(call undivert,passt,libvirt)

# install-pasta makes podman and rootlesskit, which run /usr/bin/pasta,
# run gopasst: Debian's pasta is diverted aside as passt's is above.
install-pasta: install
	$(call divert,pasta)

uninstall-pasta:
	$(call undivert,pasta,pasta)

clean:
	rm -f gopasst
