/* JobSlots' __enter__, __exit__ and set_progress: the common case, or the twin. */
#include "speedups.h"

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

PyMethodDef job_methods[] = {
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
