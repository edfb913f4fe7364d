# mixd — build, test and run. `make` builds the optimized tools into build/rel;
# `make test` builds everything with ASan+UBSan into build/asan and runs every test.

MODE    ?= rel
BUILD   := build/$(MODE)
CC      ?= gcc
PYTHON  ?= /usr/bin/python3
FIXTURES ?= ../shared/fixtures
MODEL   ?= models/tiny-moe-q4_k_m.gguf

WARN    := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
# -ffp-contract=off: no fused multiply-adds behind our back; dequantization is bit-exact
# against ggml and results never depend on what the compiler chose to fuse.
VERSION := 0.1.0
BASE    := -std=gnu17 -D_GNU_SOURCE -DMIXD_VERSION=\"$(VERSION)\" -ffp-contract=off -g -iquote engine -iquote proto $(WARN)
ifeq ($(MODE),asan)
  OPT := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
else ifeq ($(MODE),tsan)
  OPT := -O1 -fsanitize=thread
else
  OPT := -O2
endif
CFLAGS  += $(BASE) $(OPT)
LDFLAGS += $(filter -fsanitize=%,$(OPT))
LDLIBS  += -lm -lpthread -lmsgpackc -lnuma

ENGINE_SRC := $(wildcard engine/*.c proto/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
ENGINE_LIB := $(BUILD)/libmixengine.a
CLIENT_SRC := $(wildcard client/*.c)
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/%.o)
DAEMON_SRC := $(wildcard daemon/*.c)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC   := $(wildcard tests/unit/test_*.c)

# Open MPI is optional: with it, mixd gains the cluster mode (`mpirun ... mixd --cluster`,
# docs/CLUSTER.md), the transport in cluster/. Found with pkg-config (ompi-c) unless MPI=0
# (build without it) or MPI=1 (require it) is given. The engine never sees MPI.
MPI ?= $(shell pkg-config --exists ompi-c 2>/dev/null && echo 1 || echo 0)
ifeq ($(MPI),1)
  ifneq ($(shell pkg-config --exists ompi-c 2>/dev/null && echo ok),ok)
    $(error MPI=1 but pkg-config finds no ompi-c: install libopenmpi-dev (make deps))
  endif
  CLUSTER_SRC := $(wildcard cluster/*.c)
  MPI_CFLAGS  := $(shell pkg-config --cflags ompi-c)
  MPI_LIBS    := $(shell pkg-config --libs ompi-c)
endif
CLUSTER_OBJ := $(CLUSTER_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all tools run test unit check-deps deps test-deps clean fuzz FORCE
all: $(BUILD)/mixctl $(BUILD)/mixd

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(ENGINE_LIB): $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

$(BUILD)/mixctl: $(CLIENT_OBJ) $(ENGINE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ -ledit $(LDLIBS)

$(BUILD)/mixd: $(DAEMON_OBJ) $(CLUSTER_OBJ) $(ENGINE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ -luv -lsystemd $(MPI_LIBS) $(LDLIBS)

# The daemon's objects are built with the cluster mode or without it: rebuilt when MPI changes.
$(BUILD)/mpi.flag: FORCE
	@mkdir -p $(BUILD); echo $(MPI) | cmp -s - $@ || echo $(MPI) >$@
$(DAEMON_OBJ): $(BUILD)/mpi.flag
ifeq ($(MPI),1)
$(DAEMON_OBJ): CFLAGS += -DMIXD_CLUSTER -iquote cluster
$(CLUSTER_OBJ): CFLAGS += $(MPI_CFLAGS) -iquote cluster
endif

$(BUILD)/tests/%: tests/unit/%.c $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -MF $@.d -Itests/unit -o $@ $< $(ENGINE_LIB) $(LDFLAGS) -lcmocka $(LDLIBS)

unit: $(UNIT_BIN)

# A program with deliberate defects: tests/sanitizers/test_exit_codes.sh shows that a
# sanitizer report changes the exit status (built with the sanitizer flags of MODE=asan).
$(BUILD)/tests/sanitizer_probe: tests/sanitizers/probe.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS)

# Debian packages every target needs (build, tests, fuzzing, helpers; Open MPI for the cluster
# mode and its test). `make test` also
# builds the Debian package and checks it with lintian: test-deps installs those tools.
DEPS := build-essential pkg-config clang libclang-rt-14-dev libuv1-dev libmsgpack-dev \
        libsystemd-dev libopenblas-dev libcmocka-dev libnuma-dev libedit-dev python3-numpy python3-msgpack \
        openmpi-bin libopenmpi-dev
deps:
	@missing=$$(for p in $(DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
test-deps: deps
	@$(MAKE) --no-print-directory deps DEPS="$(DEB_TOOLS) lintian"

models/tiny-moe-q4_k_m.gguf:
	@echo "default model missing: expected $@ in the repository" >&2; exit 1

# Start mixd on the default model (a private socket), stream a generation through mixctl, stop.
run: deps
	$(MAKE) MODE=rel all
	@sock=$$(mktemp -u "$${TMPDIR:-/tmp}/mixd-run-XXXXXX.sock"); \
	./build/rel/mixd --model $(MODEL) --socket "$$sock" & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	for i in $$(seq 100); do [ -S "$$sock" ] && break; sleep 0.1; done; \
	echo "--- mixctl generate (through mixd at $$sock) ---"; \
	./build/rel/mixctl generate --socket "$$sock" -n 64 --seed 42 "ROMEO: But soft, what light"; \
	echo

test: test-deps
	$(MAKE) MODE=asan all unit build/asan/tests/sanitizer_probe
	$(MAKE) MODE=tsan all build/tsan/tests/test_pool
	$(MAKE) MODE=rel all build/rel/tests/test_forward
	$(MAKE) -C tests/fuzz all
	FIXTURES=$(FIXTURES) PYTHON=$(PYTHON) bash tests/run.sh

fuzz:
	$(MAKE) -C tests/fuzz

clean:
	rm -rf build

-include $(ENGINE_OBJ:.o=.d) $(CLIENT_OBJ:.o=.d) $(DAEMON_OBJ:.o=.d) $(CLUSTER_OBJ:.o=.d) $(UNIT_BIN:=.d)

# ---------------------------------------------------------------- install, deb
# `make install` installs the optimized build (MODE=rel by default) with the systemd units,
# sysusers.d/tmpfiles.d entries, default configuration (kept if present), man pages and bash
# completion; DESTDIR stages it. `make deb` builds the Debian package into build/deb/ from a
# copy of the tree with packaging/debian as its debian/ (CHECK=1 also runs the CLI tests;
# DEB_KEEP_TREE=1 keeps that copy, built, in build/deb/mixd-VERSION/).
PREFIX        ?= /usr
BINDIR        ?= $(PREFIX)/bin
MANDIR        ?= $(PREFIX)/share/man
SYSCONFDIR    ?= /etc
UNITDIR       ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR   ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR   ?= $(PREFIX)/lib/tmpfiles.d
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
DEB_OUT       := build/deb
DEB_TREE      := $(DEB_OUT)/mixd-$(VERSION)
DEB_TOOLS     := dpkg-dev debhelper

.PHONY: install deb
install: $(BUILD)/mixctl $(BUILD)/mixd
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
	        $(DESTDIR)$(SYSCONFDIR)/mixd $(DESTDIR)$(COMPLETIONDIR) \
	        $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BUILD)/mixd $(BUILD)/mixctl $(DESTDIR)$(BINDIR)/
	sed 's|/usr/bin/mixd|$(BINDIR)/mixd|; s|/etc/mixd/|$(SYSCONFDIR)/mixd/|' systemd/mixd.service \
	        >$(DESTDIR)$(UNITDIR)/mixd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/mixd.service
	install -m 0644 systemd/mixd.socket $(DESTDIR)$(UNITDIR)/
	install -m 0644 systemd/sysusers.d/mixd.conf $(DESTDIR)$(SYSUSERSDIR)/mixd.conf
	install -m 0644 systemd/tmpfiles.d/mixd.conf $(DESTDIR)$(TMPFILESDIR)/mixd.conf
	[ -e $(DESTDIR)$(SYSCONFDIR)/mixd/mixd.conf ] || install -m 0644 packaging/mixd.conf $(DESTDIR)$(SYSCONFDIR)/mixd/mixd.conf
	install -m 0644 docs/man/mixctl.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 docs/man/mixd.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 docs/man/mixd.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 packaging/mixctl.bash-completion $(DESTDIR)$(COMPLETIONDIR)/mixctl

deb:
	@missing=$$(for p in $(DEB_TOOLS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	rm -rf $(DEB_OUT)
	mkdir -p $(DEB_TREE)
	tar -cf - --exclude=./build --exclude=./.git --exclude=./debian --exclude=__pycache__ . | tar -xf - -C $(DEB_TREE)
	cp -r packaging/debian $(DEB_TREE)/debian
	cd $(DEB_TREE) && DEB_BUILD_OPTIONS="$(if $(CHECK),,nocheck) $(DEB_BUILD_OPTIONS)" dpkg-buildpackage -b -us -uc
	$(if $(DEB_KEEP_TREE),,rm -rf $(DEB_TREE))
	@ls -1 $(DEB_OUT)/*.deb

# ---- benchmarks (docs/BENCH.md): `make bench`, or `make bench MODEL=file.gguf` for one model.
# Prints one JSON object (stdout) and a table (stderr); generated bench models are cached in
# $XDG_CACHE_HOME/mixd-bench (else ~/.cache/mixd-bench). BENCH_ARGS passes options to
# tools/bench/bench.py (e.g. BENCH_ARGS="--repeat 5 --no-daemon"). Side by side with llama.cpp:
# LLAMA_BENCH=/path/to/llama-bench (and LLAMA_QUANTIZE=/path/to/llama-quantize to bench files it
# quantized), binaries the user built; nothing of llama.cpp is built or fetched here.
BENCH_BIN := build/bench
.PHONY: bench
# Build output goes to stderr, so `make bench > report.json` keeps stdout pure JSON.
bench: deps
	@$(MAKE) --no-print-directory MODE=rel all >&2
	@mkdir -p $(BENCH_BIN)
	@echo "building $(BENCH_BIN)/membw $(BENCH_BIN)/sgemm" >&2
	@$(CC) -std=gnu17 -O2 -Wall -Wextra -Werror -pthread -o $(BENCH_BIN)/membw tools/bench/membw.c >&2
	@$(CC) -std=gnu17 -O2 -Wall -Wextra -Werror -o $(BENCH_BIN)/sgemm tools/bench/sgemm.c -lopenblas >&2
	@$(PYTHON) tools/bench/bench.py --bin build/rel --bench-bin $(BENCH_BIN) \
	  $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL)) \
	  $(if $(LLAMA_BENCH),--llama-bench $(LLAMA_BENCH)) $(if $(LLAMA_QUANTIZE),--llama-quantize $(LLAMA_QUANTIZE)) \
	  $(BENCH_ARGS)
