/* JobSlots._emit: build the JobEvent of a job's state, hand it to the processors. */
#include "speedups.h"

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

PyObject *
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
