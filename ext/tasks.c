/* Who is running: the thread (its name from threading's registry), the
 * asyncio task or gevent greenlet, and the labels that say so. Reads only
 * registries and instance dicts; the one call made into Python is the
 * get_name of asyncio's own Task types and gevent.getcurrent(). */
#include "ddlock.h"

#include <string.h>

/* New reference to an int equal to ident for looking up threading._active:
 * through a small direct-mapped cache, which after the first lookup holds
 * the registry's own key (the Thread's _ident), so the lookup neither
 * allocates nor compares ints by value. Bounded: DDL_IDENT_CACHE_SIZE
 * entries, each a reference to an int. */
static ddl_ident_entry *
ident_slot(ddl_state *st, unsigned long ident)
{
    uint64_t h = (uint64_t)ident * 0x9e3779b97f4a7c15ULL;
    return &st->ident_cache[(size_t)(h >> 40) & (DDL_IDENT_CACHE_SIZE - 1)];
}

void
ddl_ident_cache_clear(ddl_state *st)
{
    for (size_t i = 0; i < DDL_IDENT_CACHE_SIZE; i++) {
        Py_CLEAR(st->ident_cache[i].key);
    }
}

/* Remember key (an int equal to ident) for ident. */
static void
ident_remember(ddl_state *st, unsigned long ident, PyObject *key)
{
    ddl_ident_entry *e = ident_slot(st, ident);
    if (e->key == key) {
        return;
    }
    PyObject *old = e->key;
    e->ident = ident;
    e->key = Py_NewRef(key);
    Py_XDECREF(old);
}

/* New reference to the current thread's name from threading's registry,
 * read from the Thread's instance dict (no property, no user code). */
PyObject *
ddl_thread_name(ddl_state *st, unsigned long ident)
{
    if (st->threading_active == NULL) {
        return NULL;
    }
    ddl_ident_entry *e = ident_slot(st, ident);
    int cached = e->key != NULL && e->ident == ident;
    PyObject *key =
        cached ? Py_NewRef(e->key) : PyLong_FromUnsignedLong(ident);
    if (key == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *name = NULL, *d = NULL;
    PyObject *t = PyDict_GetItemWithError(st->threading_active, key);
    if (t == NULL || !ddl_type_has_instance_dict(Py_TYPE(t))) {
        goto error;
    }
    d = PyObject_GenericGetDict(t, NULL);
    if (d == NULL || !PyDict_Check(d)) {
        goto error;
    }
    if (!cached) {
        /* the registry's key is the Thread's _ident: remember that int */
        PyObject *own = PyDict_GetItemWithError(d, st->str_ident);
        if (own != NULL && PyLong_CheckExact(own) &&
            PyLong_AsUnsignedLong(own) == ident && !PyErr_Occurred()) {
            ident_remember(st, ident, own);
        }
        else {
            ident_remember(st, ident, key);
        }
        PyErr_Clear();
    }
    name = PyDict_GetItemWithError(d, st->str_name);
    if (name == NULL || !PyUnicode_Check(name)) {
        goto error;
    }
    Py_INCREF(name);
    Py_DECREF(d);
    Py_DECREF(key);
    return name;
error:
    PyErr_Clear();
    Py_XDECREF(d);
    Py_DECREF(key);
    return NULL;
}

/* ---- asyncio tasks and greenlets ---------------------------------------- */

/* The running asyncio task as a new reference, or NULL (no exception) when
 * there is none. */
static PyObject *
current_asyncio_task(ddl_state *st)
{
    if (st->get_running_loop == NULL || st->current_task == NULL) {
        return NULL;
    }
    PyObject *loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL || loop == Py_None) {
        Py_XDECREF(loop);
        PyErr_Clear();
        return NULL;
    }
    PyObject *task;
    if (st->current_tasks != NULL &&
        Py_TYPE(loop)->tp_hash == PyBaseObject_Type.tp_hash) {
        /* what current_task(loop) returns, read from its registry: a
         * lookup by identity (the loop's hash is object's own) instead of
         * a call */
        task = PyDict_GetItemWithError(st->current_tasks, loop);
        Py_XINCREF(task);
    }
    else {
        task = PyObject_CallOneArg(st->current_task, loop);
    }
    Py_DECREF(loop);
    if (task == NULL || task == Py_None) {
        Py_XDECREF(task);
        PyErr_Clear();
        return NULL;
    }
    return task;
}

static PyObject *
current_greenlet(ddl_state *st)
{
    if (st->gevent_getcurrent == NULL) {
        return NULL;
    }
    PyObject *g = PyObject_CallNoArgs(st->gevent_getcurrent);
    if (g == NULL || g == Py_None) {
        Py_XDECREF(g);
        PyErr_Clear();
        return NULL;
    }
    return g;
}

PyObject *
ddl_current_task(ddl_state *st, int asyncio)
{
    return asyncio ? current_asyncio_task(st) : current_greenlet(st);
}

uintptr_t
ddl_current_actor(ddl_state *st, int kind)
{
    PyObject *who = ddl_current_task(st, ddl_kind_asyncio(kind));
    if (who != NULL) {
        uintptr_t a = (uintptr_t)who;
        Py_DECREF(who);
        return a;
    }
    return (uintptr_t)PyThread_get_thread_ident();
}

/* New reference to an asyncio task's name, NULL (maybe with an exception
 * set) when there is none. Only the get_name of asyncio's own Task types is
 * called, looked up on the task's type (a subclass or an instance that
 * overrides it would run user code: such a task gets no name label). */
static PyObject *
asyncio_task_name(ddl_state *st, PyObject *task)
{
    PyObject *get_name = ddl_type_lookup(Py_TYPE(task), st->str_get_name);
    if (get_name == NULL || (get_name != st->task_get_name[0] &&
                             get_name != st->task_get_name[1])) {
        return NULL;
    }
    Py_INCREF(get_name);
    PyObject *name = PyObject_CallOneArg(get_name, task);
    Py_DECREF(get_name);
    return name;
}

/* New reference to a gevent greenlet's name, NULL (no exception) when
 * there is none: read only through gevent's own Greenlet.name (a greenlet
 * of a subclass that overrides it, or a raw greenlet, gets none). */
static PyObject *
greenlet_name(ddl_state *st, PyObject *g)
{
    if (st->greenlet_name == NULL ||
        ddl_type_lookup(Py_TYPE(g), st->str_name_attr) != st->greenlet_name) {
        return NULL;
    }
    PyObject *name = PyObject_GetAttr(g, st->str_name_attr);
    if (name == NULL || !PyUnicode_Check(name)) {
        Py_XDECREF(name);
        PyErr_Clear();
        return NULL;
    }
    return name;
}

PyObject *
ddl_task_name(ddl_state *st, PyObject *task)
{
    PyObject *name = asyncio_task_name(st, task);
    if (name == NULL && !PyErr_Occurred()) {
        name = greenlet_name(st, task);
    }
    if (name == NULL || !PyUnicode_Check(name)) {
        Py_XDECREF(name);
        PyErr_Clear();
        return NULL;
    }
    return name;
}

size_t
ddl_task_labels(ddl_state *st, ddl_label *out, ddl_label_refs *refs)
{
    size_t n = 0;
    refs->n = 0;
    PyObject *task = current_asyncio_task(st);
    PyObject *name = NULL;
    if (task != NULL) {
        name = asyncio_task_name(st, task);
    }
    else if ((task = current_greenlet(st)) != NULL) {
        name = greenlet_name(st, task);
    }
    if (task == NULL) {
        return n;
    }
    out[n++] =
        (ddl_label){{"task id", 7}, {NULL, 0}, (int64_t)(uintptr_t)task};
    refs->refs[refs->n++] = task;
    if (name != NULL && PyUnicode_Check(name)) {
        ddl_str s;
        refs->refs[refs->n++] = name;
        ddl_str_of(&s, name, refs->refs, &refs->n);
        out[n++] = (ddl_label){{"task name", 9}, s, 0};
    }
    else {
        Py_XDECREF(name);
        PyErr_Clear();
    }
    return n;
}

void
ddl_label_refs_release(ddl_label_refs *refs)
{
    for (size_t i = 0; i < refs->n; i++) {
        Py_DECREF(refs->refs[i]);
    }
    refs->n = 0;
}
