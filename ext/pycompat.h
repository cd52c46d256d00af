/* Every CPython-version-specific branch of ddlock lives here: the internal
 * paths of the tested minors (3.9-3.13, see DDL_INTERNAL below) and the
 * public-API path of every other version. Everything else calls these
 * helpers and never tests PY_VERSION_HEX. */
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

/* ---- which path: interpreter internals or the public API ---------------
 *
 * Interpreter internals (struct layouts of frames and locks, Py_BUILD_CORE
 * headers, private functions) are used only on the exact minor versions
 * they were tested on: 3.9, 3.10, 3.11, 3.12 and 3.13, each gate closed on
 * both sides. Every other CPython -- 3.14, 3.15 and later, which we cannot
 * run here -- compiles the portable path: the public (or PyUnstable_) C
 * API only. Building with DDLOCK_PORTABLE=1 (setup.py defines DDL_PORTABLE)
 * forces the portable path on a tested version, which is how it is tested.
 * DDL_INTERNAL_3X is 1 exactly when that minor's internals are compiled.
 */
#if !defined(DDL_PORTABLE) && PY_MAJOR_VERSION == 3 &&                        \
    PY_MINOR_VERSION >= 9 && PY_MINOR_VERSION <= 13
#define DDL_INTERNAL 1
#else
#define DDL_INTERNAL 0
#endif
#define DDL_INTERNAL_MINOR(m) (DDL_INTERNAL && PY_MINOR_VERSION == (m))
/* 3.11-3.13: the _PyInterpreterFrame records of pycore_frame.h */
#define DDL_INTERNAL_IFRAME                                                   \
    (DDL_INTERNAL_MINOR(11) || DDL_INTERNAL_MINOR(12) ||                      \
     DDL_INTERNAL_MINOR(13))
#define DDL_PATH_NAME (DDL_INTERNAL ? "internal" : "public")

/* ---- frames ------------------------------------------------------------ */

/* Walking the running Python frames (sampled stacks, creation sites, lock
 * names) without making frame objects where possible. On 3.11+
 * PyEval_GetFrame()/PyFrame_GetBack() wrap each interpreter frame record in
 * a new frame object the first time it is asked for -- for a sampled
 * acquire, the short-lived frame of the method that sampled it, every time
 * -- so on the internal path of 3.11-3.13 the walk reads the records
 * themselves, as PyFrame_GetBack does: incomplete frames (still starting,
 * or the C-stack shims of 3.12+) are skipped. Before 3.11 every frame is an
 * object and the walk follows f_back (a field of the public frame struct).
 * The portable path of 3.11+ walks frame objects with the public API.
 * Everything returned is borrowed: valid while the caller does not return
 * to the interpreter (frames below the current one cannot finish
 * meanwhile, whatever a finalizer run from here does; a frame object made
 * for a running frame is owned by that frame until it finishes). */
#if DDL_INTERNAL_IFRAME
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#define DDL_DEFINED_PY_BUILD_CORE
#endif
#include <internal/pycore_code.h> /* CO_FAST_CELL, CO_FAST_FREE */
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
#if PY_MINOR_VERSION >= 12
                            f->owner == FRAME_OWNED_BY_CSTACK ||
#endif
#if PY_MINOR_VERSION >= 13
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
#if PY_MINOR_VERSION >= 13
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
#if PY_MINOR_VERSION >= 13
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

static inline PyObject *
ddl_walk_globals(ddl_walk_frame *f)
{
    return f->f_globals;
}
#elif PY_VERSION_HEX >= 0x030B0000
/* portable, 3.11+: frame objects through the public API */
typedef PyFrameObject ddl_walk_frame;

static inline ddl_walk_frame *
ddl_walk_top(void)
{
    return PyEval_GetFrame();
}

static inline ddl_walk_frame *
ddl_walk_back(ddl_walk_frame *f)
{
    PyFrameObject *back = PyFrame_GetBack(f);
    Py_XDECREF(back); /* owned by its running frame */
    return back;
}

static inline PyCodeObject *
ddl_walk_code(ddl_walk_frame *f)
{
    PyCodeObject *co = PyFrame_GetCode(f);
    Py_DECREF(co); /* the running frame holds it */
    return co;
}

static inline int
ddl_walk_lasti(ddl_walk_frame *f)
{
    return PyFrame_GetLasti(f);
}

static inline PyObject *
ddl_walk_globals(ddl_walk_frame *f)
{
    PyObject *g = PyFrame_GetGlobals(f);
    Py_XDECREF(g); /* the running frame holds it */
    return g;
}
#else
/* 3.9 and 3.10: the public frame struct (cpython/frameobject.h) */
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
#if PY_VERSION_HEX >= 0x030A0000
    /* 3.10 counts code units */
    return f->f_lasti < 0 ? -1 : f->f_lasti * (int)sizeof(_Py_CODEUNIT);
#else
    return f->f_lasti;
#endif
}

static inline PyObject *
ddl_walk_globals(ddl_walk_frame *f)
{
    return f->f_globals;
}
#endif

/* Another thread's innermost complete frame (the GIL held: that thread
 * runs no Python code meanwhile), borrowed; NULL when it has none. */
static inline ddl_walk_frame *
ddl_walk_top_of(PyThreadState *ts)
{
#if DDL_INTERNAL_IFRAME
#if PY_MINOR_VERSION >= 13
    return ddl_walk_complete(ts->current_frame);
#else
    return ddl_walk_complete(ts->cframe->current_frame);
#endif
#else
    PyFrameObject *f = PyThreadState_GetFrame(ts);
    Py_XDECREF(f); /* owned by its running frame */
    return f;
#endif
}

/* The thread ident (threading.get_ident()) of a thread state. */
static inline unsigned long
ddl_thread_state_ident(PyThreadState *ts)
{
    return ts->thread_id;
}

/* The value of the first argument of a running frame of an optimized
 * code object (self of a method), borrowed; NULL when unbound or not
 * readable without changing anything (see ddl_walk_visit_locals). Compared
 * by identity only. */
static inline PyObject *
ddl_walk_first_arg(ddl_walk_frame *f)
{
    PyCodeObject *co = ddl_walk_code(f);
    if (!(co->co_flags & CO_OPTIMIZED) || co->co_argcount < 1) {
        return NULL;
    }
#if DDL_INTERNAL_IFRAME || PY_VERSION_HEX < 0x030B0000
#if DDL_INTERNAL_IFRAME
    PyObject *v = f->localsplus[0];
#else
    PyObject *v = f->f_localsplus[0];
#endif
    /* an argument a closure captures is a cell once the frame runs */
    if (v != NULL && PyCell_Check(v)) {
        v = PyCell_GET(v);
    }
    return v;
#elif PY_VERSION_HEX >= 0x030C0000
    PyObject *names = co->co_localsplusnames;
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) < 1) {
        return NULL;
    }
    PyObject *v = PyFrame_GetVar(f, PyTuple_GET_ITEM(names, 0));
    if (v == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_DECREF(v); /* the frame holds it */
    return v;
#else
    return NULL;
#endif
}

/* Visit the local variables of a running frame: visit(ctx, name, value)
 * for each bound one (borrowed; cells and free variables dereferenced),
 * until it returns non-zero, which is then returned. Returns 0 when all
 * were visited, DDL_LOCALS_UNREADABLE when the frame's variables cannot be
 * read this way. Never creates, refreshes or changes an object the program
 * can see: before 3.13 the locals() dict of an optimized frame is a
 * snapshot that PyFrame_GetLocals()/FastToLocals refresh in place -- the
 * very dict a program may hold -- so the variables are read from the
 * frame's own storage instead. A module, class body or exec() frame is not
 * "optimized": its locals are the namespace itself, read only when it is a
 * dict (walked with PyDict_Next: no __prepare__ or exec() mapping of the
 * user's runs). visit may not run Python code. */
#define DDL_LOCALS_UNREADABLE (-2)
typedef int (*ddl_local_visit)(void *ctx, PyObject *name, PyObject *value);

static inline int
ddl_visit_dict(PyObject *d, ddl_local_visit visit, void *ctx)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        int r = visit(ctx, k, v);
        if (r != 0) {
            return r;
        }
    }
    return 0;
}

static inline int
ddl_visit_slot(ddl_local_visit visit, void *ctx, PyObject *name,
               PyObject *value, int maybe_cell)
{
    if (value != NULL && maybe_cell && PyCell_Check(value)) {
        value = PyCell_GET(value);
    }
    if (value == NULL || name == NULL) {
        return 0;
    }
    return visit(ctx, name, value);
}

/* The namespace of a frame that is not "optimized" (a module, class body
 * or exec() frame: its locals are the namespace itself), borrowed; NULL
 * for an optimized frame, or when the namespace is not a dict (a user
 * mapping of __prepare__ or exec(): its methods are the user's code), or
 * cannot be had without changing it. */
static inline PyObject *
ddl_walk_namespace(ddl_walk_frame *f)
{
    PyCodeObject *co = ddl_walk_code(f);
    if (co->co_flags & CO_OPTIMIZED) {
        return NULL;
    }
#if DDL_INTERNAL_IFRAME || PY_VERSION_HEX < 0x030B0000
    PyObject *ns = f->f_locals;
#else
#if PY_VERSION_HEX < 0x030D0000
    /* before 3.13 getting the namespace also copies the frame's cells
     * into it (PyObject_SetItem: a user mapping's code, a change the
     * program sees): only when there is nothing to copy */
    if (co->co_nlocalsplus != 0) {
        return NULL;
    }
#endif
    PyObject *ns = PyFrame_GetLocals(f);
    if (ns == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_DECREF(ns); /* the frame holds its namespace */
#endif
    return ns != NULL && PyDict_Check(ns) ? ns : NULL;
}

static inline int
ddl_walk_visit_locals(ddl_walk_frame *f, ddl_local_visit visit, void *ctx)
{
    PyCodeObject *co = ddl_walk_code(f);
    if (!(co->co_flags & CO_OPTIMIZED)) {
        PyObject *ns = ddl_walk_namespace(f);
        return ns != NULL ? ddl_visit_dict(ns, visit, ctx)
                          : DDL_LOCALS_UNREADABLE;
    }
#if DDL_INTERNAL_IFRAME
    PyObject *names = co->co_localsplusnames;
    PyObject *kinds = co->co_localspluskinds;
    if (!PyTuple_Check(names) || !PyBytes_Check(kinds)) {
        return DDL_LOCALS_UNREADABLE;
    }
    Py_ssize_t n = co->co_nlocalsplus;
    if (PyTuple_GET_SIZE(names) < n || PyBytes_GET_SIZE(kinds) < n) {
        return DDL_LOCALS_UNREADABLE;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char kind = (unsigned char)PyBytes_AS_STRING(kinds)[i];
        int r = ddl_visit_slot(visit, ctx, PyTuple_GET_ITEM(names, i),
                               f->localsplus[i],
                               (kind & (CO_FAST_CELL | CO_FAST_FREE)) != 0);
        if (r != 0) {
            return r;
        }
    }
    return 0;
#elif PY_VERSION_HEX < 0x030B0000
    /* 3.9/3.10: fast locals, then cells, then free variables, in
     * f_localsplus (the public frame struct) */
    PyObject *groups[3] = {co->co_varnames, co->co_cellvars, co->co_freevars};
    Py_ssize_t base = 0;
    for (int g = 0; g < 3; g++) {
        PyObject *names = groups[g];
        if (names == NULL || !PyTuple_Check(names)) {
            return DDL_LOCALS_UNREADABLE;
        }
        Py_ssize_t n = g == 0 ? co->co_nlocals : PyTuple_GET_SIZE(names);
        if (PyTuple_GET_SIZE(names) < n) {
            return DDL_LOCALS_UNREADABLE;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            int r = ddl_visit_slot(visit, ctx, PyTuple_GET_ITEM(names, i),
                                   f->f_localsplus[base + i], g > 0);
            if (r != 0) {
                return r;
            }
        }
        base += n;
    }
    return 0;
#else
    /* portable 3.11+ */
#if PY_VERSION_HEX >= 0x030D0000
    /* 3.13+ (PEP 667): a fresh write-through proxy, nothing refreshed; its
     * items are read by its own C code */
    PyObject *proxy = PyFrame_GetLocals(f);
    if (proxy == NULL) {
        PyErr_Clear();
        return DDL_LOCALS_UNREADABLE;
    }
    PyObject *items = NULL;
    int r = DDL_LOCALS_UNREADABLE;
    if (PyFrameLocalsProxy_Check(proxy)) {
        items = PyMapping_Items(proxy);
    }
    if (items == NULL) {
        PyErr_Clear();
    }
    else {
        r = 0;
        for (Py_ssize_t i = 0; r == 0 && i < PyList_GET_SIZE(items); i++) {
            PyObject *kv = PyList_GET_ITEM(items, i);
            if (PyTuple_Check(kv) && PyTuple_GET_SIZE(kv) == 2) {
                r = ddl_visit_slot(visit, ctx, PyTuple_GET_ITEM(kv, 0),
                                   PyTuple_GET_ITEM(kv, 1), 0);
            }
        }
        Py_DECREF(items);
    }
    Py_DECREF(proxy);
    return r;
#elif PY_VERSION_HEX >= 0x030C0000
    /* 3.12: PyFrame_GetVar reads a variable from the frame's storage
     * without refreshing the locals() snapshot */
    PyObject *names = co->co_localsplusnames;
    if (!PyTuple_Check(names)) {
        return DDL_LOCALS_UNREADABLE;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *value = PyFrame_GetVar(f, name);
        if (value == NULL) {
            PyErr_Clear(); /* unbound */
            continue;
        }
        int r = visit(ctx, name, value);
        Py_DECREF(value);
        if (r != 0) {
            return r;
        }
    }
    return 0;
#else
    /* 3.11: the public API reads an optimized frame's variables only by
     * refreshing the program's locals() dict: not read */
    return DDL_LOCALS_UNREADABLE;
#endif
#endif
}

/* ---- native locks ------------------------------------------------------
 *
 * The layouts of _thread.lock and _thread.RLock objects (Modules/
 * _threadmodule.c, not in any header), identical on 3.9-3.13 and checked
 * against the types' basicsize and weaklistoffset when ddlock installs its
 * hooks (a mismatch falls back to the public path at run time). Only the
 * uncontended fast paths read them: a non-blocking try on the PyThread
 * lock, as the native acquire does first. 3.14 replaced both with PyMutex
 * based objects: the portable path calls the native methods instead. */
#if DDL_INTERNAL
#define DDL_NATIVE_LAYOUT 1
typedef struct {
    PyObject_HEAD PyThread_type_lock lock_lock;
    PyObject *in_weakreflist;
    char locked;
    /* ddlock's own: the padding after `locked` (allocated, zeroed by
     * tp_alloc, never read by CPython) keeps the holder's ddlock thread
     * slot (holder.c); the size stays the native one (check_layout) */
    unsigned char ddl_spare[3];
    uint32_t ddl_holder;
} ddl_native_lock;

typedef struct {
    PyObject_HEAD PyThread_type_lock rlock_lock;
    unsigned long rlock_owner;
    unsigned long rlock_count;
    PyObject *in_weakreflist;
} ddl_native_rlock;
#else
#define DDL_NATIVE_LAYOUT 0
#endif

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

/* ---- bytecode (creation bindings, frames.c) --------------------------
 * The instruction format is the same 2-byte word code on every supported
 * version, with inline caches after some instructions from 3.11 (their
 * sizes and the opcode numbers come from the running interpreter's opcode
 * module). What differs is how some arguments index their tables. */

/* New reference to the code's bytecode, not specialized (bytes), or NULL. */
static inline PyObject *
ddl_code_bytes(PyCodeObject *co)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyCode_GetCode(co);
#else
    return PyObject_GetAttrString((PyObject *)co, "co_code");
#endif
}

/* Borrowed name of the local variable STORE_FAST/STORE_DEREF's argument i
 * stands for, or NULL. deref: STORE_DEREF (before 3.11 it counts cells and
 * free variables on their own). */
static inline PyObject *
ddl_code_local_name(PyCodeObject *co, Py_ssize_t i, int deref)
{
#if PY_VERSION_HEX >= 0x030B0000
    (void)deref;
    PyObject *names = co->co_localsplusnames;
#else
    PyObject *names = co->co_varnames;
    if (deref) {
        Py_ssize_t ncells = PyTuple_GET_SIZE(co->co_cellvars);
        names = i < ncells ? co->co_cellvars : co->co_freevars;
        if (i >= ncells) {
            i -= ncells;
        }
    }
#endif
    return names != NULL && PyTuple_Check(names) && i >= 0 &&
                   i < PyTuple_GET_SIZE(names)
               ? PyTuple_GET_ITEM(names, i)
               : NULL;
}

/* LOAD_GLOBAL (3.11+) and LOAD_ATTR (3.12+) keep a flag in their
 * argument's low bit: the name index is the argument shifted. */
#define DDL_LOAD_GLOBAL_SHIFT (PY_VERSION_HEX >= 0x030B0000)
#define DDL_LOAD_ATTR_SHIFT (PY_VERSION_HEX >= 0x030C0000)

/* Is name one of the code's parameters or free variables (a name a
 * function was handed, not one it bound)? */
static inline int
ddl_code_handed_name(PyCodeObject *co, PyObject *name)
{
    int nparams = co->co_argcount + co->co_kwonlyargcount +
                  ((co->co_flags & CO_VARARGS) != 0) +
                  ((co->co_flags & CO_VARKEYWORDS) != 0);
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *vars = PyCode_GetVarnames(co);
#else
    PyObject *vars = co->co_varnames;
    Py_XINCREF(vars);
#endif
    int handed = 0;
    for (int i = 0; vars != NULL && PyTuple_Check(vars) && i < nparams &&
                    i < PyTuple_GET_SIZE(vars) && !handed;
         i++) {
        PyObject *v = PyTuple_GET_ITEM(vars, i);
        handed = v == name ||
                 (PyUnicode_Check(v) && PyUnicode_Compare(v, name) == 0);
    }
    Py_XDECREF(vars);
    if (handed) {
        PyErr_Clear();
        return 1;
    }
    PyObject *free = ddl_code_freevars(co);
    int found = 0;
    for (Py_ssize_t i = 0; free != NULL && PyTuple_Check(free) &&
                           i < PyTuple_GET_SIZE(free) && !found;
         i++) {
        PyObject *v = PyTuple_GET_ITEM(free, i);
        found = v == name ||
                (PyUnicode_Check(v) && PyUnicode_Compare(v, name) == 0);
    }
    Py_XDECREF(free);
    PyErr_Clear();
    return found;
}

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
#if DDL_INTERNAL
    return _PyType_Lookup(tp, name);
#else
    /* the MRO's dicts in order, as _PyType_Lookup reads them */
    PyObject *mro = tp->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro)) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *base = PyTuple_GET_ITEM(mro, i);
        if (!PyType_Check(base)) {
            continue;
        }
        PyObject *d = ddl_type_dict((PyTypeObject *)base);
        if (d == NULL) {
            continue;
        }
        PyObject *v = PyDict_GetItemWithError(d, name);
        Py_DECREF(d); /* the type keeps its dict, the dict v */
        if (v != NULL) {
            return v;
        }
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return NULL;
        }
    }
    return NULL;
#endif
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
#if DDL_INTERNAL && PY_VERSION_HEX < 0x030B0000
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
#elif DDL_INTERNAL
    return _PyObject_LookupAttr(obj, name, result);
#else
    *result = PyObject_GetAttr(obj, name);
    if (*result != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
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

/* ---- coroutines ----------------------------------------------------- */

/* Send arg into a coroutine: its next yielded value (new reference), or
 * NULL with StopIteration set (it returned; see ddl_stop_iteration_value)
 * or another exception. */
static inline PyObject *
ddl_coro_send(PyObject *coro, PyObject *arg)
{
#if PY_VERSION_HEX >= 0x030A0000
    PyObject *result = NULL;
    PySendResult r = PyIter_Send(coro, arg, &result);
    if (r == PYGEN_NEXT) {
        return result;
    }
    if (r == PYGEN_RETURN) {
        PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, result);
        Py_DECREF(result);
        if (e != NULL) {
            PyErr_SetObject(PyExc_StopIteration, e);
            Py_DECREF(e);
        }
    }
    return NULL;
#else
    return PyObject_CallMethod(coro, "send", "O", arg);
#endif
}

/* The value of the StopIteration being raised (new reference), which is
 * cleared; NULL with another exception on failure. */
static inline PyObject *
ddl_stop_iteration_value(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    PyObject *value =
        v != NULL ? PyObject_GetAttrString(v, "value") : Py_NewRef(Py_None);
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
    return value;
}

/* Raise StopIteration carrying value (whatever its type). */
static inline void
ddl_set_stop_iteration(PyObject *value)
{
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (e != NULL) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
}

#if PY_VERSION_HEX >= 0x030C0000
#define DDL_MEMBER_OFFSET_FLAG Py_READONLY
#else
#define DDL_MEMBER_OFFSET_FLAG READONLY
#endif

#endif /* DDLOCK_PYCOMPAT_H */
