/* TrackerBase.track: the common call of Tracker.track, or the twin.
 *
 * The tracker module's caches of checked job types and user ids, and its
 * TrackedJob, are looked up at each call, as Python does. */
#include "speedups.h"

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
    made->tracker = Py_NewRef(self);
    made->job_type = Py_NewRef(job_type);
    made->user_id = Py_NewRef(user_id);
    made->progress = Py_NewRef(small_zero);
    made->lock = Py_NewRef(Py_None);
    made->state = Py_NewRef(small_zero);
    return job;

full:
    return delegate(self, s_track_full, args, nargs, kwnames);
}

PyMethodDef tracker_methods[] = {
    {"track", (PyCFunction)(void (*)(void))tracker_track, METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("track($self, job_type, /, *, user_id=None, **options)\n--\n\n"
               "Make a job to run as a with (or async with) block.\n\n"
               "Options: title, metadata, queue, stage, stages, job_id, retryable.\n"
               "Raises ValidationError for a bad argument. (The compiled twin of the\n"
               "documented Tracker.track.)")},
    {NULL, NULL, 0, NULL},
};

PyTypeObject TrackerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "seenn._core._speedups.TrackerBase",
    .tp_doc = PyDoc_STR("The compiled fast path of Tracker.track."),
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_methods = tracker_methods,
};

PyObject *
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
