/*
 * seenn._core._speedups: the optional compiled twin of the tracking hot path.
 *
 * Pure Python stays the reference. This extension holds only what a job does
 * on every change, written so that each function either does exactly what
 * its Python twin would do, or hands the whole call to that twin before
 * changing anything (see docs/architecture.md, "The compiled hot path"):
 *
 *   fields.c   EventSlots, the twenty fields of a JobEvent (the twin is
 *              seenn._core.events._EventSlots), and JobSlots, the hot fields
 *              of a tracked job (the twin is lifecycle._JobSlots);
 *   job.c      JobSlots' __enter__, __exit__ and set_progress (the twins are
 *              JobCore's and TrackedJob's methods);
 *   emit.c     JobSlots._emit: build a JobEvent, hand it to the processors;
 *   tracker.c  TrackerBase.track, the common call of Tracker.track;
 *   support.c  what they share: bound state, names, errors, calls to twins;
 *   module.c   the module: bind(), bind_tracker(), usable(), PyInit.
 *
 * The Python side calls bind() once at import with what these functions read:
 * the lifecycle module's globals (looked up at each call, as Python does, so a
 * patched global is seen; SPAN_KEY, STATUS and the type of _Lock() are taken
 * once), the ambient-job ContextVar and the JobEvent class; bind_tracker()
 * likewise for the tracker module. Two things the twins go through are used
 * directly instead: the ContextVar's own get, set and reset (lifecycle's
 * _get, _set and _reset are those bound methods), and _emit (the compiled
 * methods call the compiled _emit; a subclass of TrackedJob that overrides
 * _emit is not supported). Setting SEENN_NO_EXTENSIONS=1 makes seenn ignore
 * this module, and so does a sub-interpreter (bound state is per process).
 *
 * Everything but PyInit__speedups is hidden (built with -fvisibility=hidden).
 */
#ifndef SEENN_SPEEDUPS_H
#define SEENN_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>

/* Change with any change of what Python and C expect of each other
 * (seenn._core.accel.API_VERSION must match). */
#define API_VERSION 2

/* -- the storage types (fields.c) ------------------------------------------ */

#define N_EVENT_FIELDS 20

extern const char *const EVENT_FIELDS[N_EVENT_FIELDS];

enum {
    EV_KIND, EV_JOB_ID, EV_JOB_TYPE, EV_USER_ID, EV_TITLE, EV_STATUS, EV_PROGRESS, EV_MESSAGE,
    EV_STAGE, EV_QUEUE, EV_METADATA, EV_RESULT, EV_ERROR, EV_RETRYABLE, EV_PARENT_ID,
    EV_CHILD_INDEX, EV_SEQUENCE, EV_TIMESTAMP, EV_TRACE_ID, EV_SPAN_ID,
};

typedef struct {
    PyObject_HEAD
    PyObject *fields[N_EVENT_FIELDS];
} EventSlotsObject;

/* Both types are a header and then object fields only: one traverse, clear
 * and dealloc each, given how many fields there are. */
#define FIELDS(self) ((PyObject **)((char *)(self) + sizeof(PyObject)))

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

#define JOB_FIELD_COUNT 26  /* the fields, in this order, are all the struct holds */
#define JOB_FIRST_DEFAULT 15  /* the fields from _id on start as None */

_Static_assert(sizeof(JobSlotsObject) == sizeof(PyObject) + JOB_FIELD_COUNT * sizeof(PyObject *),
               "JobSlotsObject must hold object fields only");
_Static_assert(offsetof(JobSlotsObject, id) == sizeof(PyObject)
                                              + JOB_FIRST_DEFAULT * sizeof(PyObject *),
               "the fields that start as None must come last");
_Static_assert(sizeof(EventSlotsObject) == sizeof(PyObject) + N_EVENT_FIELDS * sizeof(PyObject *),
               "EventSlotsObject must hold object fields only");


/* Read-only state numbers (see seenn._instrumentation.states). */
enum { S_RUNNING = 1, S_QUEUED = 2, S_HANDED = 3, S_COMPLETED = 5 };

extern PyTypeObject EventSlotsType, JobSlotsType, TrackerBaseType;
extern PyMethodDef job_methods[], tracker_methods[];

PyObject *fields_new(PyTypeObject *type, PyObject *args, PyObject *kwargs);
PyObject *job_new(PyTypeObject *type, PyObject *args, PyObject *kwargs);
void prepare_event_members(void);

/* -- shared state and helpers (support.c) ---------------------------------- */

/* What bind() gave: the lifecycle module's globals, the ambient-job
 * ContextVar, the JobEvent class, and what bind() takes once. */
extern PyObject *g_globals, *g_current_job, *b_span_key, *b_status;
extern PyTypeObject *g_event_type, *g_lock_type;
/* What bind_tracker() gave: the tracker module's globals, the job class. */
extern PyObject *g_tracker_globals;
extern PyTypeObject *g_job_class;

/* Interned names (module.c makes them): s_ an attribute or a value, g_ a
 * global of the lifecycle or tracker module. */
extern PyObject *s_enter_full, *s_exit_full, *s_set_progress_full, *s_processors, *s_on_event, *s_get, *s_get_span_context, *s_is_valid, *s_trace_id, *s_span_id, *s_id, *s_fmt_trace, *s_fmt_span, *s_adopt, *s_started, *s_progress, *s_completed, *s_failed, *s_acquire, *s_release, *s_building, *s_dash, *s_user_id, *s_track_full, *s_tracked_job;
extern PyObject *g_time, *g_new_job_id, *g_current_context, *g_span_key, *g_span, *g_status, *g_internal_error, *g_is_strict, *g_restore, *g_lock, *g_checked_types, *g_checked_users;
extern PyObject *small_minus_one, *small_zero, *small_one, *small_five, *small_hundred,
    *g_empty_tuple;

long small_value(PyObject *obj);
int check_bound(void);
PyObject *module_global(PyObject *name);
PyObject *call_global(PyObject *name, PyObject *const *args, size_t nargs);
void chain_context(PyObject *type, PyObject *value, PyObject *tb);
PyObject *delegate(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames);
int store(PyObject **slot, PyObject *value);
int missing(JobSlotsObject *self, const char *name);
PyObject *job_attr(PyObject *field);
int str_equals(PyObject *obj, PyObject *interned);
PyObject *report_internal(PyObject *what, PyObject *job_id);

/* -- the event (emit.c) and the tracker (tracker.c) ------------------------- */

PyObject *job_emit(JobSlotsObject *self, PyObject *kind);
PyObject *speedups_bind_tracker(PyObject *module, PyObject *args);

#endif
