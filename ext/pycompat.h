/* Every CPython-version-specific branch of ddlock lives here (3.9–3.13).
 * Everything else calls these helpers and never tests PY_VERSION_HEX. */
#ifndef DDLOCK_PYCOMPAT_H
#define DDLOCK_PYCOMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <pythread.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x03090000
#error "ddlock needs CPython 3.9 or newer"
#endif

/* ---- frames ------------------------------------------------------------ */

/* Byte offset of the frame's last instruction (what PyCode_Addr2Line takes),
 * -1 when unknown. */
static inline int
ddl_frame_lasti(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#elif PY_VERSION_HEX >= 0x030A0000
    /* 3.10 counts code units */
    return f->f_lasti < 0 ? -1 : f->f_lasti * (int)sizeof(_Py_CODEUNIT);
#else
    return f->f_lasti;
#endif
}

/* Walking the running Python frames for a sampled stack, without making
 * frame objects. On 3.11+ PyEval_GetFrame()/PyFrame_GetBack() wrap each
 * interpreter frame record in a new frame object the first time it is
 * asked for -- for a sampled acquire, the short-lived frame of the method
 * that sampled it, every time -- so the walk reads the records themselves
 * (the interpreter's internal layout, which is why this lives here), as
 * PyFrame_GetBack does: incomplete frames (still starting, or the C-stack
 * shims of 3.12+) are skipped. Before 3.11 every frame is an object and the
 * walk follows f_back. Everything returned is borrowed: valid while the
 * caller does not return to the interpreter (frames below the current one
 * cannot finish meanwhile, whatever a finalizer run from here does). */
#if PY_VERSION_HEX >= 0x030B0000
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#define DDL_DEFINED_PY_BUILD_CORE
#endif
#include <internal/pycore_frame.h>
#ifdef DDL_DEFINED_PY_BUILD_CORE
#undef Py_BUILD_CORE
#undef DDL_DEFINED_PY_BUILD_CORE
#endif
typedef _PyInterpreterFrame ddl_walk_frame;

static inline ddl_walk_frame *
ddl_walk_complete(ddl_walk_frame *f)
{
    while (f != NULL && (
#if PY_VERSION_HEX >= 0x030C0000
                            f->owner == FRAME_OWNED_BY_CSTACK ||
#endif
#if PY_VERSION_HEX >= 0x030D0000
                            !PyCode_Check(f->f_executable) ||
#endif
                            _PyFrame_IsIncomplete(f))) {
        f = f->previous;
    }
    return f;
}

/* The innermost complete frame of the running thread, or NULL. */
static inline ddl_walk_frame *
ddl_walk_top(void)
{
    PyThreadState *ts = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    return ddl_walk_complete(ts->current_frame);
#else
    return ddl_walk_complete(ts->cframe->current_frame);
#endif
}

static inline ddl_walk_frame *
ddl_walk_back(ddl_walk_frame *f)
{
    return ddl_walk_complete(f->previous);
}

static inline PyCodeObject *
ddl_walk_code(ddl_walk_frame *f)
{
#if PY_VERSION_HEX >= 0x030D0000
    return (PyCodeObject *)f->f_executable;
#else
    return f->f_code;
#endif
}

/* What PyFrame_GetLasti() would say: a byte offset, -1 when unknown. */
static inline int
ddl_walk_lasti(ddl_walk_frame *f)
{
    int lasti = _PyInterpreterFrame_LASTI(f);
    return lasti < 0 ? -1 : lasti * (int)sizeof(_Py_CODEUNIT);
}
#else
typedef PyFrameObject ddl_walk_frame;

static inline ddl_walk_frame *
ddl_walk_top(void)
{
    return PyEval_GetFrame();
}

static inline ddl_walk_frame *
ddl_walk_back(ddl_walk_frame *f)
{
    return f->f_back;
}

static inline PyCodeObject *
ddl_walk_code(ddl_walk_frame *f)
{
    return f->f_code;
}

static inline int
ddl_walk_lasti(ddl_walk_frame *f)
{
    return ddl_frame_lasti(f);
}
#endif

/* Borrowed globals of a frame. */
static inline PyObject *
ddl_frame_globals_borrowed(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *g = PyFrame_GetGlobals(f); /* new ref; frame keeps it alive */
    Py_XDECREF(g);
    return g;
#else
    return f->f_globals;
#endif
}

/* New reference to a mapping of the frame's locals (cells and free variables
 * included) -- a dict (maybe a subclass: read it with PyDict_Next only) or,
 * on 3.13+, an optimized frame's read-only FrameLocalsProxy -- when getting
 * it cannot run user code; NULL otherwise (an exception may be set).
 *
 * A module, class body or exec() frame is not "optimized": its locals are
 * the namespace itself, which __prepare__ or exec() may have made a user
 * mapping. Before 3.13 reading an optimized frame's locals refreshes its
 * f_locals snapshot (a dict CPython made) with PyObject_SetItem/DelItem;
 * the same refresh on a namespace would call the mapping's methods. */
static inline PyObject *
ddl_frame_locals(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *m = PyFrame_GetLocals(f); /* no refresh on 3.13 */
    if (m != NULL && !PyDict_Check(m) && !PyFrameLocalsProxy_Check(m)) {
        Py_CLEAR(m);
    }
    return m;
#elif PY_VERSION_HEX >= 0x030B0000
    /* the namespace is reachable only through the refresh: allow it when
     * there is nothing to refresh (no cell or free variable, e.g. a class
     * body with a __class__ cell is skipped) */
    PyCodeObject *co = PyFrame_GetCode(f);
    int safe = (co->co_flags & CO_OPTIMIZED) || co->co_nlocalsplus == 0;
    Py_DECREF(co);
    if (!safe) {
        return NULL;
    }
    PyObject *m = PyFrame_GetLocals(f);
    if (m != NULL && !PyDict_Check(m)) {
        Py_CLEAR(m);
    }
    return m;
#else
    if (!(f->f_code->co_flags & CO_OPTIMIZED)) {
        PyObject *ns = f->f_locals;
        if (ns == NULL || !PyDict_Check(ns)) {
            return NULL;
        }
        Py_INCREF(ns);
        return ns;
    }
    if (PyFrame_FastToLocalsWithError(f) < 0) {
        return NULL;
    }
    if (f->f_locals == NULL) {
        return PyDict_New();
    }
    Py_INCREF(f->f_locals);
    return f->f_locals;
#endif
}

/* Borrowed function name of a code object: co_qualname on 3.11+. */
static inline PyObject *
ddl_code_name(PyCodeObject *co)
{
#if PY_VERSION_HEX >= 0x030B0000
    return co->co_qualname;
#else
    return co->co_name;
#endif
}

/* New reference to the tuple of a code object's free variable names. */
static inline PyObject *
ddl_code_freevars(PyCodeObject *co)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyCode_GetFreevars(co);
#else
    Py_XINCREF(co->co_freevars);
    return co->co_freevars;
#endif
}

/* The free variable of the __init__ that dataclasses generates (compiled
 * from a "<string>") when a field has a default_factory. */
#if PY_VERSION_HEX >= 0x030C0000
#define DDL_DATACLASS_FACTORY_FREEVAR "__dataclass_HAS_DEFAULT_FACTORY__"
#else
#define DDL_DATACLASS_FACTORY_FREEVAR "_HAS_DEFAULT_FACTORY"
#endif

/* ---- strings ----------------------------------------------------------- */

/* The UTF-8 form of a compact ASCII str is its own data: a view of it
 * without a call (what PyUnicode_AsUTF8AndSize returns for it). NULL for
 * any other str. */
static inline const char *
ddl_unicode_ascii_view(PyObject *s, Py_ssize_t *len)
{
    if (!PyUnicode_IS_COMPACT_ASCII(s)) {
        return NULL;
    }
    *len = PyUnicode_GET_LENGTH(s);
    return (const char *)PyUnicode_DATA(s);
}

/* ---- type introspection without running user code ---------------------- */

/* New reference to a type's own __dict__ (NULL when it has none). */
static inline PyObject *
ddl_type_dict(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyType_GetDict(tp);
#else
    Py_XINCREF(tp->tp_dict);
    return tp->tp_dict;
#endif
}

/* Borrowed reference to what tp's MRO binds to name (NULL if nothing),
 * read from the type dicts: no descriptor, __getattr__ or metaclass code
 * runs, and no exception is left set. */
static inline PyObject *
ddl_type_lookup(PyTypeObject *tp, PyObject *name)
{
    return _PyType_Lookup(tp, name);
}

/* Does the instance have a real per-instance dict slot? */
static inline int
ddl_type_has_instance_dict(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    if (tp->tp_flags & Py_TPFLAGS_MANAGED_DICT) {
        return 1;
    }
#endif
    return tp->tp_dictoffset != 0;
}

/* Member slot types that hold a PyObject*. */
static inline int
ddl_member_is_object(int type)
{
#if PY_VERSION_HEX >= 0x030C0000
    return type == Py_T_OBJECT_EX || type == _Py_T_OBJECT;
#else
    return type == T_OBJECT_EX || type == T_OBJECT;
#endif
}

/* Set an attribute that belongs to the profiler on an instance (the
 * `_ddl_hold` of a profiled primitive): an instance value, never through a
 * user's __setattr__. Before 3.11 that is a store into the instance dict
 * (what the generic setattr ends with, without its type lookup); from 3.11
 * the generic setattr keeps inline values as they are (reaching for the
 * dict would make one). */
static inline int
ddl_set_instance_attr(PyObject *obj, PyObject *name, PyObject *value)
{
#if PY_VERSION_HEX < 0x030B0000
    PyObject **dictptr = _PyObject_GetDictPtr(obj);
    if (dictptr != NULL && *dictptr != NULL && PyDict_CheckExact(*dictptr)) {
        return PyDict_SetItem(*dictptr, name, value);
    }
#endif
    return PyObject_GenericSetAttr(obj, name, value);
}

/* ---- GC pause while the profiler allocates ------------------------------ */

/* Returns whether the collector was enabled (to pass to ddl_gc_resume). On
 * 3.9 there is no C API to pause it; the re-entrancy guard covers that case.
 */
static inline int
ddl_gc_pause(void)
{
#if PY_VERSION_HEX >= 0x030A0000
    return PyGC_Disable();
#else
    return 0;
#endif
}

static inline void
ddl_gc_resume(int was_enabled)
{
#if PY_VERSION_HEX >= 0x030A0000
    if (was_enabled) {
        PyGC_Enable();
    }
#else
    (void)was_enabled;
#endif
}

/* ---- lock argument errors: the exact messages of each version ------------
 */

static inline void
ddl_err_unexpected_keyword(const char *fname, PyObject *kw)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyErr_Format(PyExc_TypeError,
                 "%s() got an unexpected keyword argument '%U'", fname, kw);
#else
    PyErr_Format(PyExc_TypeError,
                 "'%U' is an invalid keyword argument for %s()", kw, fname);
#endif
}

#if PY_VERSION_HEX >= 0x030D0000
#define DDL_MSG_TIMEOUT_NEGATIVE "timeout value must be a non-negative number"
#define DDL_MSG_TIME_T_TOO_LARGE "timestamp too large to convert to C PyTime_t"
#else
#define DDL_MSG_TIMEOUT_NEGATIVE "timeout value must be positive"
#define DDL_MSG_TIME_T_TOO_LARGE                                              \
    "timestamp too large to convert to C _PyTime_t"
#endif

#if PY_VERSION_HEX >= 0x030B0000
#define DDL_MSG_FLOAT_TOO_LARGE "timestamp out of range for platform time_t"
#define DDL_FLOAT_TIME_T_CHECK 1
#else
#define DDL_MSG_FLOAT_TOO_LARGE DDL_MSG_TIME_T_TOO_LARGE
#define DDL_FLOAT_TIME_T_CHECK 0
#endif

/* The longest timeout (µs) PyThread_acquire_lock_timed accepts. */
static inline long long
ddl_timeout_max_us(void)
{
    return (long long)PY_TIMEOUT_MAX;
}

/* ---- methods that exist on some versions only ----------------------------
 */

#define DDL_MAYBE_UNUSED __attribute__((unused))
/* asyncio.Semaphore of 3.9 also waits while _wakeup_scheduled is set. */
#if PY_VERSION_HEX < 0x030A0000
#define DDL_ASYNCIO_SEMAPHORE_WAKEUP_FLAG 1
#else
#define DDL_ASYNCIO_SEMAPHORE_WAKEUP_FLAG 0
#endif
/* RLock._recursion_count() exists from 3.11 on. */
#if PY_VERSION_HEX >= 0x030B0000
#define DDL_RLOCK_RECURSION_COUNT_METHOD(fn)                                  \
    {"_recursion_count", fn, METH_NOARGS, NULL},
#else
#define DDL_RLOCK_RECURSION_COUNT_METHOD(fn)
#endif

/* ---- misc -------------------------------------------------------------- */

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
ddl_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#define Py_NewRef(o) ddl_newref((PyObject *)(o))
static inline PyObject *
ddl_xnewref(PyObject *o)
{
    Py_XINCREF(o);
    return o;
}
#define Py_XNewRef(o) ddl_xnewref((PyObject *)(o))
#define Py_IsNone(o) ((o) == Py_None)
static inline int
PyModule_AddObjectRef(PyObject *mod, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(mod, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#define Py_TPFLAGS_IMMUTABLETYPE 0
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0
#endif

/* getattr without raising AttributeError: 1 found (*result a new
 * reference), 0 missing, -1 error (exception set). */
static inline int
ddl_getattr_optional(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    return _PyObject_LookupAttr(obj, name, result);
#endif
}

/* The referent of a weak reference, borrowed (NULL when dead); never
 * raises. Only for reading, with the GIL held and no Python code run while
 * the pointer is used: something else keeps a live referent alive. */
static inline PyObject *
ddl_weakref_peek(PyObject *ref)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(ref, &obj) < 0) {
        PyErr_Clear();
        return NULL;
    }
    Py_XDECREF(obj); /* still referenced elsewhere: it was alive */
    return obj;
#else
    PyObject *obj = PyWeakref_GetObject(ref);
    if (obj == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return obj == Py_None ? NULL : obj;
#endif
}

#if PY_VERSION_HEX >= 0x030C0000
#define DDL_MEMBER_OFFSET_FLAG Py_READONLY
#else
#define DDL_MEMBER_OFFSET_FLAG READONLY
#endif

#endif /* DDLOCK_PYCOMPAT_H */
