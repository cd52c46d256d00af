/* Names and creation sites: where a profiled object was made (the creating
 * frame, through the exclusions), the name it was bound to there (the
 * bytecode after the constructor call), and the name found for it at the
 * acquire site (the acquiring frame's variables, globals and their
 * attributes). Reads frames through pycompat.h and frames.c's user frame.
 *
 * Name resolution never runs user code: it reads frame variables and
 * globals in place, instance __dict__s through the generic slot, __slots__
 * members directly and class __dict__s of heap types. No properties,
 * __getattr__, __eq__ or __repr__ are ever invoked, and a fixed work budget
 * bounds the search.
 */
#include "ddlock.h"

#include <string.h>

#define NAME_SEARCH_BUDGET 20000

/* ---- creation site --------------------------------------------------------
 */

static int
module_excluded(ddl_state *st, PyObject *globals)
{
    if (st->n_excludes == 0 || globals == NULL || !PyDict_Check(globals)) {
        return 0;
    }
    PyObject *name = PyDict_GetItemWithError(globals, st->str_dunder_name);
    if (name == NULL || !PyUnicode_Check(name)) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    for (int i = 0; i < st->n_excludes; i++) {
        size_t n = strlen(st->excludes[i]);
        if ((size_t)len >= n && memcmp(s, st->excludes[i], n) == 0 &&
            ((size_t)len == n || s[n] == '.')) {
            return 1;
        }
    }
    return 0;
}

/* Is this the __init__ that dataclasses generated for a class with a
 * field(default_factory=...)? Its "<string>" source exists in no file, so a
 * lock its factory makes is attributed to the code that made the instance. */
static int
is_dataclass_init(PyCodeObject *co)
{
    if (!PyUnicode_Check(co->co_filename) ||
        PyUnicode_CompareWithASCIIString(co->co_filename, "<string>") != 0 ||
        !PyUnicode_Check(co->co_name) ||
        PyUnicode_CompareWithASCIIString(co->co_name, "__init__") != 0) {
        return 0;
    }
    PyObject *freevars = ddl_code_freevars(co);
    if (freevars == NULL) {
        PyErr_Clear();
        return 0;
    }
    int r = 0;
    if (PyTuple_Check(freevars)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(freevars) && !r; i++) {
            PyObject *v = PyTuple_GET_ITEM(freevars, i);
            r = PyUnicode_Check(v) &&
                PyUnicode_CompareWithASCIIString(
                    v, DDL_DATACLASS_FACTORY_FREEVAR) == 0;
        }
    }
    Py_DECREF(freevars);
    return r;
}

/* Is f an __init__ whose first argument is obj (a constructor of obj run
 * by a subclass's __init__, or the dataclass __init__): not the site. */
static int
is_init_of(ddl_walk_frame *f, PyObject *obj)
{
    PyCodeObject *co = ddl_walk_code(f);
    if (obj == NULL || co->co_argcount < 1 || !PyUnicode_Check(co->co_name) ||
        PyUnicode_CompareWithASCIIString(co->co_name, "__init__") != 0) {
        return 0;
    }
    return ddl_walk_first_arg(f) == obj;
}

/* The str value of key in dict d (borrowed), found by walking d: no
 * hashing or comparison of the program's keys runs. */
static PyObject *
dict_str_item(PyObject *d, PyObject *key)
{
    Py_ssize_t pos = 0, n = 0;
    PyObject *k, *v;
    while (n++ < 4096 && PyDict_Next(d, &pos, &k, &v)) {
        if (k == key ||
            (PyUnicode_CheckExact(k) &&
             PyUnicode_GET_LENGTH(k) == PyUnicode_GET_LENGTH(key) &&
             PyUnicode_Compare(k, key) == 0)) {
            return PyUnicode_CheckExact(v) ? v : NULL;
        }
    }
    return NULL;
}

#define SITE_MODULES_MAX 8192

/* Remember the module (its globals' __name__) of a creation site's code,
 * once per code object: the `lock module` label of the locks it makes. */
static void
record_site_module(ddl_state *st, PyObject *code, PyObject *globals)
{
    if (st->site_modules == NULL || globals == NULL ||
        !PyDict_Check(globals)) {
        return;
    }
    PyObject *key = PyLong_FromVoidPtr(code);
    if (key == NULL) {
        PyErr_Clear();
        return;
    }
    if (PyDict_GetItemWithError(st->site_modules, key) == NULL &&
        !PyErr_Occurred()) {
        PyObject *name = dict_str_item(globals, st->str_dunder_name);
        PyObject *entry = name != NULL ? PyTuple_Pack(2, code, name) : NULL;
        if (entry != NULL) {
            if (PyDict_GET_SIZE(st->site_modules) >= SITE_MODULES_MAX) {
                Py_ssize_t pos = 0;
                PyObject *k, *v;
                if (PyDict_Next(st->site_modules, &pos, &k, &v)) {
                    Py_INCREF(k);
                    (void)PyDict_DelItem(st->site_modules, k);
                    Py_DECREF(k);
                }
            }
            (void)PyDict_SetItem(st->site_modules, key, entry);
            Py_DECREF(entry);
        }
    }
    PyErr_Clear();
    Py_DECREF(key);
}

/* The module recorded for a creation site's code, borrowed, or NULL. */
static PyObject *
site_module(ddl_state *st, PyObject *code)
{
    if (st->site_modules == NULL || code == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_FromVoidPtr(code);
    PyObject *entry =
        key != NULL ? PyDict_GetItemWithError(st->site_modules, key) : NULL;
    Py_XDECREF(key);
    PyErr_Clear();
    return entry != NULL && PyTuple_GET_ITEM(entry, 0) == code
               ? PyTuple_GET_ITEM(entry, 1)
               : NULL;
}

static int
creation_site_from(ddl_state *st, ddl_walk_frame *caller, PyObject *obj,
                   PyObject **code, int *lasti)
{
    *code = NULL;
    *lasti = -1;
    if (caller == NULL) {
        return 1; /* made from C with no Python frame: profile it */
    }
    if (module_excluded(st, ddl_walk_globals(caller))) {
        return 0;
    }
    ddl_walk_frame *f = ddl_user_frame(st, caller);
    if (f == NULL) {
        return DDL_SITE_OUTER;
    }
    /* direct: the site's call made the object -- the caller itself, or the
     * call of a class whose __init__ chain (obj's constructors) led here;
     * not the caller of a dataclass __init__, whose call made the instance
     * holding the object */
    int direct = f == caller;
    for (;;) {
        int dataclass = is_dataclass_init(ddl_walk_code(f));
        ddl_walk_frame *back =
            dataclass || is_init_of(f, obj) ? ddl_walk_back(f) : NULL;
        ddl_walk_frame *outer = back != NULL ? ddl_user_frame(st, back) : NULL;
        if (outer == NULL) {
            break;
        }
        f = outer;
        direct &= !dataclass;
    }
    *code = Py_NewRef(ddl_walk_code(f));
    record_site_module(st, *code, ddl_walk_globals(f));
    *lasti = ddl_walk_lasti(f);
    return direct ? DDL_SITE_DIRECT : DDL_SITE_OUTER;
}

/* Creation-site decision cache: for a calling (code, globals) pair, whether
 * locks it makes stay native (excluded module) or are sited at the caller
 * itself, the common case. Anything else (internal or generated frames)
 * takes the full walk every time. Entries hold references to their code
 * and globals, so a key never outlives what it names. */

/* Skip the frames of pass-through creation functions (threading.RLock()
 * calling _thread.RLock): the frame that called them is the one making the
 * lock. */
static ddl_walk_frame *
skip_passthrough(ddl_state *st, ddl_walk_frame *f)
{
    while (f != NULL && st->passthrough[0] != NULL) {
        PyObject *co = (PyObject *)ddl_walk_code(f);
        int pass = 0;
        for (int i = 0; i < DDL_PASSTHROUGH_MAX && st->passthrough[i]; i++) {
            pass |= st->passthrough[i] == co;
        }
        if (!pass) {
            break;
        }
        f = ddl_walk_back(f);
    }
    return f;
}

static int creation_site_slow(ddl_state *st, ddl_walk_frame *top,
                              PyObject *obj, PyObject **code, int *lasti);

/* The fast path first: the creating frame itself is cached (a pass-through
 * creation function's frame never is: the cache is keyed by its caller). */
int
ddl_creation_site(ddl_state *st, PyObject *obj, PyObject **code, int *lasti)
{
    ddl_walk_frame *top = ddl_walk_top();
    if (obj == NULL) {
        int r = ddl_creation_site_cached(st, top, code, lasti);
        if (r >= 0) {
            return r;
        }
    }
    return creation_site_slow(st, top, obj, code, lasti);
}

static int
creation_site_slow(ddl_state *st, ddl_walk_frame *top, PyObject *obj,
                   PyObject **code, int *lasti)
{
    ddl_walk_frame *caller = skip_passthrough(st, top);
    if (caller == NULL || st->site_cache == NULL || obj != NULL) {
        return creation_site_from(st, caller, obj, code, lasti);
    }
    PyCodeObject *co = ddl_walk_code(caller);
    PyObject *globals = ddl_walk_globals(caller);
    ddl_site_entry *e = &st->site_cache[ddl_site_slot(co, globals)];
    if (caller != top) {
        int hit = ddl_creation_site_cached(st, caller, code, lasti);
        if (hit >= 0) {
            return hit;
        }
    }
    int r = creation_site_from(st, caller, NULL, code, lasti);
    if (r >= 0 && globals != NULL) {
        int verdict = r == 0                 ? DDL_SITE_NATIVE
                      : r == DDL_SITE_DIRECT ? DDL_SITE_CALLER
                                             : DDL_SITE_WALK;
        /* the references taken first: releasing the old ones may run code
         * (a weakref callback) that reaches this cache again */
        PyObject *old_code = e->code, *old_globals = e->globals;
        e->code = Py_NewRef(co);
        e->globals = Py_NewRef(globals);
        e->verdict = verdict;
        Py_XDECREF(old_code);
        Py_XDECREF(old_globals);
    }
    return r;
}

void
ddl_site_cache_clear(ddl_state *st)
{
    if (st->site_cache == NULL) {
        return;
    }
    for (size_t i = 0; i < DDL_SITE_CACHE_SIZE; i++) {
        Py_CLEAR(st->site_cache[i].code);
        Py_CLEAR(st->site_cache[i].globals);
    }
}

/* ---- creation bindings ---------------------------------------------------
 * What the bytecode right after the call that made an object does with
 * it: stores it in a variable, an attribute, or a constant key of a
 * container. Read from the code's unspecialized bytecode with the running
 * interpreter's opcode numbers and cache sizes (given by ddlock's Python
 * layer from the opcode module). */

int
ddl_opcodes_set(ddl_state *st, PyObject *opmap, PyObject *caches)
{
    ddl_opcodes *o = &st->ops;
    memset(o, 0, sizeof(*o));
    if (!PyDict_Check(opmap) || !PyTuple_Check(caches) ||
        PyTuple_GET_SIZE(caches) > 256) {
        PyErr_SetString(PyExc_TypeError, "opcodes: (dict, tuple of <= 256)");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(caches); i++) {
        long n = PyLong_AsLong(PyTuple_GET_ITEM(caches, i));
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        o->cache[i] = (unsigned char)(n < 0 ? 0 : n > 255 ? 255 : n);
    }
    static const struct {
        const char *name;
        size_t offset;
    } names[] = {
#define OP(n, f) {n, offsetof(ddl_opcodes, f)}
        OP("EXTENDED_ARG", extended_arg),
        OP("STORE_FAST", store_fast),
        OP("STORE_FAST_STORE_FAST", store_fast_store_fast),
        OP("STORE_FAST_LOAD_FAST", store_fast_load_fast),
        OP("STORE_DEREF", store_deref),
        OP("STORE_NAME", store_name),
        OP("STORE_GLOBAL", store_global),
        OP("STORE_ATTR", store_attr),
        OP("STORE_SUBSCR", store_subscr),
        OP("LOAD_CONST", load_const),
        OP("LOAD_FAST", load_fast),
        OP("LOAD_DEREF", load_deref),
        OP("LOAD_NAME", load_name),
        OP("LOAD_GLOBAL", load_global),
        OP("LOAD_ATTR", load_attr),
#undef OP
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        PyObject *v = PyDict_GetItemString(opmap, names[i].name);
        long n = v != NULL && PyLong_Check(v) ? PyLong_AsLong(v) : -1;
        if (n < 0 || n > 255) {
            PyErr_Clear();
            n = -1;
        }
        *(int *)((char *)o + names[i].offset) = (int)n;
    }
    o->known = o->extended_arg >= 0;
    return 0;
}

typedef struct {
    int op;
    int arg;
    Py_ssize_t next; /* byte offset of the following instruction */
} insn;

/* The instruction at byte offset pos (EXTENDED_ARG prefixes folded in);
 * 0 past the end. */
static int
read_insn(const ddl_opcodes *o, const unsigned char *code, Py_ssize_t len,
          Py_ssize_t pos, insn *out)
{
    int arg = 0;
    while (pos >= 0 && pos + 1 < len) {
        int op = code[pos];
        arg = (int)(((unsigned)arg << 8) | code[pos + 1]);
        pos += 2 + 2 * (Py_ssize_t)o->cache[op];
        if (op == o->extended_arg) {
            continue;
        }
        *out = (insn){op, arg, pos};
        return 1;
    }
    return 0;
}

static PyObject *
tuple_item(PyObject *t, int i)
{
    return t != NULL && PyTuple_Check(t) && i >= 0 && i < PyTuple_GET_SIZE(t)
               ? PyTuple_GET_ITEM(t, i)
               : NULL;
}

/* name[key] for a str or int key, name[index] for a sequence item; the
 * container's name alone for any other key (its repr is the user's). */
static PyObject *
item_name(PyObject *name, PyObject *key, Py_ssize_t index)
{
    if (key == NULL) {
        return PyUnicode_FromFormat("%U[%zd]", name, index);
    }
    if (PyUnicode_CheckExact(key)) {
        return PyUnicode_FromFormat("%U[\"%U\"]", name, key);
    }
    if (PyLong_CheckExact(key)) {
        return PyUnicode_FromFormat("%U[%S]", name, key);
    }
    return Py_NewRef(name);
}

/* Borrowed name a load instruction reads, NULL for any other. */
static PyObject *
loaded_name(const ddl_opcodes *o, PyCodeObject *co, const insn *in)
{
    if (in->op == o->load_fast) {
        return ddl_code_local_name(co, in->arg, 0);
    }
    if (in->op == o->load_deref) {
        return ddl_code_local_name(co, in->arg, 1);
    }
    if (in->op == o->load_name) {
        return tuple_item(co->co_names, in->arg);
    }
    if (in->op == o->load_global) {
        return tuple_item(co->co_names, in->arg >> DDL_LOAD_GLOBAL_SHIFT);
    }
    if (in->op == o->load_attr) {
        return tuple_item(co->co_names, in->arg >> DDL_LOAD_ATTR_SHIFT);
    }
    return NULL;
}

/* made stored through an object the next instructions load: obj.name =
 * made gives "name" (self._lock = Lock()); x[key] = made gives "x[key]"
 * for a constant str or int key, the container being the last name loaded
 * (self._locks["db"]: _locks["db"]). NULL for anything else. */
static PyObject *
store_through_binding(const ddl_opcodes *o, PyCodeObject *co,
                      const unsigned char *code, Py_ssize_t len, insn in)
{
    PyObject *container = NULL, *key = NULL;
    for (int steps = 0; steps < 6; steps++) {
        if (in.op == o->store_attr && container != NULL && key == NULL) {
            PyObject *name = tuple_item(co->co_names, in.arg);
            return name != NULL && PyUnicode_Check(name) ? Py_NewRef(name)
                                                         : NULL;
        }
        if (in.op == o->store_subscr) {
            break;
        }
        PyObject *name = loaded_name(o, co, &in);
        if (name != NULL && key == NULL) {
            container = name;
        }
        else if (in.op == o->load_const && container != NULL && key == NULL) {
            key = tuple_item(co->co_consts, in.arg);
        }
        else {
            return NULL;
        }
        if (!read_insn(o, code, len, in.next, &in)) {
            return NULL;
        }
    }
    if (in.op != o->store_subscr || container == NULL || key == NULL ||
        !PyUnicode_Check(container) ||
        !(PyUnicode_CheckExact(key) || PyLong_CheckExact(key))) {
        return NULL;
    }
    return item_name(container, key, -1);
}

PyObject *
ddl_creation_binding(ddl_state *st, PyObject *code, int lasti, int *local)
{
    const ddl_opcodes *o = &st->ops;
    int is_local = 1;
    if (local != NULL) {
        *local = 0;
    }
    if (!o->known || code == NULL || !PyCode_Check(code) || lasti < 0) {
        return NULL;
    }
    PyCodeObject *co = (PyCodeObject *)code;
    PyObject *bytes = ddl_code_bytes(co);
    if (bytes == NULL || !PyBytes_Check(bytes)) {
        Py_XDECREF(bytes);
        PyErr_Clear();
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(bytes);
    Py_ssize_t len = PyBytes_GET_SIZE(bytes);
    PyObject *name = NULL, *result = NULL;
    insn call, in;
    if (!read_insn(o, b, len, lasti, &call) ||
        !read_insn(o, b, len, call.next, &in)) {
        goto done;
    }
    if (in.op == o->store_fast) {
        name = ddl_code_local_name(co, in.arg, 0);
    }
    else if (in.op == o->store_fast_store_fast ||
             in.op == o->store_fast_load_fast) {
        name = ddl_code_local_name(co, in.arg >> 4, 0);
    }
    else if (in.op == o->store_deref) {
        name = ddl_code_local_name(co, in.arg, 1);
    }
    else if (in.op == o->store_name || in.op == o->store_global ||
             in.op == o->store_attr) {
        name = tuple_item(co->co_names, in.arg);
        is_local = 0;
    }
    else {
        result = store_through_binding(o, co, b, len, in);
        is_local = 0;
    }
    if (name != NULL && PyUnicode_Check(name)) {
        result = Py_NewRef(name);
        if (local != NULL) {
            *local = is_local;
        }
    }
done:
    Py_DECREF(bytes);
    if (result == NULL) {
        PyErr_Clear();
    }
    return result;
}

/* ---- name search ----------------------------------------------------------
 */

typedef struct {
    PyObject *target;
    long budget;
    ddl_state *st;
    int containers;   /* look into dicts, lists and tuples */
    int in_container; /* the name found is one item's: per lock */
    int held;         /* the holder below is known */
    PyObject *owner;  /* new reference: the type name of the object whose
                         attribute it is (NULL for a module) */
} search_ctx;

static PyObject *owner_of(PyObject *holder);

/* Items of one container looked at (the first ones). */
#define CONTAINER_MAX 256

/* Is target one of the first items of value, an exact dict, list or
 * tuple? Read in place (no hashing, comparison or iteration protocol);
 * *found is a new reference to "name[key]". */
static int
match_item(search_ctx *c, PyObject *name, PyObject *value, PyObject **found)
{
    PyObject *key = NULL;
    Py_ssize_t index = -1;
    if (PyDict_CheckExact(value)) {
        Py_ssize_t pos = 0, n = 0;
        PyObject *k, *v;
        while (n++ < CONTAINER_MAX && PyDict_Next(value, &pos, &k, &v)) {
            if (--c->budget < 0) {
                return 0; /* the caller's next step sees the budget gone */
            }
            if (v == c->target) {
                key = k;
                break;
            }
        }
        if (key == NULL) {
            return 0;
        }
    }
    else if (PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
        int list = PyList_CheckExact(value);
        Py_ssize_t n = list ? PyList_GET_SIZE(value) : PyTuple_GET_SIZE(value);
        for (Py_ssize_t i = 0; i < n && i < CONTAINER_MAX && index < 0; i++) {
            if (--c->budget < 0) {
                return 0;
            }
            PyObject *v =
                list ? PyList_GET_ITEM(value, i) : PyTuple_GET_ITEM(value, i);
            index = v == c->target ? i : -1;
        }
        if (index < 0) {
            return 0;
        }
    }
    else {
        return 0;
    }
    *found = item_name(name, key, index);
    if (*found == NULL) {
        PyErr_Clear();
        return 0;
    }
    c->in_container = 1;
    return 1;
}

/* Called for each (name, value) found; returns 1 to stop (found, with
 * *found set to a new reference to the name). */
typedef int (*attr_visit)(search_ctx *c, PyObject *name, PyObject *value,
                          void *arg, PyObject **found);

static int
visit_match(search_ctx *c, PyObject *name, PyObject *value, void *arg,
            PyObject **found)
{
    if (!PyUnicode_Check(name)) {
        return 0;
    }
    if (value == c->target) {
        *found = Py_NewRef(name);
        return 1;
    }
    return c->containers ? match_item(c, name, value, found) : 0;
}

static int
visit_dict(search_ctx *c, PyObject *dict, attr_visit visit, void *arg,
           PyObject **found)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(dict, &pos, &k, &v)) {
        if (--c->budget < 0) {
            return -1;
        }
        if (visit(c, k, v, arg, found)) {
            return 1;
        }
    }
    return 0;
}

/* Visit obj's attributes without running any of its code: a heap type's own
 * __dict__; an instance's __dict__ (read through the generic slot, never a
 * class-level __dict__ override), its __slots__ members read directly, and
 * its classes' __dict__s (class attributes). Modules only when allowed. */
static int visit_attrs_held(search_ctx *c, PyObject *obj, int allow_modules,
                            attr_visit visit, void *arg, PyObject **found);
static int visit_attrs_of(search_ctx *c, PyObject *obj, int allow_modules,
                          attr_visit visit, void *arg, PyObject **found);

/* obj is usually borrowed from a dict being walked. On 3.9 nothing pauses
 * the collector, so an allocation below (a lazily created instance dict) may
 * run a finalizer that drops the last other reference to obj: hold one. */
static int
visit_attrs(search_ctx *c, PyObject *obj, int allow_modules, attr_visit visit,
            void *arg, PyObject **found)
{
    Py_INCREF(obj);
    int r = visit_attrs_held(c, obj, allow_modules, visit, arg, found);
    Py_DECREF(obj);
    return r;
}

/* The current thread's attribute dict of a threading.local (a new
 * reference, NULL if none): through _thread._local's own getattro, only
 * when no __init__ of the user's can run (it runs when the thread has no
 * dict yet), whatever the subclass overrides. */
static PyObject *
thread_local_dict(ddl_state *st, PyObject *obj)
{
    PyTypeObject *lt = (PyTypeObject *)st->local_type;
    PyTypeObject *tp = Py_TYPE(obj);
    if (lt == NULL || lt->tp_getattro == NULL || !PyType_IsSubtype(tp, lt) ||
        tp->tp_init != PyBaseObject_Type.tp_init ||
        st->str_dunder_dict == NULL) {
        return NULL;
    }
    PyObject *d = lt->tp_getattro(obj, st->str_dunder_dict);
    if (d == NULL || !PyDict_Check(d)) {
        PyErr_Clear();
        Py_XDECREF(d);
        return NULL;
    }
    return d;
}

static int
visit_attrs_held(search_ctx *c, PyObject *obj, int allow_modules,
                 attr_visit visit, void *arg, PyObject **found)
{
    int r = visit_attrs_of(c, obj, allow_modules, visit, arg, found);
    if (r == 1 && !c->held) {
        c->held = 1; /* the innermost holder is the first to return */
        c->owner = owner_of(obj);
    }
    return r;
}

static int
visit_attrs_of(search_ctx *c, PyObject *obj, int allow_modules,
               attr_visit visit, void *arg, PyObject **found)
{
    PyTypeObject *tp = Py_TYPE(obj);
    int r = 0;
    PyObject *tld =
        c->st->local_type != NULL ? thread_local_dict(c->st, obj) : NULL;
    if (tld != NULL) {
        r = visit_dict(c, tld, visit, arg, found);
        Py_DECREF(tld);
        return r;
    }
    if (PyModule_Check(obj)) {
        if (!allow_modules || !PyModule_CheckExact(obj)) {
            return 0;
        }
        PyObject *d = PyModule_GetDict(obj); /* borrowed */
        return d != NULL ? visit_dict(c, d, visit, arg, found) : 0;
    }
    if (PyType_Check(obj)) {
        PyTypeObject *cls = (PyTypeObject *)obj;
        if (!(cls->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
            return 0;
        }
        PyObject *d = ddl_type_dict(cls);
        if (d != NULL) {
            r = visit_dict(c, d, visit, arg, found);
            Py_DECREF(d);
        }
        return r;
    }
    if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
        return 0; /* builtins and C objects: containers are not searched */
    }
    if (ddl_type_has_instance_dict(tp)) {
        PyObject *d = PyObject_GenericGetDict(obj, NULL);
        if (d == NULL) {
            PyErr_Clear();
        }
        else {
            r = PyDict_Check(d) ? visit_dict(c, d, visit, arg, found) : 0;
            Py_DECREF(d);
            if (r != 0) {
                return r;
            }
        }
    }
    PyObject *mro = tp->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro)) {
        return 0;
    }
    Py_INCREF(mro);
    for (Py_ssize_t i = 0; r == 0 && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
            continue;
        }
        PyObject *d = ddl_type_dict(base);
        if (d == NULL) {
            continue;
        }
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (r == 0 && PyDict_Next(d, &pos, &k, &v)) {
            if (--c->budget < 0) {
                r = -1;
                break;
            }
            if (Py_IS_TYPE(v, &PyMemberDescr_Type)) {
                /* a __slots__ member: read the slot directly, but only when
                 * the descriptor belongs to obj's layout (one copied into
                 * another class's dict has an offset into someone else's) */
                PyMemberDef *m = ((PyMemberDescrObject *)v)->d_member;
                PyTypeObject *owner = PyDescr_TYPE(v);
                if (m != NULL && ddl_member_is_object(m->type) &&
                    owner != NULL && PyType_IsSubtype(tp, owner)) {
                    PyObject *slot = *(PyObject **)((char *)obj + m->offset);
                    if (slot != NULL && visit(c, k, slot, arg, found)) {
                        r = 1;
                    }
                }
            }
            else if (visit(c, k, v, arg, found)) {
                r = 1; /* class attribute, e.g. table_lock = Lock() */
            }
        }
        Py_DECREF(d);
    }
    Py_DECREF(mro);
    return r;
}

/* arg: how many more levels of attributes below value's (no modules) */
static int
visit_deeper(search_ctx *c, PyObject *name, PyObject *value, void *arg,
             PyObject **found)
{
    intptr_t more = (intptr_t)arg;
    return visit_attrs(c, value, 0, more > 0 ? visit_deeper : visit_match,
                       (void *)(more - 1), found) == 1;
}

/* One pass of the name search over a frame's variables (its locals, then
 * its globals): what to do with each (name, value). */
typedef struct {
    search_ctx *c;
    int level; /* 0: the value itself; 1: its attributes; 2, 3: theirs */
    int pass;  /* level 0: 1 items of containers; level 1: 1 modules */
    PyObject *found;
    PyObject *base; /* the variable it was found through (borrowed) */
    int error;      /* budget exhausted */
    int in_locals;  /* visiting the frame's local variables */
} source_pass;

static int
source_visit(void *arg, PyObject *name, PyObject *value)
{
    source_pass *sp = arg;
    search_ctx *c = sp->c;
    if (--c->budget < 0) {
        sp->error = 1;
        return 1;
    }
    int r = 0;
    switch (sp->level) {
    case 0:
        c->containers = sp->pass == 1;
        r = visit_match(c, name, value, NULL, &sp->found);
        c->containers = 1;
        break;
    case 1:
        if ((sp->pass == 0) == (PyModule_Check(value) != 0)) {
            return 0;
        }
        r = visit_attrs(c, value, sp->pass == 1, visit_match, NULL,
                        &sp->found);
        break;
    default:
        r = visit_attrs(c, value, 0, visit_deeper,
                        (void *)(intptr_t)(sp->level - 2), &sp->found);
        break;
    }
    if (r < 0 || c->budget < 0) {
        sp->error = sp->found == NULL;
        return 1;
    }
    if (sp->found != NULL) {
        sp->base = name;
    }
    return sp->found != NULL;
}

/* Run one pass over f's locals, then over its globals (unless they are
 * the same namespace). The variables are read in place: nothing is made,
 * refreshed or changed (ddl_walk_visit_locals). */
static void
source_run(ddl_walk_frame *f, PyObject *globals, source_pass *sp)
{
    sp->in_locals = 1;
    ddl_walk_visit_locals(f, source_visit, sp);
    sp->in_locals = sp->found != NULL;
    if (sp->found != NULL || sp->error || globals == NULL ||
        !PyDict_Check(globals) || globals == ddl_walk_namespace(f)) {
        return;
    }
    Py_INCREF(globals);
    ddl_visit_dict(globals, source_visit, sp);
    Py_DECREF(globals);
}

typedef struct {
    PyObject *name;  /* new reference, NULL when not found */
    PyObject *owner; /* new reference: the holder's type name, or NULL */
    int handed;      /* found through a parameter or closure variable of f */
    int local;       /* found as a variable of f itself (handed or not) */
    int per_lock;    /* an item of a container: not one name per site */
} search_result;

/* The type name of the object holding an attribute (an instance's type,
 * or the class itself for a class attribute); none for a module. */
static PyObject *
owner_of(PyObject *holder)
{
    if (holder == NULL || PyModule_Check(holder)) {
        return NULL;
    }
    PyTypeObject *tp =
        PyType_Check(holder) ? (PyTypeObject *)holder : Py_TYPE(holder);
    const char *n = tp->tp_name;
    const char *dot =
        (tp->tp_flags & Py_TPFLAGS_HEAPTYPE) ? NULL : strrchr(n, '.');
    PyObject *r = PyUnicode_FromString(dot != NULL ? dot + 1 : n);
    if (r == NULL) {
        PyErr_Clear();
    }
    return r;
}

/* Search order: the locals, then globals, that hold the object; then the
 * items of the containers they hold; then one level into their values'
 * attributes (objects first, modules last), then a second and a third.
 * Inspection off: the variables only. */
static void
search_name(ddl_state *st, PyObject *target, ddl_walk_frame *f,
            search_result *res)
{
    *res = (search_result){NULL, NULL, 0, 0, 0};
    search_ctx c = {target, NAME_SEARCH_BUDGET, st, 1, 0, 0, NULL};
    PyObject *globals = ddl_walk_globals(f);
    PyCodeObject *co = ddl_walk_code(f);
    static const struct {
        int level, pass;
    } passes[] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}, {2, 0}, {3, 0}};
    size_t npasses = st->inspect_dir ? sizeof(passes) / sizeof(passes[0]) : 1;
    for (size_t i = 0; i < npasses; i++) {
        source_pass sp = {&c, passes[i].level, passes[i].pass, NULL, NULL, 0,
                          0};
        source_run(f, globals, &sp);
        if (sp.found != NULL) {
            res->name = sp.found;
            res->per_lock = c.in_container;
            res->local = passes[i].level == 0 && sp.in_locals;
            res->handed = res->local && sp.base != NULL &&
                          ddl_code_handed_name(co, sp.base);
            res->owner = passes[i].level > 0 ? c.owner : NULL;
            c.owner = NULL;
            break;
        }
        if (sp.error) {
            break;
        }
    }
    Py_XDECREF(c.owner);
    PyErr_Clear();
}

/* Key of the name cache: (creation code, creation offset, acquiring code),
 * by identity. Code objects compare equal across files when their contents
 * match, so an equality key would hand one file's label to another's lock;
 * the cached entry holds both code objects, so their addresses stay theirs
 * for as long as the key exists. */
static PyObject *
cache_key(PyObject *site_code, int site_lasti, PyCodeObject *uco)
{
    PyObject *key = PyTuple_New(3);
    if (key == NULL) {
        return NULL;
    }
    PyObject *a = PyLong_FromVoidPtr(site_code);
    PyObject *b = PyLong_FromLong(site_lasti);
    PyObject *c = PyLong_FromVoidPtr(uco);
    if (a == NULL || b == NULL || c == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        Py_DECREF(key);
        return NULL;
    }
    PyTuple_SET_ITEM(key, 0, a);
    PyTuple_SET_ITEM(key, 1, b);
    PyTuple_SET_ITEM(key, 2, c);
    return key;
}

/* Is co the standard library's (under one of its directories, not in
 * site-packages, or a frozen stdlib module)? */
static int
is_stdlib_code(ddl_state *st, PyObject *code)
{
    if (code == NULL || !PyCode_Check(code)) {
        return 0;
    }
    PyObject *fn = ((PyCodeObject *)code)->co_filename;
    if (fn == NULL || !PyUnicode_Check(fn) || st->stdlib_dirs == NULL) {
        return 0;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(fn);
    if (PyUnicode_READ_CHAR(fn, 0) == '<') {
        return len > 8 &&
               PyUnicode_Tailmatch(fn, st->str_frozen, 0, len, -1) == 1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(st->stdlib_dirs); i++) {
        PyObject *dir = PyTuple_GET_ITEM(st->stdlib_dirs, i);
        if (PyUnicode_Tailmatch(fn, dir, 0, len, -1) == 1) {
            Py_ssize_t r = PyUnicode_Find(fn, st->str_packages_dir, 0, len, 1);
            if (r == -2) {
                PyErr_Clear();
            }
            return r == -1;
        }
    }
    return 0;
}

/* The frame the acquire-site search reads: the first one outside ddlock
 * and threading.py; for an object made outside the standard library, the
 * first one outside it too (contextlib's ExitStack, functools, queue ...
 * between the user's code and the acquire), when there is one. */
static ddl_walk_frame *
name_frame(ddl_state *st, ddl_prof *lk)
{
    ddl_walk_frame *f = ddl_user_frame(st, ddl_walk_top());
    if (f == NULL || st->stdlib_dirs == NULL ||
        is_stdlib_code(st, lk->site_code)) {
        return f;
    }
    for (ddl_walk_frame *u = f; u != NULL;
         u = ddl_user_frame(st, ddl_walk_back(u))) {
        if (!is_stdlib_code(st, (PyObject *)ddl_walk_code(u))) {
            return u;
        }
    }
    return f;
}

/* Are the two codes from different files (by their co_filename)? */
static int
other_file(PyCodeObject *a, PyObject *b)
{
    if (a == NULL || b == NULL || !PyCode_Check(b)) {
        return 0;
    }
    PyObject *fa = a->co_filename, *fb = ((PyCodeObject *)b)->co_filename;
    if (fa == fb) {
        return 0;
    }
    if (!PyUnicode_CheckExact(fa) || !PyUnicode_CheckExact(fb)) {
        return 0;
    }
    return PyUnicode_Compare(fa, fb) != 0;
}

/* lk->name is the label, or (label, module, owner) when the lock is
 * placed (module and owner: str or None). */
static PyObject *
label_of(PyObject *name)
{
    return name != NULL && PyTuple_CheckExact(name) ? PyTuple_GET_ITEM(name, 0)
                                                    : name;
}

void
ddl_lock_place(ddl_prof *lk, PyObject **module, PyObject **owner)
{
    *module = *owner = NULL;
    if (lk->name_done && lk->name != NULL && PyTuple_CheckExact(lk->name)) {
        PyObject *m = PyTuple_GET_ITEM(lk->name, 1);
        PyObject *o = PyTuple_GET_ITEM(lk->name, 2);
        *module = m != Py_None ? m : NULL;
        *owner = o != Py_None ? o : NULL;
    }
}

/* lk's name: the label, placed by the module its site's code is in and
 * the owner found by the search. */
static PyObject *
placed(ddl_state *st, ddl_prof *lk, PyObject *label, PyObject *owner)
{
    PyObject *module = site_module(st, lk->site_code);
    if (module == NULL && owner == NULL) {
        return Py_NewRef(label);
    }
    PyObject *t = PyTuple_Pack(3, label, module != NULL ? module : Py_None,
                               owner != NULL ? owner : Py_None);
    if (t == NULL) {
        PyErr_Clear();
        return Py_NewRef(label);
    }
    /* one tuple for all the locks placed alike (exact str and None only:
     * hashing and comparing them runs no user code) */
    if (st->places != NULL && PyUnicode_CheckExact(label)) {
        if (PyDict_GET_SIZE(st->places) >= DDL_NAME_CACHE_MAX) {
            PyDict_Clear(st->places);
        }
        PyObject *shared = PyDict_SetDefault(st->places, t, t);
        if (shared != NULL) {
            Py_SETREF(t, Py_NewRef(shared));
        }
        PyErr_Clear();
    }
    return t;
}

PyObject *
ddl_lock_name(ddl_state *st, ddl_prof *lk, PyObject *target)
{
    if (lk->name_done) {
        return Py_XNewRef(label_of(lk->name));
    }
    PyObject *label = NULL, *site = NULL, *key = NULL, *var = NULL;
    PyCodeObject *uco = NULL;
    ddl_walk_frame *f = NULL;
    search_result res = {NULL, NULL, 0, 0, 0};
    if (!st->resolve_names) {
        label = ddl_site_label(lk->site_code, lk->site_lasti);
        if (label == NULL) {
            goto error;
        }
        goto done;
    }
    f = name_frame(st, lk);
    if (f != NULL && lk->site_code != NULL && st->name_cache != NULL) {
        uco = (PyCodeObject *)Py_NewRef(ddl_walk_code(f));
        key = cache_key(lk->site_code, lk->site_lasti, uco);
        if (key == NULL) {
            goto error;
        }
        PyObject *cached = PyDict_GetItemWithError(st->name_cache, key);
        if (cached != NULL) {
            st->names_cache_hits++;
            label = Py_NewRef(PyTuple_GET_ITEM(cached, 0));
            if (PyTuple_GET_SIZE(cached) > 3 &&
                PyTuple_GET_ITEM(cached, 3) == Py_True) {
                /* found as an attribute: this lock's owner, searched again
                 * (one site's locks are held by objects of several types) */
                search_name(st, target, f, &res);
                Py_CLEAR(res.name);
            }
            goto done;
        }
        if (PyErr_Occurred()) {
            goto error;
        }
    }
    site = ddl_site_label(lk->site_code, lk->site_lasti);
    if (site == NULL) {
        goto error;
    }
    if (f != NULL) {
        search_name(st, target, f, &res);
        var = res.name;
        res.name = NULL;
    }
    /* The acquire site's name, unless it is only what a function other
     * than the creator was handed (a parameter or closure variable of a
     * decorator, helper or library), or a variable of a function in
     * another file than the creator's (a library's `lock =
     * self.cache_lock; with lock:`): then the name the object was bound to
     * where it was made, when it was bound to one -- in the second case
     * only a lasting one (a global, an attribute or an item, not a
     * factory's local). */
    int foreign = var != NULL && res.local && !res.handed &&
                  other_file(ddl_walk_code(f), lk->site_code);
    if (lk->site_code != NULL && lk->site_direct &&
        (var == NULL || foreign ||
         (res.handed && (PyObject *)ddl_walk_code(f) != lk->site_code))) {
        int bound_local = 0;
        PyObject *bound = ddl_creation_binding(st, lk->site_code,
                                               lk->site_lasti, &bound_local);
        if (bound != NULL && foreign && bound_local) {
            Py_CLEAR(bound);
        }
        if (bound != NULL) {
            Py_XSETREF(var, bound);
            res.per_lock = 0;
        }
        PyErr_Clear();
    }
    if (res.per_lock) {
        Py_CLEAR(key); /* an item's name: this lock's only */
    }
    if (var != NULL) {
        st->names_resolved++;
        label = PyUnicode_FromFormat("%U:%U", site, var);
    }
    else {
        st->names_missed++;
        label = Py_NewRef(site);
    }
    if (label == NULL) {
        goto error;
    }
    if (key != NULL) {
        PyObject *entry = PyTuple_Pack(4, label, lk->site_code, uco,
                                       res.owner != NULL ? Py_True : Py_False);
        if (entry == NULL) {
            goto error;
        }
        if (PyDict_GET_SIZE(st->name_cache) >= DDL_NAME_CACHE_MAX) {
            /* evict the oldest entry (dicts keep insertion order): clearing
             * everything made a working set above the cap never hit */
            Py_ssize_t pos = 0;
            PyObject *oldest_key, *oldest_value;
            if (PyDict_Next(st->name_cache, &pos, &oldest_key,
                            &oldest_value)) {
                Py_INCREF(oldest_key);
                int drc = PyDict_DelItem(st->name_cache, oldest_key);
                Py_DECREF(oldest_key);
                if (drc < 0) {
                    goto error;
                }
            }
        }
        int rc = PyDict_SetItem(st->name_cache, key, entry);
        Py_DECREF(entry);
        if (rc < 0) {
            goto error;
        }
    }
done:
    Py_XSETREF(lk->name, placed(st, lk, label, res.owner));
    lk->name_done = 1;
    Py_XDECREF(res.owner);
    Py_XDECREF(site);
    Py_XDECREF(key);
    Py_XDECREF(var);
    Py_XDECREF(uco);
    return label;
error:
    PyErr_Clear();
    Py_XDECREF(res.owner);
    Py_XDECREF(label);
    Py_XDECREF(site);
    Py_XDECREF(key);
    Py_XDECREF(var);
    Py_XDECREF(uco);
    return NULL;
}
