/* The storage types: EventSlots (a JobEvent's fields) and JobSlots (a job's). */
#include "speedups.h"

const char *const EVENT_FIELDS[N_EVENT_FIELDS] = {
    "kind", "job_id", "job_type", "user_id", "title", "status", "progress", "message",
    "stage", "queue", "metadata", "result", "error", "retryable", "parent_id",
    "child_index", "sequence", "timestamp", "trace_id", "span_id",
};

static PyMemberDef event_members[N_EVENT_FIELDS + 1];

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
PyObject *
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

PyTypeObject EventSlotsType = FIELDS_TYPE(
    "EventSlots", "The storage of an event: one slot per JobEvent field.",
    EventSlotsObject, fields_new, event, NULL);

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

FIELD_HOOKS(job, JOB_FIELD_COUNT)

PyObject *
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

PyTypeObject JobSlotsType = FIELDS_TYPE(
    "JobSlots", "The hot fields of a tracked job, and its compiled hot path.",
    JobSlotsObject, job_new, job, job_methods);

/* Fill in event_members (the offsets of the fields): once, before PyType_Ready. */
void
prepare_event_members(void)
{
    for (int i = 0; i < N_EVENT_FIELDS; i++) {
        event_members[i].name = EVENT_FIELDS[i];
        event_members[i].type = T_OBJECT_EX;
        event_members[i].offset = offsetof(EventSlotsObject, fields) + i * sizeof(PyObject *);
        event_members[i].flags = 0;
        event_members[i].doc = NULL;
    }
}
