# Sanitizer build of the C fast path (issue 2).
#
#   make asan        copy the sources to build/asan/ and build vpn._fast there with
#                    VPN_SANITIZE=1 (AddressSanitizer + UBSan, -fno-sanitize-recover),
#                    leaving the normal in-place build of the worktree alone.
#   make test-asan   run the ESP and framing tests against that build. Debian's Python
#                    is not built with ASan, so libasan is preloaded and leak checking
#                    is off (CPython's own allocations would drown the report);
#                    PYTHONMALLOC=malloc puts cffi buffers under ASan's redzones.
#
# PYTHON must have the test extras (cffi, cryptography, pytest, hypothesis, scapy);
# it defaults to .venv/bin/python (scripts/setup.sh) and else python3, e.g.
#   make test-asan PYTHON=/work/venvs/esp/bin/python

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
ASAN_DIR := build/asan
ASAN_TESTS ?= tests/esp tests/test_framing.py tests/test_fastpath.py tests/test_outq.py tests/test_dataplane.py \
              tests/test_dataplane_routes.py tests/io/test_offload.py tests/io/test_endpoint.py
LIBASAN = $(shell gcc -print-file-name=libasan.so)

.PHONY: asan test-asan clean-asan

asan:
	rm -rf $(ASAN_DIR)
	mkdir -p $(ASAN_DIR)
	cp -r csrc vpn tests pyproject.toml setup.py $(ASAN_DIR)/
	find $(ASAN_DIR) \( -name '_fast*.so' -o -name '_fast.c' -o -name __pycache__ \) -prune -exec rm -rf {} +
	cd $(ASAN_DIR) && VPN_SANITIZE=1 $(abspath $(PYTHON)) csrc/build_ffi.py >build.log 2>&1 \
	  || { tail -30 build.log; exit 1; }
	@ls $(ASAN_DIR)/vpn/_fast*.so

test-asan: asan
	cd $(ASAN_DIR) && PYTHONPATH=. $(abspath $(PYTHON)) -c \
	  'import vpn, sys; sys.exit(0 if vpn.__file__.startswith("$(abspath $(ASAN_DIR))") else "vpn not from the ASan tree")'
	cd $(ASAN_DIR) && LD_PRELOAD=$(LIBASAN) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 PYTHONMALLOC=malloc \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=. \
	  $(abspath $(PYTHON)) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)

clean-asan:
	rm -rf $(ASAN_DIR)
