/* The module: bind(), bind_tracker(), usable(), and PyInit__speedups. */
#include "speedups.h"

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
    prepare_event_members();
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
    if (PyModule_AddIntConstant(module, "API_VERSION", API_VERSION) < 0) {
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

