# sigil: one Makefile. `make`, `make test`, `make check`, `make bench`, `make demo`.
PKG_CONFIG ?= pkg-config
PKGS       := grpc gpr libprotobuf-c libuv openssl sqlite3 jansson libcurl
CC         ?= cc
PYTHON     ?= /usr/bin/python3
BUILD      ?= build

WARN    := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
           -Wvla -Wundef
OPT     ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -MMD -MP -I. -I$(BUILD)/gen \
           $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
# http-parser ships no pkg-config file.
LDLIBS  += $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null) -lhttp_parser -lpthread
GENFLAGS := -std=c11 $(OPT) -Wall -Werror -Wno-missing-braces -I$(BUILD)/gen $(shell $(PKG_CONFIG) --cflags libprotobuf-c 2>/dev/null)

ifeq ($(V),1)
Q :=
else
Q := @
endif

PROTOS    := proto/spiffe/workload.proto proto/sigil/node/v1/node.proto proto/sigil/admin/v1/admin.proto \
             proto/grpc/health/v1/health.proto proto/sigil/agent/v1/status.proto
STRUCT    := /usr/include/google/protobuf/struct.proto
GEN_C     := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS)) $(BUILD)/gen/google/protobuf/struct.pb-c.c
GEN_H     := $(GEN_C:.c=.h)

# Agent-side attestors live in libsigil; server halves need the datastore and
# are linked only into sigil-server.
SERVER_ATTEST := attestors/registry_server.c $(wildcard attestors/node/*_server.c)
COMMON_SRC := $(wildcard common/*.c) \
              $(filter-out $(SERVER_ATTEST),$(wildcard attestors/*.c) $(wildcard attestors/*/*.c))
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c)) $(SERVER_ATTEST)
AGENT_SRC  := $(filter-out agent/main.c,$(wildcard agent/*.c))
UNIT_SRC   := test/runner.c $(wildcard test/unit/*/*.c)
BENCH_SRC  := $(wildcard bench/*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
GEN_OBJ    := $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(GEN_C))
COMMON_OBJ := $(call obj,$(COMMON_SRC)) $(GEN_OBJ)
SERVER_OBJ := $(call obj,$(SERVER_SRC))
AGENT_OBJ  := $(call obj,$(AGENT_SRC))
UNIT_OBJ   := $(call obj,$(UNIT_SRC))

LIBSIGIL   := $(BUILD)/libsigil.a
LIBSERVER  := $(BUILD)/libsigil_server.a
LIBAGENT   := $(BUILD)/libsigil_agent.a
BINS       := $(BUILD)/bin/sigil-server $(BUILD)/bin/sigil-agent
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bin/%,$(BENCH_SRC))

# Generated sources are kept, not treated as intermediates.
.SECONDARY:

.PHONY: all deps test unit integration check bench demo fuzz lint format clean
all: $(BINS)

# Installs whatever is missing from Debian's archive (needs root or sudo).
deps:
	$(Q)./scripts/deps.sh

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	@echo "  PROTOC  $<"
	$(Q)protoc-c -Iproto -I/usr/include --c_out=$(BUILD)/gen $<

$(BUILD)/gen/google/protobuf/struct.pb-c.c $(BUILD)/gen/google/protobuf/struct.pb-c.h: $(STRUCT)
	@mkdir -p $(BUILD)/gen
	@echo "  PROTOC  $<"
	$(Q)protoc-c -I/usr/include --c_out=$(BUILD)/gen $<

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(GEN_H)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(GENFLAGS) -c -o $@ $<

$(BUILD)/obj/%.o: %.c $(GEN_H)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(LIBSIGIL): $(COMMON_OBJ)
$(LIBSERVER): $(SERVER_OBJ)
$(LIBAGENT): $(AGENT_OBJ)
$(LIBSIGIL) $(LIBSERVER) $(LIBAGENT):
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/sigil-server: $(call obj,server/main.c) $(LIBSERVER) $(LIBSIGIL)
$(BUILD)/bin/sigil-agent: $(call obj,agent/main.c) $(LIBAGENT) $(LIBSIGIL)
$(BUILD)/bin/unit-tests: $(UNIT_OBJ) $(LIBSERVER) $(LIBAGENT) $(LIBSIGIL)
$(BENCH_BINS): $(BUILD)/bin/%: $(BUILD)/obj/bench/%.o $(LIBSERVER) $(LIBAGENT) $(LIBSIGIL)
$(BINS) $(BUILD)/bin/unit-tests $(BENCH_BINS):
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(filter %.o %.a,$^) $(LDLIBS)

# Python message classes for the integration tests (grpcio calls go through
# channel.unary_stream, so only protoc --python_out is needed).
PYGEN := $(BUILD)/py
$(PYGEN)/.stamp: $(PROTOS)
	@mkdir -p $(PYGEN)
	$(Q)protoc -Iproto --python_out=$(PYGEN) $(PROTOS) && touch $@

unit: $(BUILD)/bin/unit-tests
	$(BUILD)/bin/unit-tests

integration: $(BINS) $(PYGEN)/.stamp
	SIGIL_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -x test/integration

test: unit integration

# ASan + UBSan build in its own tree so objects with different flags never mix.
check:
	$(MAKE) BUILD=build/asan OPT="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	    LDFLAGS="-fsanitize=address,undefined" test

bench: $(BINS) $(BENCH_BINS) $(PYGEN)/.stamp
	./bench/run.sh $(abspath $(BUILD))

demo: deps all
	./scripts/demo.sh $(abspath $(BUILD))

# libFuzzer targets, each built from only the sources it needs, then run briefly.
FUZZ_SECONDS ?= 30
FUZZ_CC      := clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -I.
FUZZ_LIBS    := $(shell $(PKG_CONFIG) --libs openssl jansson 2>/dev/null)
FUZZ_hcl      := common/hcl.c common/err.c
FUZZ_spiffeid := common/spiffeid.c common/err.c
FUZZ_x509     := common/x509.c common/spiffeid.c common/err.c common/log.c
FUZZ_config   := common/config.c common/hcl.c common/strparse.c common/spiffeid.c common/key.c \
                 common/fsutil.c common/log.c common/err.c common/jwt.c common/bundle.c common/x509.c
FUZZ_bundle   := common/bundle.c common/x509.c common/spiffeid.c common/err.c common/log.c
FUZZ_jwt      := common/jwt.c $(FUZZ_bundle) common/key.c common/fsutil.c
FUZZERS := hcl spiffeid x509 config bundle jwt
fuzz:
	@mkdir -p $(BUILD)/fuzz
	@set -e; for f in $(FUZZERS); do \
	    case $$f in hcl) src="$(FUZZ_hcl)";; spiffeid) src="$(FUZZ_spiffeid)";; \
	        x509) src="$(FUZZ_x509)";; config) src="$(FUZZ_config)";; \
	        bundle) src="$(FUZZ_bundle)";; jwt) src="$(FUZZ_jwt)";; esac; \
	    echo "  FUZZ    $$f ($(FUZZ_SECONDS)s)"; \
	    $(FUZZ_CC) -o $(BUILD)/fuzz/fuzz_$$f test/fuzz/fuzz_$$f.c $$src $(FUZZ_LIBS) -lgpr; \
	    mkdir -p $(BUILD)/fuzz/corpus_$$f; \
	    $(BUILD)/fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 $(BUILD)/fuzz/corpus_$$f \
	        $$( [ -d test/fuzz/corpus/$$f ] && echo test/fuzz/corpus/$$f ) 2>&1 | tail -n 1; \
	done

SRC_ALL := $(shell find common server agent attestors test bench -name '*.[ch]' 2>/dev/null)
lint:
	clang-format --dry-run --Werror $(SRC_ALL)
	@! grep -nE '\b(strcpy|strcat|sprintf|vsprintf|gets|atoi|atol|strtok|sscanf)\(' $(SRC_ALL) || \
	    (echo "banned function used" && false)

format:
	clang-format -i $(SRC_ALL)

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
