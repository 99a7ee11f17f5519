/*
 * seenn._core._speedups: the optional compiled twin of the tracking hot path.
 *
 * Pure Python stays the reference. This module holds only what a job does on
 * every change, written so that each function either does exactly what its
 * Python twin would do, or hands the whole call to that twin before changing
 * anything:
 *
 *   EventSlots  the twenty fields of a JobEvent (the Python twin is
 *               seenn._core.events._PyEventSlots);
 *   JobSlots    the hot fields of a tracked job, with __enter__, __exit__ and
 *               set_progress for a job with nothing configured, and _emit(),
 *               which builds a JobEvent and hands it to the processors (the
 *               Python twin is seenn._instrumentation.lifecycle._PyJobSlots and
 *               the methods of JobCore and TrackedJob).
 *
 * The Python side calls bind() once at import with what these functions read:
 * the lifecycle module's globals (looked up at each call, as Python does, so a
 * patched global is seen; SPAN_KEY, STATUS and the type of _Lock() are taken
 * once), the ambient-job ContextVar and the JobEvent class. Two things the
 * twins go through are used directly instead: the ContextVar's own get, set
 * and reset (lifecycle's _get, _set and _reset are those bound methods), and
 * _emit (the compiled methods call the compiled _emit; a subclass of
 * TrackedJob that overrides _emit is not supported). Setting
 * SEENN_NO_EXTENSIONS=1 makes seenn ignore this module, and so does a
 * sub-interpreter (bound state is per process).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>

/* ------------------------------------------------------------------------ */
/* EventSlots                                                               */

#define N_EVENT_FIELDS 20

static const char *const EVENT_FIELDS[N_EVENT_FIELDS] = {
    "kind", "job_id", "job_type", "user_id", "title", "status", "progress", "message",
    "stage", "queue", "metadata", "result", "error", "retryable", "parent_id",
    "child_index", "sequence", "timestamp", "trace_id", "span_id",
};

enum {
    EV_KIND, EV_JOB_ID, EV_JOB_TYPE, EV_USER_ID, EV_TITLE, EV_STATUS, EV_PROGRESS, EV_MESSAGE,
    EV_STAGE, EV_QUEUE, EV_METADATA, EV_RESULT, EV_ERROR, EV_RETRYABLE, EV_PARENT_ID,
    EV_CHILD_INDEX, EV_SEQUENCE, EV_TIMESTAMP, EV_TRACE_ID, EV_SPAN_ID,
};

typedef struct {
    PyObject_HEAD
    PyObject *fields[N_EVENT_FIELDS];
} EventSlotsObject;

static PyMemberDef event_members[N_EVENT_FIELDS + 1];

/* Both types are a header and then object fields only: one traverse, clear
 * and dealloc each, given how many fields there are. */
#define FIELDS(self) ((PyObject **)((char *)(self) + sizeof(PyObject)))

static int
traverse_fields(PyObject *self, int count, visitproc visit, void *arg)
{
    for (int i = 0; i < count; i++) {
        Py_VISIT(FIELDS(self)[i]);
    }
    return 0;
}

static int
clear_fields(PyObject *self, int count)
{
    for (int i = 0; i < count; i++) {
        Py_CLEAR(FIELDS(self)[i]);
    }
    return 0;
}


/* An empty instance. Arguments are refused unless an __init__ takes them, as
 * object() does for the Python twins (classes with __slots__). */
static PyObject *
fields_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if ((PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs)))
            && type->tp_init == PyBaseObject_Type.tp_init) {
        PyErr_Format(PyExc_TypeError, "%.200s() takes no arguments", type->tp_name);
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

/* A type's traverse, clear and dealloc, for ``count`` fields. */
#define FIELD_HOOKS(prefix, count)                                       \
    static int prefix##_traverse(PyObject *self, visitproc visit, void *arg) \
    {                                                                    \
        return traverse_fields(self, (count), visit, arg);               \
    }                                                                    \
    static int prefix##_clear(PyObject *self)                            \
    {                                                                    \
        return clear_fields(self, (count));                              \
    }                                                                    \
    /* The trashcan: freeing a long chain (a job's parent's parent ...) */ \
    /* must not recurse as deep as the chain. */                         \
    static void prefix##_dealloc(PyObject *self)                         \
    {                                                                    \
        PyObject_GC_UnTrack(self);                                       \
        Py_TRASHCAN_BEGIN(self, prefix##_dealloc)                        \
        clear_fields(self, (count));                                     \
        Py_TYPE(self)->tp_free(self);                                    \
        Py_TRASHCAN_END                                                  \
    }

FIELD_HOOKS(event, N_EVENT_FIELDS)

/* A type of object fields only, made to be subclassed in Python. */
#define FIELDS_TYPE(name, doc, object, new, prefix, methods) {          \
    PyVarObject_HEAD_INIT(NULL, 0)                                       \
    .tp_name = "seenn._core._speedups." name,                           \
    .tp_doc = PyDoc_STR(doc),                                            \
    .tp_basicsize = sizeof(object),                                      \
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, \
    .tp_new = new,                                                       \
    .tp_dealloc = prefix##_dealloc,                                      \
    .tp_traverse = prefix##_traverse,                                    \
    .tp_clear = prefix##_clear,                                          \
    .tp_members = prefix##_members,                                      \
    .tp_methods = methods,                                               \
}

static PyTypeObject EventSlotsType = FIELDS_TYPE(
    "EventSlots", "The storage of an event: one slot per JobEvent field.",
    EventSlotsObject, fields_new, event, NULL);

/* ------------------------------------------------------------------------ */
/* JobSlots                                                                 */

typedef struct {
    PyObject_HEAD
    PyObject *eta_at;
    PyObject *eta_base;
    PyObject *eta_began;
    PyObject *eta_marks;
    PyObject *eta_next;
    PyObject *eta_p;
    PyObject *job_type;
    PyObject *lock;
    PyObject *procs;
    PyObject *progress;
    PyObject *seq;
    PyObject *state;
    PyObject *token;
    PyObject *tracker;
    PyObject *user_id;
    /* None until set (made so by job_new): the Python twin's class defaults. */
    PyObject *id;
    PyObject *parent;
    PyObject *title;
    PyObject *message;
    PyObject *stage;
    PyObject *queue;
    PyObject *metadata;
    PyObject *child_index;
    PyObject *result;
    PyObject *error;
    PyObject *retryable;
} JobSlotsObject;

#define JOB_MEMBER(name, field) \
    {name, T_OBJECT_EX, offsetof(JobSlotsObject, field), 0, NULL}

static PyMemberDef job_members[] = {
    JOB_MEMBER("_eta_at", eta_at),
    JOB_MEMBER("_eta_base", eta_base),
    JOB_MEMBER("_eta_began", eta_began),
    JOB_MEMBER("_eta_marks", eta_marks),
    JOB_MEMBER("_eta_next", eta_next),
    JOB_MEMBER("_eta_p", eta_p),
    JOB_MEMBER("_job_type", job_type),
    JOB_MEMBER("_lock", lock),
    JOB_MEMBER("_procs", procs),
    JOB_MEMBER("_progress", progress),
    JOB_MEMBER("_seq", seq),
    JOB_MEMBER("_state", state),
    JOB_MEMBER("_token", token),
    JOB_MEMBER("_tracker", tracker),
    JOB_MEMBER("_user_id", user_id),
    JOB_MEMBER("_id", id),
    JOB_MEMBER("_parent", parent),
    JOB_MEMBER("_title", title),
    JOB_MEMBER("_message", message),
    JOB_MEMBER("_stage", stage),
    JOB_MEMBER("_queue", queue),
    JOB_MEMBER("_metadata", metadata),
    JOB_MEMBER("_child_index", child_index),
    JOB_MEMBER("_result", result),
    JOB_MEMBER("_error", error),
    JOB_MEMBER("_retryable", retryable),
    {NULL, 0, 0, 0, NULL},
};

#define JOB_FIELD_COUNT 26  /* the fields, in this order, are all the struct holds */
#define JOB_FIRST_DEFAULT 15  /* the fields from _id on start as None */

_Static_assert(sizeof(JobSlotsObject) == sizeof(PyObject) + JOB_FIELD_COUNT * sizeof(PyObject *),
               "JobSlotsObject must hold object fields only");
_Static_assert(offsetof(JobSlotsObject, id) == sizeof(PyObject)
                                              + JOB_FIRST_DEFAULT * sizeof(PyObject *),
               "the fields that start as None must come last");
_Static_assert(sizeof(EventSlotsObject) == sizeof(PyObject) + N_EVENT_FIELDS * sizeof(PyObject *),
               "EventSlotsObject must hold object fields only");

FIELD_HOOKS(job, JOB_FIELD_COUNT)

static PyObject *
job_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *self = fields_new(type, args, kwargs);
    if (self != NULL) {
        for (int i = JOB_FIRST_DEFAULT; i < JOB_FIELD_COUNT; i++) {
            Py_INCREF(Py_None);
            FIELDS(self)[i] = Py_None;
        }
    }
    return self;
}

/* What bind() gave, and names made once. The lifecycle module's globals are
 * looked up at each call, as Python does (tests replace some), except two
 * constants read on every event (SPAN_KEY and STATUS), taken once at bind(). */
static PyObject *g_globals;
static PyObject *g_current_job;  /* the ambient-job ContextVar */
static PyTypeObject *g_event_type;  /* JobEvent */
static PyObject *b_span_key, *b_status;
static PyTypeObject *g_lock_type;  /* the type of what _Lock() makes */

static PyObject *s_enter_full, *s_exit_full, *s_set_progress_full, *s_processors, *s_on_event,
    *s_get, *s_get_span_context, *s_is_valid, *s_trace_id, *s_span_id, *s_id, *s_fmt_trace,
    *s_fmt_span, *s_adopt, *s_started, *s_progress, *s_completed, *s_failed, *s_acquire, *s_release, *s_building, *s_dash,
    *g_time, *g_new_job_id, *g_current_context, *g_span_key, *g_span, *g_status,
    *g_internal_error, *g_is_strict, *g_restore, *g_lock;

static PyObject *small_minus_one, *small_zero, *small_one, *small_five, *small_hundred;
static PyObject *g_empty_tuple;

/* Read-only state numbers (see seenn._instrumentation.states). */
enum { S_RUNNING = 1, S_QUEUED = 2, S_HANDED = 3, S_COMPLETED = 5 };

/* The value of an exact int in [-1000, 1000], or LONG_MIN for anything else. */
static long
small_value(PyObject *obj)
{
    if (obj == NULL || !PyLong_CheckExact(obj)) {
        return LONG_MIN;
    }
    int overflow = 0;
    long value = PyLong_AsLongAndOverflow(obj, &overflow);
    if (overflow || value < -1000 || value > 1000) {
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
        }
        return LONG_MIN;
    }
    return value;
}

static int
check_bound(void)
{
    if (g_globals == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "seenn._core._speedups is not bound");
        return -1;
    }
    return 0;
}

/* A global of the lifecycle module, as LOAD_GLOBAL finds it (builtins not needed). */
static PyObject *
module_global(PyObject *name)
{
    PyObject *value = PyDict_GetItemWithError(g_globals, name);
    if (value == NULL && !PyErr_Occurred()) {
        PyErr_Format(PyExc_NameError, "name '%U' is not defined", name);
    }
    return value;  /* borrowed */
}

/* Call a global of the lifecycle module (held while it runs: a call may
 * replace it): a new reference, or NULL with the error. */
static PyObject *
call_global(PyObject *name, PyObject *const *args, size_t nargs)
{
    PyObject *callable = module_global(name);
    if (callable == NULL) {
        return NULL;
    }
    Py_INCREF(callable);
    PyObject *result = PyObject_Vectorcall(callable, args, nargs, NULL);
    Py_DECREF(callable);
    return result;
}

/* An error raised while another one was being handled: as Python does, the
 * new one (set) gets the old one (type, value, tb; references taken) as its
 * __context__. */
static void
chain_context(PyObject *type, PyObject *value, PyObject *tb)
{
    if (type == NULL) {
        return;
    }
    /* The new error is taken out first: normalizing the old one may call its
     * class, which must not run with an error set. */
    PyObject *new_type, *new_value, *new_tb;
    PyErr_Fetch(&new_type, &new_value, &new_tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyErr_NormalizeException(&new_type, &new_value, &new_tb);
    if (new_value != NULL && value != NULL) {
        /* No cycle: the new error must not already be in the old one's chain. */
        int seen = 0;
        PyObject *link = value;
        for (int depth = 0; link != NULL && depth < 1000; depth++) {
            if (link == new_value) {
                seen = 1;
                break;
            }
            PyObject *next = PyException_GetContext(link);
            Py_XDECREF(next);  /* kept alive by link */
            link = next;
        }
        if (!seen) {
            PyException_SetContext(new_value, value);  /* steals the reference */
            value = NULL;
        }
    }
    PyErr_Restore(new_type, new_value, new_tb);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* Hand the whole call to the Python twin, ``self.<name>(*args, **kwargs)``. */
static PyObject *
delegate(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    Py_ssize_t total = 1 + nargs + nkw;
    PyObject *small[8];
    PyObject **stack = total <= 8 ? small : PyMem_Malloc(total * sizeof(PyObject *));
    if (stack == NULL) {
        return PyErr_NoMemory();
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *result = PyObject_VectorcallMethod(name, stack, (size_t)(1 + nargs), kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return result;
}

/* Store ``value`` (a new reference, or NULL on error) in *slot. */
static int
store(PyObject **slot, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    Py_XSETREF(*slot, value);
    return 0;
}

/* The AttributeError Python raises for a field read after it was deleted. */
static int
missing(JobSlotsObject *self, const char *name)
{
    PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                 Py_TYPE(self)->tp_name, name);
    return -1;
}

/* ``self.<name>`` for a field whose Python twin is a class default of None
 * (deleting the job's own value brings the default back): a new reference. */
static PyObject *
job_attr(PyObject *field)
{
    field = field == NULL ? Py_None : field;
    Py_INCREF(field);
    return field;
}

static int
str_equals(PyObject *obj, PyObject *interned)
{
    if (obj == interned) {
        return 1;
    }
    if (PyUnicode_CheckExact(obj) && PyUnicode_CHECK_INTERNED(obj)) {
        return 0;  /* two different interned strings */
    }
    return PyUnicode_Check(obj) && PyUnicode_Compare(obj, interned) == 0;
}

/* Log an Exception raised inside _emit() as internal_error() does; re-raise it
 * in strict mode. Returns NULL with the exception set to propagate, or None. */
static PyObject *
report_internal(PyObject *what, PyObject *job_id)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyObject *result = NULL;
    PyObject *ids = PyTuple_Pack(1, job_id);
    if (ids != NULL) {
        PyObject *args[3] = {what, value, ids};
        PyObject *logged = call_global(g_internal_error, args, 3);
        Py_DECREF(ids);
        if (logged != NULL) {
            Py_DECREF(logged);
            PyObject *strict = call_global(g_is_strict, NULL, 0);
            if (strict != NULL) {
                int raise = PyObject_IsTrue(strict);
                Py_DECREF(strict);
                if (raise > 0) {
                    PyErr_Restore(type, value, tb);
                    return NULL;
                }
                if (raise == 0) {
                    result = Py_None;
                    Py_INCREF(result);
                }
            }
        }
    }
    if (result == NULL) {
        chain_context(type, value, tb);
        return NULL;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return result;
}

/* The active span's ids into the event, as lifecycle's _emit() reads them. */
static int
set_trace_ids(EventSlotsObject *event)
{
    PyObject *context = call_global(g_current_context, NULL, 0);
    if (context == NULL) {
        return -1;
    }
    PyObject *span = PyObject_CallMethodOneArg(context, s_get, b_span_key);
    Py_DECREF(context);
    if (span == NULL) {
        return -1;
    }
    PyObject *trace_id = NULL, *span_id = NULL;
    if (span != Py_None) {
        PyObject *span_type = module_global(g_span);
        Py_XINCREF(span_type);
        int is_span = span_type == NULL ? -1 : PyObject_IsInstance(span, span_type);
        Py_XDECREF(span_type);
        if (is_span < 0) {
            Py_DECREF(span);
            return -1;
        }
        if (is_span) {
            PyObject *span_context = PyObject_CallMethodNoArgs(span, s_get_span_context);
            Py_DECREF(span);
            if (span_context == NULL) {
                return -1;
            }
            PyObject *valid = PyObject_GetAttr(span_context, s_is_valid);
            int is_valid = valid == NULL ? -1 : PyObject_IsTrue(valid);
            Py_XDECREF(valid);
            if (is_valid > 0) {
                PyObject *raw = PyObject_GetAttr(span_context, s_trace_id);
                trace_id = raw == NULL ? NULL : PyObject_Format(raw, s_fmt_trace);
                Py_XDECREF(raw);
                if (trace_id != NULL) {
                    raw = PyObject_GetAttr(span_context, s_span_id);
                    span_id = raw == NULL ? NULL : PyObject_Format(raw, s_fmt_span);
                    Py_XDECREF(raw);
                }
                if (span_id == NULL) {
                    Py_XDECREF(trace_id);
                    is_valid = -1;
                }
            }
            Py_DECREF(span_context);
            if (is_valid < 0) {
                return -1;
            }
        }
        else {
            Py_DECREF(span);
        }
    }
    else {
        Py_DECREF(span);
    }
    if (trace_id == NULL) {
        trace_id = Py_None;
        span_id = Py_None;
        Py_INCREF(Py_None);
        Py_INCREF(Py_None);
    }
    event->fields[EV_TRACE_ID] = trace_id;
    event->fields[EV_SPAN_ID] = span_id;
    return 0;
}

/* The ETA bookkeeping of a running job's event (see lifecycle's _emit()). */
static int
record_eta(JobSlotsObject *self, PyObject *progress, PyObject *now)
{
    if (self->eta_p == NULL) {
        missing(self, "_eta_p");
        return -1;
    }
    PyObject *last = self->eta_p;
    Py_INCREF(last);  /* the comparison may run code that replaces it */
    int changed = PyObject_RichCompareBool(progress, last, Py_NE);
    Py_DECREF(last);
    if (changed <= 0) {
        return changed;
    }
    Py_INCREF(progress);
    Py_XSETREF(self->eta_p, progress);
    Py_INCREF(now);
    Py_XSETREF(self->eta_at, now);
    PyObject *next_mark = self->eta_next;
    if (next_mark == NULL) {
        missing(self, "_eta_next");
        return -1;
    }
    Py_INCREF(next_mark);
    int passed = PyObject_RichCompareBool(progress, next_mark, Py_GE);
    int started = passed > 0 ? PyObject_IsTrue(next_mark) : 0;
    Py_DECREF(next_mark);
    if (passed <= 0 || started < 0) {
        return passed < 0 || started < 0 ? -1 : 0;
    }
    long state = small_value(self->state);
    if (!started && state != S_RUNNING && state != S_HANDED) {
        Py_INCREF(small_minus_one);  /* not running yet: look again at the next event */
        Py_XSETREF(self->eta_p, small_minus_one);
        return 0;
    }
    if (started) {
        PyObject *marks = self->eta_marks;
        if (marks == NULL) {
            missing(self, "_eta_marks");
            return -1;
        }
        if (PyList_CheckExact(marks)) {
            if (PyList_Append(marks, progress) < 0 || PyList_Append(marks, now) < 0) {
                return -1;
            }
        }
        else {
            PyObject *pair = PyTuple_Pack(2, progress, now);
            Py_INCREF(marks);
            PyObject *grown = pair == NULL ? NULL : PyNumber_InPlaceAdd(marks, pair);
            Py_DECREF(marks);
            Py_XDECREF(pair);
            if (grown == NULL) {
                return -1;
            }
            Py_DECREF(grown);
        }
    }
    else {
        Py_INCREF(now);
        Py_XSETREF(self->eta_began, now);
        Py_INCREF(progress);
        Py_XSETREF(self->eta_base, progress);
        if (store(&self->eta_marks, PyList_New(0)) < 0) {
            return -1;
        }
    }
    PyObject *odd = PyNumber_Or(progress, small_one);
    PyObject *next = odd == NULL ? NULL : PyNumber_Add(odd, small_one);
    Py_XDECREF(odd);
    return store(&self->eta_next, next);
}

/* Build the event of the current state (everything but processing it). */
static EventSlotsObject *
build_event(JobSlotsObject *self, PyObject *kind, PyObject **job_id_out)
{
    PyObject *now = NULL, *job_id = NULL, *parent = NULL;
    EventSlotsObject *event = NULL;

    if (self->seq == NULL) {
        missing(self, "_seq");
        return NULL;
    }
    PyObject *seq = self->seq;
    Py_INCREF(seq);
    if (store(&self->seq, PyNumber_Add(seq, small_one)) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    now = call_global(g_time, NULL, 0);
    if (now == NULL) {
        goto error;
    }
    if ((job_id = job_attr(self->id)) == NULL) {
        goto error;
    }
    if (job_id == Py_None) {
        Py_SETREF(job_id, call_global(g_new_job_id, &now, 1));
        if (job_id == NULL) {
            goto error;
        }
        Py_INCREF(job_id);
        Py_XSETREF(self->id, job_id);
    }
    parent = job_attr(self->parent);
    if (parent == NULL) {
        goto error;
    }
    event = (EventSlotsObject *)g_event_type->tp_alloc(g_event_type, 0);
    if (event == NULL || set_trace_ids(event) < 0) {
        goto error;
    }
    PyObject **f = event->fields;
    Py_INCREF(kind);
    f[EV_KIND] = kind;
    Py_INCREF(job_id);
    f[EV_JOB_ID] = job_id;
    if ((self->job_type == NULL && missing(self, "_job_type") < 0)
            || (self->user_id == NULL && missing(self, "_user_id") < 0)
            || (self->state == NULL && missing(self, "_state") < 0)
            || (self->progress == NULL && missing(self, "_progress") < 0)) {
        goto error;
    }
    Py_INCREF(self->job_type);
    f[EV_JOB_TYPE] = self->job_type;
    Py_INCREF(self->user_id);
    f[EV_USER_ID] = self->user_id;
    if ((f[EV_TITLE] = job_attr(self->title)) == NULL) {
        goto error;
    }
    if ((f[EV_STATUS] = PyObject_GetItem(b_status, self->state)) == NULL) {
        goto error;
    }
    PyObject *progress = self->progress;
    Py_INCREF(progress);
    f[EV_PROGRESS] = progress;
    if ((f[EV_MESSAGE] = job_attr(self->message)) == NULL
            || (f[EV_STAGE] = job_attr(self->stage)) == NULL
            || (f[EV_QUEUE] = job_attr(self->queue)) == NULL
            || (f[EV_METADATA] = job_attr(self->metadata)) == NULL) {
        goto error;
    }
    if (parent == Py_None) {
        Py_INCREF(Py_None);
        f[EV_PARENT_ID] = Py_None;
    }
    else if ((f[EV_PARENT_ID] = PyObject_GetAttr(parent, s_id)) == NULL) {
        goto error;
    }
    if ((f[EV_CHILD_INDEX] = job_attr(self->child_index)) == NULL) {
        goto error;
    }
    f[EV_SEQUENCE] = seq;
    seq = NULL;
    Py_INCREF(now);
    f[EV_TIMESTAMP] = now;
    if (str_equals(kind, s_completed)) {
        if ((f[EV_RESULT] = job_attr(self->result)) == NULL) {
            goto error;
        }
        Py_INCREF(Py_None);
        f[EV_ERROR] = Py_None;
        Py_INCREF(Py_None);
        f[EV_RETRYABLE] = Py_None;
    }
    else if (str_equals(kind, s_failed)) {
        Py_INCREF(Py_None);
        f[EV_RESULT] = Py_None;
        if ((f[EV_ERROR] = job_attr(self->error)) == NULL
                || (f[EV_RETRYABLE] = job_attr(self->retryable)) == NULL) {
            goto error;
        }
    }
    else {
        Py_INCREF(Py_None);
        f[EV_RESULT] = Py_None;
        Py_INCREF(Py_None);
        f[EV_ERROR] = Py_None;
        Py_INCREF(Py_None);
        f[EV_RETRYABLE] = Py_None;
        if (record_eta(self, progress, now) < 0) {
            goto error;
        }
    }
    Py_DECREF(now);
    Py_DECREF(parent);
    *job_id_out = job_id;
    return event;

error:
    Py_XDECREF(seq);
    Py_XDECREF(now);
    Py_XDECREF(job_id);
    Py_XDECREF(parent);
    Py_XDECREF(event);
    return NULL;
}

static PyObject *
job_emit(JobSlotsObject *self, PyObject *kind)
{
    if (check_bound() < 0) {
        return NULL;
    }
    PyObject *job_id = NULL;
    EventSlotsObject *event = build_event(self, kind, &job_id);
    if (event == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        /* A bug here must not break the tracked code any more than a failing
         * exporter would. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *id = job_attr(self->id);
        int truthy = id == NULL ? -1 : PyObject_IsTrue(id);
        if (truthy < 0) {
            Py_XDECREF(id);
            chain_context(type, value, tb);
            return NULL;
        }
        if (!truthy) {
            Py_SETREF(id, Py_NewRef(s_dash));
        }
        PyErr_Restore(type, value, tb);
        PyObject *result = report_internal(s_building, id);
        Py_DECREF(id);
        return result;
    }
    PyObject *procs = self->procs;
    if (procs == NULL) {
        missing(self, "_procs");
        goto fail;
    }
    Py_INCREF(procs);
    PyObject *iterator = PyObject_GetIter(procs);
    Py_DECREF(procs);
    if (iterator == NULL) {
        goto fail;
    }
    PyObject *processor;
    while ((processor = PyIter_Next(iterator)) != NULL) {
        PyObject *done = PyObject_CallMethodOneArg(processor, s_on_event, (PyObject *)event);
        if (done != NULL) {
            Py_DECREF(done);
            Py_DECREF(processor);
            continue;
        }
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(processor);
            Py_DECREF(iterator);
            goto fail;
        }
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(processor), "__name__");
        PyObject *what = name == NULL ? NULL : PyUnicode_FromFormat("processor %S", name);
        Py_XDECREF(name);
        Py_DECREF(processor);
        if (what == NULL) {
            chain_context(type, value, tb);
        }
        else {
            PyErr_Restore(type, value, tb);
        }
        if (what == NULL) {
            Py_DECREF(iterator);
            goto fail;
        }
        PyObject *reported = report_internal(what, job_id);
        Py_DECREF(what);
        if (reported == NULL) {
            Py_DECREF(iterator);
            goto fail;
        }
        Py_DECREF(reported);
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        goto fail;
    }
    Py_DECREF(event);
    Py_DECREF(job_id);
    Py_RETURN_NONE;

fail:
    Py_DECREF(event);
    Py_DECREF(job_id);
    return NULL;
}

/* Call ``lock.acquire()`` or ``lock.release()``: 0, or -1 with an exception. */
static int
call_lock(PyObject *lock, PyObject *name)
{
    PyObject *stack[1] = {lock};
    PyObject *done = PyObject_VectorcallMethod(name, stack, 1, NULL);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

static int
running_here(long state)
{
    return 0 < state && state < S_HANDED;  /* RUNNING or QUEUED */
}

static int
not_ended(long state)
{
    return state != LONG_MIN && state < S_COMPLETED;
}

/* Take the job's lock (a lock of _Lock's type: the caller checked) if,
 * under it, the state passes ``ok``. Returns the lock (a new reference,
 * held), or NULL: without an error set when the state did not pass (nothing
 * changed: the caller hands the call to its Python twin), with one if taking
 * or releasing the lock failed (a KeyboardInterrupt while waiting, say), as
 * ``with lock:`` would raise it. */
static PyObject *
lock_when(JobSlotsObject *self, int (*ok)(long))
{
    PyObject *lock = self->lock;
    Py_INCREF(lock);
    if (call_lock(lock, s_acquire) < 0) {
        Py_DECREF(lock);
        return NULL;
    }
    if (ok(small_value(self->state))) {
        return lock;
    }
    call_lock(lock, s_release);
    Py_DECREF(lock);
    return NULL;
}

/* Run _emit(kind) under the job's lock, as ``with self._lock:`` would around
 * the stores the caller made under it: returns None, or NULL with the error.
 * The lock is released either way. */
static PyObject *
emit_and_release(JobSlotsObject *self, PyObject *lock, PyObject *kind)
{
    PyObject *result = job_emit(self, kind);
    if (result == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (call_lock(lock, s_release) < 0) {
            chain_context(type, value, tb);
        }
        else {
            PyErr_Restore(type, value, tb);
        }
        return NULL;
    }
    if (call_lock(lock, s_release) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

/* ``self._token`` back to the context it came from, as __exit__'s tail does:
 * 0, or -1 with the error (the token then stays). */
static int
reset_token(JobSlotsObject *self)
{
    PyObject *token = self->token;
    if (token == NULL) {  /* deleted by a processor meanwhile: as the twin reads it */
        missing(self, "_token");
        return -1;
    }
    Py_INCREF(token);
    if (PyContextVar_Reset(g_current_job, token) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            Py_DECREF(token);
            return -1;
        }
        PyErr_Clear();
        PyObject *done = call_global(g_restore, &token, 1);
        if (done == NULL) {
            Py_DECREF(token);
            return -1;
        }
        Py_DECREF(done);
    }
    Py_DECREF(token);
    Py_INCREF(Py_None);
    Py_XSETREF(self->token, Py_None);
    return 0;
}

static PyObject *
job_enter(JobSlotsObject *self, PyObject *Py_UNUSED(ignored))
{
    /* A new job (not made with a queue): JobCore's __enter__ for that case,
     * written out. Anything else is _enter_full's. */
    if (check_bound() < 0) {
        return NULL;
    }
    if (small_value(self->state) != 0 || self->tracker == NULL) {
        goto full;
    }
    PyObject *parent;
    if (PyContextVar_Get(g_current_job, NULL, &parent) < 0) {
        return NULL;
    }
    if (parent == NULL) {
        goto full;  /* no value and no default: not the ContextVar bind() checked */
    }
    if (parent != Py_None) {
        /* A child of the ambient job: JobCore._adopt() as the twin calls it. */
        PyObject *adopted = PyObject_CallMethodOneArg((PyObject *)self, s_adopt, parent);
        Py_DECREF(parent);
        if (adopted == NULL) {
            return NULL;
        }
        Py_DECREF(adopted);
    }
    else {
        Py_DECREF(parent);
    }
    Py_INCREF(small_one);
    Py_XSETREF(self->state, small_one);  /* RUNNING */
    PyObject *tracker = self->tracker;
    if (tracker == NULL) {  /* deleted by _adopt(): as the twin reads it */
        missing(self, "_tracker");
        return NULL;
    }
    Py_INCREF(tracker);
    PyObject *procs = PyObject_GetAttr(tracker, s_processors);
    Py_DECREF(tracker);
    int configured = procs == NULL ? -1 : PyObject_IsTrue(procs);
    if (configured < 0) {
        Py_XDECREF(procs);
        return NULL;  /* as the twin, which reads them after the same stores */
    }
    if (configured) {
        Py_XSETREF(self->procs, procs);
        procs = NULL;
        Py_INCREF(small_zero);
        Py_XSETREF(self->seq, small_zero);
        Py_INCREF(small_minus_one);
        Py_XSETREF(self->eta_p, small_minus_one);
        Py_INCREF(small_zero);
        Py_XSETREF(self->eta_next, small_zero);
        /* No other thread can reach the job before it is entered: no locking yet. */
        if (store(&self->lock, call_global(g_lock, NULL, 0)) < 0) {
            return NULL;
        }
        PyObject *done = job_emit(self, s_started);
        if (done == NULL) {
            return NULL;
        }
        Py_DECREF(done);
    }
    Py_XDECREF(procs);
    PyObject *token = PyContextVar_Set(g_current_job, (PyObject *)self);
    if (token == NULL) {
        return NULL;
    }
    Py_XSETREF(self->token, token);
    Py_INCREF(self);
    return (PyObject *)self;

full:
    return PyObject_CallMethodNoArgs((PyObject *)self, s_enter_full);
}

/* As __exit__ does when ending the job raised (the error is set): put the
 * ambient job back, forget the token, and let the error through. */
static PyObject *
exit_failed(JobSlotsObject *self)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *token = self->token;
    if (token == NULL) {
        missing(self, "_token");
        chain_context(type, value, tb);
        return NULL;
    }
    Py_INCREF(token);
    PyObject *restored = call_global(g_restore, &token, 1);
    Py_DECREF(token);
    if (restored == NULL) {
        chain_context(type, value, tb);
        return NULL;
    }
    Py_DECREF(restored);
    Py_INCREF(Py_None);
    Py_XSETREF(self->token, Py_None);
    PyErr_Restore(type, value, tb);
    return NULL;
}

static PyObject *
job_exit(JobSlotsObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* A block left without an exception by a running (or queued) job:
     * JobCore's __exit__ and _succeed(None) for that case, written out.
     * Anything else is _exit_full's. */
    if (check_bound() < 0) {
        return NULL;
    }
    long state = small_value(self->state);
    if (nargs != 3 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) || args[1] != Py_None
            || self->lock == NULL || self->token == NULL || state == LONG_MIN) {
        goto full;
    }
    if (self->lock == Py_None) {
        /* Nothing configured: completing is one store (the progress property
         * reads 100 for a completed job). */
        if (state < S_HANDED) {
            Py_INCREF(small_five);
            Py_XSETREF(self->state, small_five);
        }
        if (reset_token(self) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (state <= 0 || state >= S_HANDED || !Py_IS_TYPE(self->lock, g_lock_type)) {
        goto full;
    }
    /* Under the lock, unless another thread ended or handed it meanwhile. */
    PyObject *lock = lock_when(self, running_here);
    if (lock == NULL) {
        if (PyErr_Occurred()) {
            return exit_failed(self);
        }
        goto full;
    }
    Py_INCREF(small_five);
    Py_XSETREF(self->state, small_five);  /* COMPLETED */
    Py_INCREF(small_hundred);
    Py_XSETREF(self->progress, small_hundred);
    PyObject *done = emit_and_release(self, lock, s_completed);
    Py_DECREF(lock);
    if (done == NULL) {
        return exit_failed(self);
    }
    Py_DECREF(done);
    if (reset_token(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;

full:
    return delegate((PyObject *)self, s_exit_full, args, nargs, kwnames);
}

static PyObject *
job_set_progress(JobSlotsObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    /* A bare in-range percentage: TrackedJob.set_progress for that case,
     * written out. Anything else is _set_progress_full's. */
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        goto full;
    }
    PyObject *progress = args[0];
    long value = small_value(progress);
    if (value < 0 || value > 100 || self->lock == NULL) {
        goto full;
    }
    long state = small_value(self->state);
    if (self->lock == Py_None) {
        if (state == S_RUNNING) {
            Py_INCREF(progress);
            Py_XSETREF(self->progress, progress);
            Py_RETURN_NONE;
        }
        goto full;
    }
    long current = small_value(self->progress);
    if (current == LONG_MIN || !Py_IS_TYPE(self->lock, g_lock_type)) {
        goto full;  /* not what this path compares, or not a lock it knows */
    }
    if (value == current && (state == S_RUNNING || state == S_HANDED)) {
        /* Nothing would change: no event. */
        Py_RETURN_NONE;
    }
    /* Under the lock, unless it ended meanwhile (the twin logs that the
     * update is ignored). */
    PyObject *lock = lock_when(self, not_ended);
    if (lock == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        goto full;
    }
    state = small_value(self->state);
    Py_INCREF(progress);
    Py_XSETREF(self->progress, progress);
    if (state == S_QUEUED) {
        Py_INCREF(small_one);
        Py_XSETREF(self->state, small_one);
    }
    PyObject *done = emit_and_release(self, lock, s_progress);
    Py_DECREF(lock);
    return done;

full:
    return delegate((PyObject *)self, s_set_progress_full, args, nargs, kwnames);
}

static PyMethodDef job_methods[] = {
    {"__enter__", (PyCFunction)job_enter, METH_NOARGS,
     PyDoc_STR("__enter__($self, /)\n--\n\nStart the job and make it the ambient job.")},
    {"__exit__", (PyCFunction)(void (*)(void))job_exit, METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("__exit__($self, exc_type, exc, tb, /)\n--\n\n"
               "Complete the job, or fail it with the exception's details.")},
    {"set_progress", (PyCFunction)(void (*)(void))job_set_progress,
     METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("set_progress($self, progress, /, **options)\n--\n\n"
               "Report how far the job has got: percent done, 0 to 100 (floats are floored).\n\n"
               "Options: message, stage, queue, metadata. Raises ValidationError for a bad\n"
               "argument, before anything changes. (The compiled twin of the documented\n"
               "TrackedJob.set_progress.)")},
    {"_emit", (PyCFunction)job_emit, METH_O,
     PyDoc_STR("_emit($self, kind, /)\n--\n\n"
               "Build the event for the current state and hand it to the processors.")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject JobSlotsType = FIELDS_TYPE(
    "JobSlots", "The hot fields of a tracked job, and its compiled hot path.",
    JobSlotsObject, job_new, job, job_methods);

/* ------------------------------------------------------------------------ */
/* TrackerBase                                                              */

/* What bind_tracker() gave: the tracker module's globals (its caches of
 * checked job types and user ids are looked up at each call, as Python does)
 * and the class of the jobs it makes. */
static PyObject *g_tracker_globals;
static PyTypeObject *g_job_class;
static PyObject *s_user_id, *s_track_full, *s_tracked_job, *g_checked_types, *g_checked_users;

/* Whether ``key`` (an exact str) is in the tracker module's dict ``name``: 1,
 * 0 (not there, or not a plain dict: the twin decides), or -1 with an error. */
static int
in_cache(PyObject *name, PyObject *key)
{
    PyObject *cache = PyDict_GetItemWithError(g_tracker_globals, name);
    if (cache == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyDict_CheckExact(cache)) {
        return 0;
    }
    Py_INCREF(cache);  /* held: a lookup may run code (keys of other types) */
    int found = PyDict_Contains(cache, key);
    Py_DECREF(cache);
    return found;
}

static PyObject *
tracker_track(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* The common call, a job type and a user id both seen (checked) before:
     * Tracker.track's fast path, written out. Anything else is _track_full's. */
    if (g_tracker_globals == NULL || nargs != 1) {
        goto full;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nkw > 1 || (nkw == 1 && !str_equals(PyTuple_GET_ITEM(kwnames, 0), s_user_id))) {
        goto full;
    }
    PyObject *job_type = args[0];
    PyObject *user_id = nkw == 1 ? args[1] : Py_None;
    if (!PyUnicode_CheckExact(job_type)) {
        goto full;
    }
    int seen = in_cache(g_checked_types, job_type);
    if (seen > 0 && user_id != Py_None) {
        seen = PyUnicode_CheckExact(user_id) ? in_cache(g_checked_users, user_id) : 0;
    }
    if (seen < 0) {
        return NULL;
    }
    if (seen == 0) {
        goto full;
    }
    /* TrackedJob() (it has no __init__: an allocation) and the stores of the
     * twin; unless the module's TrackedJob is another class now, or has an
     * __init__ or __new__ of its own. */
    PyObject *job_class = PyDict_GetItemWithError(g_tracker_globals, s_tracked_job);
    if (job_class == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (job_class != (PyObject *)g_job_class || g_job_class->tp_new != job_new
            || g_job_class->tp_init != PyBaseObject_Type.tp_init) {
        goto full;
    }
    PyObject *job = job_new(g_job_class, g_empty_tuple, NULL);
    if (job == NULL) {
        return NULL;
    }
    JobSlotsObject *made = (JobSlotsObject *)job;
    Py_INCREF(self);
    made->tracker = self;
    Py_INCREF(job_type);
    made->job_type = job_type;
    Py_INCREF(user_id);
    made->user_id = user_id;
    Py_INCREF(small_zero);
    made->progress = small_zero;
    Py_INCREF(Py_None);
    made->lock = Py_None;
    Py_INCREF(small_zero);
    made->state = small_zero;
    return job;

full:
    return delegate(self, s_track_full, args, nargs, kwnames);
}

static PyMethodDef tracker_methods[] = {
    {"track", (PyCFunction)(void (*)(void))tracker_track, METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("track($self, job_type, /, *, user_id=None, **options)\n--\n\n"
               "Make a job to run as a with (or async with) block.\n\n"
               "Options: title, metadata, queue, stage, stages, job_id, retryable.\n"
               "Raises ValidationError for a bad argument. (The compiled twin of the\n"
               "documented Tracker.track.)")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TrackerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "seenn._core._speedups.TrackerBase",
    .tp_doc = PyDoc_STR("The compiled fast path of Tracker.track."),
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_methods = tracker_methods,
};

static PyObject *
speedups_bind_tracker(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *globals, *job_class;
    if (!PyArg_ParseTuple(args, "O!O!:bind_tracker", &PyDict_Type, &globals, &PyType_Type,
                          &job_class)) {
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)job_class;
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_RuntimeError, "seenn._core._speedups binds only in the main "
                        "interpreter");
        return NULL;
    }
    if (!PyType_IsSubtype(tp, &JobSlotsType) || tp->tp_init != PyBaseObject_Type.tp_init
            || tp->tp_new != JobSlotsType.tp_new) {
        PyErr_SetString(PyExc_TypeError, "the job class must be a JobSlots with no __init__");
        return NULL;
    }
    Py_INCREF(globals);
    Py_XSETREF(g_tracker_globals, globals);
    Py_INCREF(job_class);
    Py_XSETREF(g_job_class, tp);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* Module                                                                   */

static PyObject *
speedups_usable(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    /* The bound state is per process (static), so only the main interpreter
     * uses it; a sub-interpreter (mod_wsgi's, say) runs the Python twins. */
    return PyBool_FromLong(PyInterpreterState_Get() == PyInterpreterState_Main());
}

static PyObject *
speedups_bind(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *globals, *current_job, *event_type;
    if (!PyArg_ParseTuple(args, "O!OO!:bind", &PyDict_Type, &globals, &current_job,
                          &PyType_Type, &event_type)) {
        return NULL;
    }
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_RuntimeError, "seenn._core._speedups binds only in the main "
                        "interpreter");
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)event_type;
    if (!PyType_IsSubtype(tp, &EventSlotsType) || tp->tp_basicsize != EventSlotsType.tp_basicsize
            || tp->tp_dictoffset != 0 || tp->tp_itemsize != 0) {
        PyErr_SetString(PyExc_TypeError, "the event class must add no fields to EventSlots");
        return NULL;
    }
    if (!PyObject_TypeCheck(current_job, &PyContextVar_Type)) {
        PyErr_SetString(PyExc_TypeError, "current_job must be a ContextVar");
        return NULL;
    }
    PyObject *span_key = PyDict_GetItemWithError(globals, g_span_key);
    PyObject *status = span_key == NULL ? NULL : PyDict_GetItemWithError(globals, g_status);
    if (status == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_KeyError, "SPAN_KEY and STATUS must be bound");
        }
        return NULL;
    }
    Py_INCREF(span_key);
    Py_INCREF(status);
    PyObject *make_lock = PyDict_GetItemWithError(globals, g_lock);
    Py_XINCREF(make_lock);  /* held while it runs, as the two above */
    PyObject *probe = make_lock == NULL ? NULL : PyObject_CallNoArgs(make_lock);
    Py_XDECREF(make_lock);
    if (probe == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_KeyError, "_Lock must be bound");
        }
        Py_DECREF(span_key);
        Py_DECREF(status);
        return NULL;
    }
    PyTypeObject *lock_type = Py_TYPE(probe);
    Py_INCREF(lock_type);
    Py_DECREF(probe);
    Py_XSETREF(g_lock_type, lock_type);
    Py_XSETREF(b_span_key, span_key);
    Py_XSETREF(b_status, status);
    Py_INCREF(globals);
    Py_XSETREF(g_globals, globals);
    Py_INCREF(current_job);
    Py_XSETREF(g_current_job, current_job);
    Py_INCREF(event_type);
    Py_XSETREF(g_event_type, tp);
    Py_RETURN_NONE;
}

static PyMethodDef speedups_methods[] = {
    {"bind_tracker", speedups_bind_tracker, METH_VARARGS,
     PyDoc_STR("bind_tracker($module, globals, job_class, /)\n--\n\n"
               "Give Tracker.track's compiled twin the tracker module's globals and "
               "the class of the jobs it makes.")},
    {"usable", speedups_usable, METH_NOARGS,
     PyDoc_STR("usable($module, /)\n--\n\n"
               "Whether this interpreter may use the module (only the main one may).")},
    {"bind", speedups_bind, METH_VARARGS,
     PyDoc_STR("bind($module, globals, current_job, event_type, /)\n--\n\n"
               "Give the compiled hot path the lifecycle module's globals, the ambient-job "
               "ContextVar and the JobEvent class.")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "seenn._core._speedups",
    .m_doc = PyDoc_STR("The optional compiled twin of seenn's tracking hot path."),
    .m_size = -1,
    .m_methods = speedups_methods,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    for (int i = 0; i < N_EVENT_FIELDS; i++) {
        event_members[i].name = EVENT_FIELDS[i];
        event_members[i].type = T_OBJECT_EX;
        event_members[i].offset = offsetof(EventSlotsObject, fields) + i * sizeof(PyObject *);
        event_members[i].flags = 0;
        event_members[i].doc = NULL;
    }
    if (PyType_Ready(&EventSlotsType) < 0 || PyType_Ready(&JobSlotsType) < 0
            || PyType_Ready(&TrackerBaseType) < 0) {
        return NULL;
    }
    if (intern(&s_enter_full, "_enter_full") < 0 || intern(&s_exit_full, "_exit_full") < 0
            || intern(&s_set_progress_full, "_set_progress_full") < 0
            || intern(&s_processors, "_processors") < 0 || intern(&s_on_event, "on_event") < 0
            || intern(&s_get, "get") < 0 || intern(&s_get_span_context, "get_span_context") < 0
            || intern(&s_is_valid, "is_valid") < 0 || intern(&s_trace_id, "trace_id") < 0
            || intern(&s_span_id, "span_id") < 0 || intern(&s_id, "id") < 0
            || intern(&s_fmt_trace, "032x") < 0 || intern(&s_fmt_span, "016x") < 0
            || intern(&s_user_id, "user_id") < 0 || intern(&s_tracked_job, "TrackedJob") < 0 || intern(&s_track_full, "_track_full") < 0
            || intern(&g_checked_types, "_checked_types") < 0
            || intern(&g_checked_users, "_checked_users") < 0
            || intern(&s_adopt, "_adopt") < 0 || intern(&s_started, "started") < 0 || intern(&s_progress, "progress") < 0
            || intern(&s_acquire, "acquire") < 0 || intern(&s_release, "release") < 0
            || intern(&g_lock, "_Lock") < 0
            || intern(&s_completed, "completed") < 0 || intern(&s_failed, "failed") < 0
            || intern(&s_building, "building a job event") < 0 || intern(&s_dash, "-") < 0
            || intern(&g_time, "_time") < 0 || intern(&g_new_job_id, "new_job_id") < 0
            || intern(&g_current_context, "current_context") < 0
            || intern(&g_span_key, "SPAN_KEY") < 0 || intern(&g_span, "Span") < 0
            || intern(&g_status, "STATUS") < 0 || intern(&g_internal_error, "internal_error") < 0
            || intern(&g_is_strict, "is_strict") < 0 || intern(&g_restore, "_restore") < 0) {
        return NULL;
    }
    small_minus_one = PyLong_FromLong(-1);
    small_zero = PyLong_FromLong(0);
    small_one = PyLong_FromLong(1);
    small_five = PyLong_FromLong(5);
    small_hundred = PyLong_FromLong(100);
    g_empty_tuple = PyTuple_New(0);
    if (small_minus_one == NULL || small_zero == NULL || small_one == NULL || small_five == NULL
            || small_hundred == NULL || g_empty_tuple == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    PyObject *fields = PyTuple_New(N_EVENT_FIELDS);
    if (fields == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    for (int i = 0; i < N_EVENT_FIELDS; i++) {
        PyObject *name = PyUnicode_InternFromString(EVENT_FIELDS[i]);
        if (name == NULL) {
            Py_DECREF(fields);
            Py_DECREF(module);
            return NULL;
        }
        PyTuple_SET_ITEM(fields, i, name);
    }
    if (PyModule_AddIntConstant(module, "API_VERSION", 2) < 0) {
        Py_DECREF(fields);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddObject(module, "EVENT_FIELDS", fields) < 0) {
        Py_DECREF(fields);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&EventSlotsType);
    if (PyModule_AddObject(module, "EventSlots", (PyObject *)&EventSlotsType) < 0) {
        Py_DECREF(&EventSlotsType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&JobSlotsType);
    if (PyModule_AddObject(module, "JobSlots", (PyObject *)&JobSlotsType) < 0) {
        Py_DECREF(&JobSlotsType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&TrackerBaseType);
    if (PyModule_AddObject(module, "TrackerBase", (PyObject *)&TrackerBaseType) < 0) {
        Py_DECREF(&TrackerBaseType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
