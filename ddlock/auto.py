"""``import ddlock.auto``: start profiling from the environment, as in
production, and export once more at interpreter exit.

A malformed variable never breaks the application: it is reported once as a
warning on the ``ddlock`` logger (and on stderr when logging is not
configured) and its default is used.
"""

import logging
import sys

from . import _config, _start_with, is_running, log


def _warn(msg):
    if logging.getLogger().handlers or log.handlers:
        log.warning("%s", msg)
    else:
        sys.stderr.write("ddlock: warning: %s\n" % msg)


def _auto_start():
    if is_running():
        return
    from . import _native

    try:
        main = _native().main_interpreter()
    except Exception:  # the extension cannot load here: nothing to profile
        main = False
    if not main:
        # a sub-interpreter (mod_wsgi, _testcapi.run_in_subinterp, ...)
        # inherits ddlock-run's sitecustomize: skipped, silently -- its
        # stderr is the program's
        log.debug("ddlock.auto: not the main interpreter: not profiled")
        return
    cfg = _config.from_env(strict=False)
    for w in cfg.warnings:
        _warn(w)
    try:
        _start_with(cfg)
    except Exception as exc:  # the application must keep running
        _warn("profiling not started: %s" % exc)


_auto_start()
