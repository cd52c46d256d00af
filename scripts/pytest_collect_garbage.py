"""pytest plugin for scripts/test_libraries.sh (``-p pytest_collect_garbage``
with scripts/ on PYTHONPATH, in urllib3's tests natively and under ddlock):
a full garbage collection at the end of every test's teardown.

An object leaked in a reference cycle, such as an unclosed socket whose
ResourceWarning is an error under urllib3's ``filterwarnings = error``, is
reported by the test during which the cyclic collector frees it. Left to the
automatic collections, that is whichever later test the next full one
happens to run in, a moment set by how many objects were allocated so far,
which differs between a native run and a run under ddlock (urllib3 2.8.0's
TARPIT tests, where a connect to 240.0.0.0 does not time out, leak their
socket: natively it was reported by a test ten tests later than under
ddlock). Collected here, the warning is reported by the leaking test's
teardown, or, when pytest still holds the socket there (the traceback of
the test's failure), by the setup of the next test: the same test both ways.
"""

import gc

import pytest


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    gc.collect()
