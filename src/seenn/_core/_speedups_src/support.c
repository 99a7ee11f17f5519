/* What the compiled methods share: bound state, names, errors, calls to twins. */
#include "speedups.h"

/* What bind() and bind_tracker() gave, and names made once (see speedups.h). */
PyObject *g_globals, *g_current_job, *b_span_key, *b_status;
PyTypeObject *g_event_type, *g_lock_type;
PyObject *g_tracker_globals;
PyTypeObject *g_job_class;
PyObject *s_enter_full, *s_exit_full, *s_set_progress_full, *s_processors, *s_on_event, *s_get, *s_get_span_context, *s_is_valid, *s_trace_id, *s_span_id, *s_id, *s_fmt_trace, *s_fmt_span, *s_adopt, *s_started, *s_progress, *s_completed, *s_failed, *s_acquire, *s_release, *s_building, *s_dash, *s_user_id, *s_track_full, *s_tracked_job;
PyObject *g_time, *g_new_job_id, *g_current_context, *g_span_key, *g_span, *g_status, *g_internal_error, *g_is_strict, *g_restore, *g_lock, *g_checked_types, *g_checked_users;
PyObject *small_minus_one, *small_zero, *small_one, *small_five, *small_hundred, *g_empty_tuple;

/* The value of an exact int in [-1000, 1000], or LONG_MIN for anything else. */
long
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

int
check_bound(void)
{
    if (g_globals == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "seenn._core._speedups is not bound");
        return -1;
    }
    return 0;
}

/* A global of the lifecycle module, as LOAD_GLOBAL finds it (builtins not needed). */
PyObject *
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
PyObject *
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
void
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
PyObject *
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
int
store(PyObject **slot, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    Py_XSETREF(*slot, value);
    return 0;
}

/* The AttributeError Python raises for a field read after it was deleted. */
int
missing(JobSlotsObject *self, const char *name)
{
    PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                 Py_TYPE(self)->tp_name, name);
    return -1;
}

/* ``self.<name>`` for a field whose Python twin is a class default of None
 * (deleting the job's own value brings the default back): a new reference. */
PyObject *
job_attr(PyObject *field)
{
    field = field == NULL ? Py_None : field;
    Py_INCREF(field);
    return field;
}

int
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
PyObject *
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
