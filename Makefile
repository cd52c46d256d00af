# ddlock — the two commands users need: `make demo` and `make test`.
PYTHON ?= python3
PYVERSIONS ?= 3.9 3.10 3.11 3.12 3.13
PYTEST_ARGS ?=
export PYTHONDONTWRITEBYTECODE = 1
# the pure-C units (no Python.h): profile, pprof, the exporter
PURE_C := ext/profile.c ext/pprof.c ext/export_util.c ext/writer.c ext/event.c ext/upload.c ext/export.c

.PHONY: all deps build proto test test-c test-py test-all test-portable test-cpython test-libraries sanitize demo bench \
        format lint check-layers clean sdist wheel test-sdist test-wheel

all: build

deps:
	@scripts/deps.sh

proto: ext/proto/profile.pb-c.c
# regenerated when the .proto is newer and protoc-c exists; a clean clone
# may leave the committed sources older than the .proto by checkout order
ext/proto/profile.pb-c.c: ext/proto/profile.proto
	@if command -v protoc-c >/dev/null 2>&1; then \
	    echo "cd ext/proto && protoc-c --c_out=. profile.proto"; \
	    cd ext/proto && protoc-c --c_out=. profile.proto; \
	elif [ -f ext/proto/profile.pb-c.h ]; then touch $@ ext/proto/profile.pb-c.h; \
	else echo "protoc-c not found and ext/proto/profile.pb-c.c missing: make deps installs protobuf-c-compiler" >&2; exit 1; fi

build: proto
	@$(PYTHON) setup.py -q build_ext --inplace --build-temp build/tmp-$$($(PYTHON) -c 'import sys;print("%d.%d"%sys.version_info[:2])') 2>&1 | grep -v -E '^(running|copying|creating)' || true
	@$(PYTHON) -c 'import ddlock._ddlock' 

test-c: proto
	$(MAKE) -C tests/c

test-py: build
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test: deps build test-c test-py

# The pytest suite on every CPython found under pyenv (3.9–3.13): each
# interpreter gets its own in-place extension (version-tagged .so) and build dir.
test-all: deps proto
	@scripts/test_all.sh $(PYVERSIONS)

# The pytest suite on the portable build (public C API only: what CPython
# versions ddlock was not tested on get) on every CPython 3.9-3.13.
test-portable: deps proto
	@scripts/test_portable.sh $(PYVERSIONS)

# CPython's own suites (threading, thread, queue, asyncio locks, logging,
# concurrent.futures) under python -m ddlock.run at 100% capture on every
# CPython 3.9-3.13; a case failing under ddlock but not natively fails it.
test-cpython: deps proto
	@scripts/test_cpython.sh $(PYVERSIONS)

# Real libraries' own tests under python -m ddlock.run, judged against
# native: dill's suite, gevent's test__monkey_logging, a trio.run smoke test,
# and urllib3's connection-pool tests (its trio-based dummy server; the
# pinned sdist and its test dependencies in build/urllib3-venv-X.Y, judged
# per case) (PYVERSIONS, default 3.11 3.13).
test-libraries: deps proto
	@scripts/test_libraries.sh $(PYVERSIONS)

# ASan/UBSan build of the extension running the whole pytest suite, and the
# Check suite under valgrind memcheck.
sanitize: deps build
	@scripts/sanitize.sh

# dist/ddlock-<version>.tar.gz: builds with a C compiler, the Python headers
# and the protobuf-c, libcurl and zlib development packages (no protoc-c):
# it carries the generated protobuf-c sources and the tests.
sdist: deps proto
	@rm -f dist/ddlock-*.tar.gz && mkdir -p build
	@$(PYTHON) -m build --sdist --outdir dist . > build/sdist.log 2>&1 \
	  || { cat build/sdist.log; echo "sdist: failed (build/sdist.log)"; exit 1; }
	@echo "sdist: $$(ls dist/ddlock-*.tar.gz) ($$(du -k dist/ddlock-*.tar.gz | cut -f1) KiB)"

# dist/*manylinux*.whl for each CPython in PYVERSIONS, repaired by auditwheel
# (protobuf-c, libcurl, zlib and what they link vendored in ddlock.libs/).
wheel: deps proto
	@scripts/wheel.sh $(PYVERSIONS)

# Install the artifact into a fresh venv per CPython in PYVERSIONS and test it
# there, outside the source tree (scripts/test_installed.sh): smoke test,
# mypy against the installed package, the pytest suite. The sdist is built
# without protoc-c on PATH. INSTALLED_ARGS=--smoke-only skips the suite.
test-wheel: wheel
	@scripts/test_installed.sh wheel $(INSTALLED_ARGS) $(PYVERSIONS)

test-sdist: sdist
	@scripts/test_installed.sh sdist $(INSTALLED_ARGS) $(PYVERSIONS)

demo: deps build
	@if [ -x scripts/run_rlock_production_stress_test.sh ]; then \
	  scripts/run_rlock_production_stress_test.sh 30 4 --yes; \
	else echo "make demo: not yet (the production stress test lands with its issue)"; fi

bench: deps build
	$(PYTHON) benchmarks/run.py

format:
	clang-format -i ext/*.c ext/*.h tests/c/*.c

lint: check-layers
	clang-format --dry-run --Werror ext/*.c ext/*.h tests/c/*.c
	$(PYTHON) -m mypy
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability \
	  --suppress=missingIncludeSystem -I ext $(PURE_C)

# No cycle among C units (who references whose symbols, by nm): every unit
# of the extension (docs/ARCHITECTURE.md); e.g. CHECK_LAYERS_ARGS="--units
# $(PURE_C)" for the pure-C ones, or "--objdir build/tmp-3.11/ext" for
# objects already built.
CHECK_LAYERS_ARGS ?= --units ext/*.c ext/proto/profile.pb-c.c
check-layers: proto
	$(PYTHON) scripts/check_c_layers.py $(CHECK_LAYERS_ARGS)

clean:
	rm -rf build dist ddlock.egg-info ddlock/*.so ext/proto/*.pb-c.* tests/c/build tests/c/build-san
