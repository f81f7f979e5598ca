/* forkwait._speedups: the hot path of fork(coroutine function) + await, in C.
 *
 * Only the common case lives here: a plain coroutine function forked from a task on a
 * running asyncio (or uvloop) loop, with no scope, trace or sequential mode watching,
 * and an await on that future from the same loop. Everything else calls back into the
 * pure-Python code, which stays the reference: forkwait runs the same without this
 * module (FORKWAIT_PURE_PYTHON=1 or no C compiler at install).
 *
 *   FutureCore  the base of forkwait.Future: its fields and its __await__.
 *   Awaiter     what __await__ returns on the fast paths.
 *   Driver      a task's coroutine that runs the call and settles its future (the
 *               Python ``drive``, without a frame of its own).
 *   Fork        the callable behind forkwait.fork.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* States, as in _state.py. */
enum { QUEUED = 0, RUNNING = 1, DONE = 2, FAILED = 3, CANCELLED = 4 };

/* Set once by setup(), from the Python side. */
static PyObject *state_objects[5];
static PyObject *observer_var;     /* _hooks.current_observer */
static PyTypeObject *task_type;    /* asyncio.Task */
static PyTypeObject *future_type;  /* forkwait.Future */
static PyObject *python_fork;      /* _fork.fork, for every other case */
static PyObject *python_await;     /* Future.__await__ in Python, for every other case */
static PyObject *settle_failed;    /* (fut, awaitable, exc): the call raised exc */
static PyObject *settle_closed;    /* (fut, awaitable): the task was closed unfinished */
static PyObject *fork_returned;    /* (fut, returned, loop): a "coroutine function" that
                                      returned something other than a coroutine */
static PyObject *await_any;        /* async def: return await awaitable */
static int ready;

static PyObject *str_drain, *str_create_task, *str_get_loop, *str_wait_after_the_turn,
    *str_outcome, *str_set_exception, *str_throw, *str_close;

/* -- the running loop --------------------------------------------------------------- */

static PyObject *get_running_loop; /* asyncio.events._get_running_loop, set at import */

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(MS_WINDOWS)
/* Python 3.11's _asyncio keeps the running loop in the thread's state dict, in an
   object of this layout. Its _get_running_loop() compares rl_pid with getpid(), a
   system call, on every call made inside a loop (0.15 us here, an eighth of a fork's
   creation in a fan-out): reading the holder and comparing with the pid kept below is
   the same check.
   3.12 dropped the holder and its check: there the call is made. */
#define READ_LOOP_HOLDER 1
#include <pthread.h>
#include <unistd.h>
typedef struct {
    PyObject_HEAD
    PyObject *rl_loop;
    pid_t rl_pid;
} LoopHolder;
static PyObject *str_loop_holder_key; /* NULL: get_running_loop is not _asyncio's */
static PyTypeObject *loop_holder_type; /* known by its name and size on first sight */
static pid_t this_pid;                 /* set again in a child by pthread_atfork */

static int
is_loop_holder(PyObject *holder)
{
    PyTypeObject *type = Py_TYPE(holder);
    if (type == loop_holder_type) {
        return 1;
    }
    if (loop_holder_type == NULL && type->tp_basicsize == sizeof(LoopHolder) &&
        strcmp(type->tp_name, "_RunningLoopHolder") == 0) {
        loop_holder_type = type; /* a static type of _asyncio: never freed */
        return 1;
    }
    return 0;
}
#endif

static PyObject *
running_loop(void)
{
    /* asyncio.events._get_running_loop(): the loop running in this thread, or None. */
#ifdef READ_LOOP_HOLDER
    if (str_loop_holder_key != NULL) {
        PyObject *dict = PyThreadState_GetDict(); /* borrowed */
        if (dict != NULL) {
            PyObject *holder = PyDict_GetItemWithError(dict, str_loop_holder_key);
            if (holder == NULL) {
                if (PyErr_Occurred()) {
                    return NULL;
                }
                Py_RETURN_NONE; /* no loop ever ran in this thread */
            }
            if (is_loop_holder(holder)) {
                LoopHolder *running = (LoopHolder *)holder;
                if (running->rl_loop == Py_None) {
                    Py_RETURN_NONE;
                }
                if (running->rl_pid == this_pid) {
                    Py_INCREF(running->rl_loop);
                    return running->rl_loop;
                }
                /* Set in the parent before an os.fork(): the call says None. */
            }
        }
    }
#endif
    return PyObject_CallNoArgs(get_running_loop);
}

static PyObject *
running_loop_function(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return running_loop();
}

#ifdef READ_LOOP_HOLDER
static void
note_the_child_pid(void)
{
    /* Run by fork() itself in the child, before any Python code there (an at-fork hook
       of Python's, or a fork() made by C code that runs none). */
    this_pid = getpid();
}
#endif

static int
init_running_loop(void)
{
    PyObject *events = PyImport_ImportModule("asyncio.events");
    if (events == NULL) {
        return -1;
    }
    PyObject *running = PyObject_GetAttrString(events, "_get_running_loop");
    Py_DECREF(events);
    if (running == NULL) {
        return -1;
    }
    Py_XSETREF(get_running_loop, running);
#ifdef READ_LOOP_HOLDER
    Py_CLEAR(str_loop_holder_key); /* the fast path is off until all below succeeds */
    /* Only _asyncio's function reads the holder; the pure-Python one a thread local. */
    PyObject *c_asyncio = PyImport_ImportModule("_asyncio");
    if (c_asyncio == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *c_running = PyObject_GetAttrString(c_asyncio, "_get_running_loop");
    Py_DECREF(c_asyncio);
    if (c_running == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(c_running); /* compared by identity only: get_running_loop holds one */
    if (c_running != get_running_loop) {
        return 0;
    }
    static int registered;
    if (!registered) {
        if (pthread_atfork(NULL, NULL, note_the_child_pid) != 0) {
            return 0; /* without it a child could see its parent's loop: no fast path */
        }
        registered = 1;
    }
    this_pid = getpid();
    str_loop_holder_key = PyUnicode_InternFromString("__asyncio_running_event_loop__");
    if (str_loop_holder_key == NULL) {
        return -1;
    }
#endif
    return 0;
}

/* -- helpers ------------------------------------------------------------------------- */

static PyObject *
stop_iteration(PyObject *value)
{
    /* Raise StopIteration(value) the way a generator's return does. */
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
    }
    else {
        _PyGen_SetStopIterationValue(value);
    }
    return NULL;
}

static PyObject *
send_result_to_call(PySendResult status, PyObject *result)
{
    /* An am_send outcome, as a send() method returns it. */
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        stop_iteration(result);
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
send_method(PyObject *self, PyObject *arg)
{
    /* send(value) of Awaiter and Driver: their am_send, as a method. */
    PyObject *result;
    PySendResult status = Py_TYPE(self)->tp_as_async->am_send(self, arg, &result);
    return send_result_to_call(status, result);
}

static PyObject *
next_by_send(PyObject *self)
{
    /* __next__ of Awaiter and Driver: send(None). */
    return send_method(self, Py_None);
}

static int
check_throw_arguments(Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw() takes 1 to 3 arguments");
        return -1;
    }
    return 0;
}

static PySendResult
call_result_to_send(PyObject *value, PyObject **result)
{
    /* A send()/throw() method's outcome, as am_send returns it. */
    if (value != NULL) {
        *result = value;
        return PYGEN_NEXT;
    }
    if (_PyGen_FetchStopIterationValue(result) == 0) {
        return PYGEN_RETURN;
    }
    *result = NULL;
    return PYGEN_ERROR;
}

static int
check_thrown(PyObject *type, PyObject *value, PyObject *tb)
{
    /* Whether throw(type[, value[, tb]]) was given an exception, as a generator asks
       before it does anything. */
    if (tb != NULL && tb != Py_None && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return -1;
    }
    if (PyExceptionInstance_Check(type)) {
        if (value != NULL && value != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate value");
            return -1;
        }
        return 0;
    }
    if (!PyExceptionClass_Check(type)) {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from "
                     "BaseException, not %s",
                     Py_TYPE(type)->tp_name);
        return -1;
    }
    return 0;
}

static int
raise_thrown(PyObject *type, PyObject *value, PyObject *tb)
{
    /* Raise what throw(type[, value[, tb]]) was given, once check_thrown passed it. */
    if (tb == Py_None) {
        tb = NULL;
    }
    if (value == Py_None) {
        value = NULL;
    }
    if (PyExceptionInstance_Check(type)) {
        value = type;
        type = (PyObject *)Py_TYPE(type);
    }
    Py_INCREF(type);
    Py_XINCREF(value);
    Py_XINCREF(tb);
    PyErr_Restore(type, value, tb);
    return -1;
}

static PyObject *
current_observer(void)
{
    PyObject *observer;
    if (PyContextVar_Get(observer_var, NULL, &observer) < 0) {
        return NULL;
    }
    return observer; /* new reference; None when nothing watches */
}

static PyObject *
fetch_exception(void)
{
    /* The exception being raised, normalised and with its traceback, or NULL. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* -- FutureCore ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *state;
    PyObject *func;
    PyObject *handle;
    PyObject *value;
    PyObject *waiters;
    /* Only for failures, but here too: a subclass with slots of its own would pay
       for them at every garbage collection (typeobject.c's subtype_traverse). */
    PyObject *traceback;
    PyObject *unretrieved;
    PyObject *weakrefs;
} FutureCore;

static PyTypeObject FutureCore_Type;
static PyTypeObject Awaiter_Type;

static int
state_of(FutureCore *fut)
{
    PyObject *state = fut->state;
    for (int i = 0; i < 5; i++) {
        if (state == state_objects[i]) {
            return i;
        }
    }
    if (state == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_state");
        return -1;
    }
    long found = PyLong_AsLong(state);
    return found == -1 && PyErr_Occurred() ? -1 : (int)found;
}

static void
set_field(PyObject **field, PyObject *value)
{
    /* Steals value. */
    PyObject *old = *field;
    *field = value;
    Py_XDECREF(old);
}

static int
settle_done(FutureCore *fut, PyObject *value)
{
    /* fut._set_result(value) for a task's future; steals value. */
    Py_INCREF(Py_None);
    set_field(&fut->handle, Py_None);
    set_field(&fut->value, value);
    Py_INCREF(state_objects[DONE]);
    set_field(&fut->state, state_objects[DONE]);
    if (fut->waiters != NULL && fut->waiters != Py_None) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)fut, str_drain);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
}

static int
FutureCore_traverse(FutureCore *self, visitproc visit, void *arg)
{
    /* Not the state: always one of the small ints, which the collector never tracks. */
    Py_VISIT(self->func);
    Py_VISIT(self->handle);
    Py_VISIT(self->value);
    Py_VISIT(self->waiters);
    Py_VISIT(self->traceback);
    Py_VISIT(self->unretrieved);
    return 0;
}

static int
FutureCore_clear(FutureCore *self)
{
    Py_CLEAR(self->state);
    Py_CLEAR(self->func);
    Py_CLEAR(self->handle);
    Py_CLEAR(self->value);
    Py_CLEAR(self->waiters);
    Py_CLEAR(self->traceback);
    Py_CLEAR(self->unretrieved);
    return 0;
}

/* forkwait.Future is a Python class with no slots of its own: these replace the generic
   subtype_traverse and subtype_dealloc on it (set by setup()), which walk its MRO for
   slots every time; a fan-out's futures are traversed at every collection. */
static int
Future_traverse(FutureCore *self, visitproc visit, void *arg)
{
    /* The instance's reference to its heap type: a subclass's subtype_traverse leaves
       it to this one, as its base's traverse is not subtype_traverse. */
    Py_VISIT(Py_TYPE(self));
    return FutureCore_traverse(self, visit, arg);
}

static void
Future_dealloc(FutureCore *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, Future_dealloc)
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    FutureCore_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
    Py_TRASHCAN_END
}

static void
FutureCore_dealloc(FutureCore *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    FutureCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

typedef struct {
    PyObject_HEAD
    FutureCore *fut;  /* NULL once finished */
    PyObject *loop;   /* NULL: the future was done; else its task's loop, turn to wait */
    PyObject *inner;  /* the Python wait it handed over to, if any */
    int started;
    int yielded;
} Awaiter;

/* Awaiters live for one await: kept for reuse, as asyncio keeps its future iterators. */
#define AWAITER_FREELIST_MAX 16
static Awaiter *awaiter_freelist[AWAITER_FREELIST_MAX];
static int awaiter_freelist_len;

static PyObject *
new_awaiter(FutureCore *fut, PyObject *loop)
{
    /* Steals loop. */
    Awaiter *self;
    if (awaiter_freelist_len > 0) {
        self = awaiter_freelist[--awaiter_freelist_len];
        _Py_NewReference((PyObject *)self);
    }
    else {
        self = PyObject_GC_New(Awaiter, &Awaiter_Type);
        if (self == NULL) {
            Py_XDECREF(loop);
            return NULL;
        }
    }
    Py_INCREF(fut);
    self->fut = fut;
    self->loop = loop;
    self->inner = NULL;
    self->started = 0;
    self->yielded = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
not_ready(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "forkwait._speedups is used before forkwait wired it (import forkwait)");
    return -1;
}

static PyObject *
FutureCore_await(FutureCore *self)
{
    if (!ready) {
        not_ready();
        return NULL;
    }
    int state = state_of(self);
    if (state < 0) {
        return NULL;
    }
    /* A field not filled in (yet) goes to the Python code, which says what is missing. */
    if (state == DONE && self->value != NULL) {
        PyObject *observer = current_observer();
        if (observer == NULL) {
            return NULL;
        }
        Py_DECREF(observer);
        if (observer == Py_None) {
            return new_awaiter(self, NULL);
        }
    }
    else if (state < DONE && self->handle != NULL && Py_IS_TYPE(self->handle, task_type)) {
        /* Its task is on this loop's ready queue: let it run first (a bare yield), as
           it often finishes in that one step; see Future.__await__. */
        PyObject *loop = running_loop();
        if (loop == NULL) {
            return NULL;
        }
        if (loop != Py_None) {
            PyObject *task_loop = PyObject_CallMethodNoArgs(self->handle, str_get_loop);
            if (task_loop == NULL) {
                Py_DECREF(loop);
                return NULL;
            }
            Py_DECREF(task_loop);
            if (task_loop == loop) {
                PyObject *observer = current_observer();
                if (observer == NULL) {
                    Py_DECREF(loop);
                    return NULL;
                }
                Py_DECREF(observer);
                if (observer == Py_None) {
                    return new_awaiter(self, loop);
                }
            }
        }
        Py_DECREF(loop);
    }
    return PyObject_CallOneArg(python_await, (PyObject *)self);
}

static PyMemberDef FutureCore_members[] = {
    {"_state", T_OBJECT_EX, offsetof(FutureCore, state), 0, NULL},
    {"_func", T_OBJECT_EX, offsetof(FutureCore, func), 0, NULL},
    {"_handle", T_OBJECT_EX, offsetof(FutureCore, handle), 0, NULL},
    {"_value", T_OBJECT_EX, offsetof(FutureCore, value), 0, NULL},
    {"_waiters", T_OBJECT_EX, offsetof(FutureCore, waiters), 0, NULL},
    {"_traceback", T_OBJECT_EX, offsetof(FutureCore, traceback), 0, NULL},
    {"_unretrieved", T_OBJECT_EX, offsetof(FutureCore, unretrieved), 0, NULL},
    {NULL},
};

static PyAsyncMethods FutureCore_async = {
    .am_await = (unaryfunc)FutureCore_await,
};

static PyTypeObject FutureCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "forkwait._speedups.FutureCore",
    .tp_doc = PyDoc_STR("The fields and the await of forkwait.Future, in C."),
    .tp_basicsize = sizeof(FutureCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)FutureCore_dealloc,
    .tp_traverse = (traverseproc)FutureCore_traverse,
    .tp_clear = (inquiry)FutureCore_clear,
    .tp_members = FutureCore_members,
    .tp_as_async = &FutureCore_async,
    .tp_weaklistoffset = offsetof(FutureCore, weakrefs),
};

/* -- Awaiter ------------------------------------------------------------------------- */

static void
Awaiter_finish(Awaiter *self)
{
    Py_CLEAR(self->fut);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->inner);
}

static PySendResult
Awaiter_send(Awaiter *self, PyObject *arg, PyObject **result)
{
    if (self->inner != NULL) {
        PyObject *inner = self->inner;
        Py_INCREF(inner);
        PySendResult status = PyIter_Send(inner, arg, result);
        Py_DECREF(inner);
        if (status != PYGEN_NEXT) {
            Awaiter_finish(self);
        }
        return status;
    }
    if (!self->started) {
        if (arg != Py_None && self->fut != NULL) {
            PyErr_SetString(PyExc_TypeError,
                            "can't send non-None value to a just-started generator");
            *result = NULL;
            return PYGEN_ERROR;
        }
        self->started = 1;
    }
    FutureCore *fut = self->fut;
    if (fut == NULL) { /* exhausted, as a generator that returned */
        Py_INCREF(Py_None);
        *result = Py_None;
        return PYGEN_RETURN;
    }
    if (self->loop != NULL && !self->yielded) {
        self->yielded = 1;
        Py_INCREF(Py_None);
        *result = Py_None;
        return PYGEN_NEXT;
    }
    int state = state_of(fut);
    if (state == DONE && fut->value != NULL) {
        *result = fut->value;
        Py_INCREF(*result);
        Awaiter_finish(self);
        return PYGEN_RETURN;
    }
    if (state < 0) {
        *result = NULL;
        Awaiter_finish(self);
        return PYGEN_ERROR;
    }
    if (state < DONE) {
        /* Not finished in its first step: the Python wait through a waiter future. */
        PyObject *inner = PyObject_CallMethodOneArg(
            (PyObject *)fut, str_wait_after_the_turn, self->loop);
        if (inner == NULL) {
            *result = NULL;
            Awaiter_finish(self);
            return PYGEN_ERROR;
        }
        self->inner = inner;
        return Awaiter_send(self, Py_None, result);
    }
    /* Failed or cancelled: _outcome() raises it. */
    PyObject *value = PyObject_CallMethodNoArgs((PyObject *)fut, str_outcome);
    Awaiter_finish(self);
    *result = value;
    return value == NULL ? PYGEN_ERROR : PYGEN_RETURN;
}

static PyObject *
Awaiter_throw(Awaiter *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_throw_arguments(nargs) < 0) {
        return NULL;
    }
    if (self->inner != NULL) {
        PyObject *inner = self->inner;
        Py_INCREF(inner);
        PyObject *throw = PyObject_GetAttr(inner, str_throw);
        PyObject *result = NULL;
        if (throw != NULL) {
            result = PyObject_Vectorcall(throw, args, nargs, NULL);
            Py_DECREF(throw);
        }
        Py_DECREF(inner);
        if (result == NULL) {
            Awaiter_finish(self);
        }
        return result;
    }
    PyObject *value = nargs > 1 ? args[1] : NULL, *tb = nargs > 2 ? args[2] : NULL;
    if (check_thrown(args[0], value, tb) < 0) {
        return NULL; /* a bad call: the await goes on, as a generator's would */
    }
    Awaiter_finish(self);
    raise_thrown(args[0], value, tb);
    return NULL;
}

static PyObject *
Awaiter_close(Awaiter *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *inner = self->inner;
    self->inner = NULL;
    Awaiter_finish(self);
    if (inner != NULL) {
        PyObject *result = PyObject_CallMethodNoArgs(inner, str_close);
        Py_DECREF(inner);
        if (result == NULL) {
            return NULL;
        }
        Py_DECREF(result);
    }
    Py_RETURN_NONE;
}

static int
Awaiter_traverse(Awaiter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fut);
    Py_VISIT(self->loop);
    Py_VISIT(self->inner);
    return 0;
}

static int
Awaiter_clear(Awaiter *self)
{
    Awaiter_finish(self);
    return 0;
}

static void
Awaiter_dealloc(Awaiter *self)
{
    PyObject_GC_UnTrack(self);
    Awaiter_finish(self);
    if (awaiter_freelist_len < AWAITER_FREELIST_MAX) {
        awaiter_freelist[awaiter_freelist_len++] = self;
    }
    else {
        PyObject_GC_Del(self);
    }
}

static PyMethodDef Awaiter_methods[] = {
    {"send", send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))Awaiter_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)Awaiter_close, METH_NOARGS, NULL},
    {NULL},
};

static PyAsyncMethods Awaiter_async = {
    .am_send = (sendfunc)Awaiter_send,
};

static PyTypeObject Awaiter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "forkwait._speedups.Awaiter",
    .tp_doc = PyDoc_STR("An await of a forkwait.Future on its fast paths."),
    .tp_basicsize = sizeof(Awaiter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)Awaiter_dealloc,
    .tp_traverse = (traverseproc)Awaiter_traverse,
    .tp_clear = (inquiry)Awaiter_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = next_by_send,
    .tp_methods = Awaiter_methods,
    .tp_as_async = &Awaiter_async,
};

/* -- Driver -------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    FutureCore *fut;      /* NULL once finished */
    PyObject *coro;       /* the coroutine stepped: what the call returned, or
                             await_any(awaitable) */
    PyObject *awaitable;  /* what the call returned, if not coro itself (NULL then: one
                             reference fewer for the collector to visit) */
    int running;          /* inside a step: the call may not step, throw into or close
                             its own task's coroutine */
} Driver;

static PyTypeObject Driver_Type;

static PyObject *
new_driver(FutureCore *fut, PyObject *awaitable)
{
    PyObject *coro;
    int wrapped = !PyCoro_CheckExact(awaitable);
    if (!wrapped) {
        coro = awaitable;
        Py_INCREF(coro);
    }
    else {
        /* A coroutine that awaits it: the awaitable's __await__ runs in the task,
           at its first step, as an await of it would. */
        if (!ready) {
            not_ready();
            return NULL;
        }
        coro = PyObject_CallOneArg(await_any, awaitable);
        if (coro == NULL) {
            return NULL;
        }
    }
    Driver *self = PyObject_GC_New(Driver, &Driver_Type);
    if (self == NULL) {
        Py_DECREF(coro);
        return NULL;
    }
    Py_INCREF(fut);
    self->fut = fut;
    self->coro = coro;
    if (wrapped) {
        Py_INCREF(awaitable);
        self->awaitable = awaitable;
    }
    else {
        self->awaitable = NULL;
    }
    self->running = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
Driver_refuse_if_running(Driver *self)
{
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return -1;
    }
    return 0;
}

static void
Driver_finish(Driver *self)
{
    Py_CLEAR(self->fut);
    Py_CLEAR(self->awaitable);
    Py_CLEAR(self->coro);
}

static PyObject *
Driver_take_awaitable(Driver *self)
{
    /* What the call returned (a new reference); the driver lets go of it and of coro. */
    PyObject *awaitable = self->awaitable;
    PyObject *coro = self->coro;
    self->awaitable = NULL;
    self->coro = NULL;
    if (awaitable == NULL) {
        return coro;
    }
    Py_XDECREF(coro);
    return awaitable;
}

static PySendResult
Driver_settle(Driver *self, PySendResult status, PyObject **result)
{
    /* The call's coroutine returned or raised: settle the future; the task returns None. */
    FutureCore *fut = self->fut;
    self->fut = NULL;
    PyObject *awaitable = Driver_take_awaitable(self);
    int failed;
    if (status == PYGEN_RETURN) {
        failed = settle_done(fut, *result);
    }
    else if (PyErr_ExceptionMatches(PyExc_GeneratorExit)) {
        /* Closed (thrown in, or raised by the call): as drive does, the future is
           cancelled and the GeneratorExit goes on. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *r = PyObject_CallFunctionObjArgs(settle_closed, fut, awaitable, NULL);
        if (r == NULL) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        else {
            Py_DECREF(r);
            PyErr_Restore(type, value, tb);
        }
        failed = 1;
    }
    else {
        /* KeyboardInterrupt and SystemExit too: they are the waiter's, not the loop's. */
        PyObject *exc = fetch_exception();
        PyObject *r = exc == NULL ? NULL
                                  : PyObject_CallFunctionObjArgs(settle_failed, fut,
                                                                 awaitable, exc, NULL);
        Py_XDECREF(exc);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    Py_DECREF(fut);
    Py_DECREF(awaitable);
    if (failed) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    Py_INCREF(Py_None);
    *result = Py_None;
    return PYGEN_RETURN;
}

static PySendResult
Driver_send(Driver *self, PyObject *arg, PyObject **result)
{
    if (self->fut == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        *result = NULL;
        return PYGEN_ERROR;
    }
    if (Driver_refuse_if_running(self) < 0) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    PyObject *coro = self->coro;
    Py_INCREF(coro);
    self->running = 1;
    PySendResult status = PyIter_Send(coro, arg, result);
    self->running = 0;
    Py_DECREF(coro);
    if (status == PYGEN_NEXT || self->fut == NULL) {
        return status;
    }
    return Driver_settle(self, status, result);
}

static PyObject *
Driver_throw(Driver *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_throw_arguments(nargs) < 0) {
        return NULL;
    }
    if (self->fut == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return NULL;
    }
    if (Driver_refuse_if_running(self) < 0) {
        return NULL;
    }
    PyObject *coro = self->coro;
    Py_INCREF(coro);
    PyObject *throw = PyObject_GetAttr(coro, str_throw);
    PyObject *value = NULL;
    if (throw != NULL) {
        self->running = 1;
        value = PyObject_Vectorcall(throw, args, nargs, NULL);
        self->running = 0;
        Py_DECREF(throw);
    }
    Py_DECREF(coro);
    PyObject *result;
    PySendResult status = call_result_to_send(value, &result);
    if (status == PYGEN_NEXT || self->fut == NULL) {
        return status == PYGEN_NEXT ? result : send_result_to_call(status, result);
    }
    status = Driver_settle(self, status, &result);
    return send_result_to_call(status, result);
}

static int
Driver_close_unfinished(Driver *self)
{
    /* The task was destroyed unfinished (its loop closed), or closed: it never ends.
       As in drive: the call's coroutine gets the GeneratorExit, and if it raises
       something else instead (it ignored the GeneratorExit, say), the call failed. */
    PyObject *coro = self->coro;
    Py_INCREF(coro);
    self->running = 1;
    PyObject *closed = PyObject_CallMethodNoArgs(coro, str_close);
    self->running = 0;
    Py_DECREF(coro);
    if (self->fut == NULL) { /* settled meanwhile, from inside the close */
        Py_XDECREF(closed);
        return closed == NULL ? -1 : 0;
    }
    FutureCore *fut = self->fut;
    self->fut = NULL;
    PyObject *awaitable = Driver_take_awaitable(self);
    PyObject *r;
    if (closed == NULL) {
        PyObject *exc = fetch_exception();
        r = exc == NULL ? NULL
                        : PyObject_CallFunctionObjArgs(settle_failed, fut, awaitable, exc,
                                                       NULL);
        Py_XDECREF(exc);
    }
    else {
        Py_DECREF(closed);
        r = PyObject_CallFunctionObjArgs(settle_closed, fut, awaitable, NULL);
    }
    Py_DECREF(fut);
    Py_DECREF(awaitable);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *
Driver_close(Driver *self, PyObject *Py_UNUSED(ignored))
{
    if (self->fut == NULL) {
        Py_RETURN_NONE;
    }
    if (Driver_refuse_if_running(self) < 0 || Driver_close_unfinished(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static void
Driver_finalize(Driver *self)
{
    if (self->fut == NULL) {
        return;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (Driver_close_unfinished(self) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    PyErr_Restore(type, value, tb);
}

static PyObject *
Driver_await(Driver *self)
{
    /* Its task steps it; anything else would step the call at the same time. */
    PyErr_SetString(PyExc_RuntimeError,
                    "the coroutine of a forkwait task cannot be awaited: await the future");
    return NULL;
}

static PyObject *
Driver_get_from_coro(Driver *self, void *closure)
{
    /* The call's coroutine's cr_frame, __qualname__ and the like: a task's repr and
       get_stack(), and inspect.getcoroutinestate(), show the call, not forkwait. */
    const char *name = (const char *)closure;
    if (self->coro != NULL) {
        return PyObject_GetAttrString(self->coro, name);
    }
    if (strcmp(name, "cr_running") == 0 || strcmp(name, "cr_suspended") == 0) {
        Py_RETURN_FALSE;
    }
    if (strcmp(name, "__name__") == 0 || strcmp(name, "__qualname__") == 0) {
        return PyUnicode_FromString("Driver");
    }
    Py_RETURN_NONE;
}

static PyObject *
Driver_new(PyTypeObject *Py_UNUSED(type), PyObject *args, PyObject *kwargs)
{
    PyObject *fut, *awaitable;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Driver() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Driver", 2, 2, &fut, &awaitable)) {
        return NULL;
    }
    if (!PyObject_TypeCheck(fut, &FutureCore_Type)) {
        PyErr_SetString(PyExc_TypeError, "Driver(fut, awaitable): fut must be a Future");
        return NULL;
    }
    return new_driver((FutureCore *)fut, awaitable);
}

static int
Driver_traverse(Driver *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fut);
    Py_VISIT(self->awaitable);
    Py_VISIT(self->coro);
    return 0;
}

static int
Driver_clear(Driver *self)
{
    Driver_finish(self);
    return 0;
}

static void
Driver_dealloc(Driver *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return; /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    Driver_finish(self);
    PyObject_GC_Del(self);
}

static PyMethodDef Driver_methods[] = {
    {"send", send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))Driver_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)Driver_close, METH_NOARGS, NULL},
    {NULL},
};

static PyGetSetDef Driver_getset[] = {
    {"cr_frame", (getter)Driver_get_from_coro, NULL, NULL, "cr_frame"},
    {"cr_code", (getter)Driver_get_from_coro, NULL, NULL, "cr_code"},
    {"cr_await", (getter)Driver_get_from_coro, NULL, NULL, "cr_await"},
    {"cr_running", (getter)Driver_get_from_coro, NULL, NULL, "cr_running"},
    {"cr_suspended", (getter)Driver_get_from_coro, NULL, NULL, "cr_suspended"},
    {"__name__", (getter)Driver_get_from_coro, NULL, NULL, "__name__"},
    {"__qualname__", (getter)Driver_get_from_coro, NULL, NULL, "__qualname__"},
    {NULL},
};

static PyAsyncMethods Driver_async = {
    .am_await = (unaryfunc)Driver_await,
    .am_send = (sendfunc)Driver_send,
};

static PyTypeObject Driver_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "forkwait._speedups.Driver",
    .tp_doc = PyDoc_STR("Driver(fut, awaitable): a task's coroutine that settles fut."),
    .tp_basicsize = sizeof(Driver),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Driver_new,
    .tp_dealloc = (destructor)Driver_dealloc,
    .tp_finalize = (destructor)Driver_finalize,
    .tp_traverse = (traverseproc)Driver_traverse,
    .tp_clear = (inquiry)Driver_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = next_by_send,
    .tp_methods = Driver_methods,
    .tp_getset = Driver_getset,
    .tp_as_async = &Driver_async,
};

/* -- Fork ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *dict; /* __doc__, __wrapped__ and the rest of the Python fork's identity */
    PyObject *weakrefs;
    vectorcallfunc vectorcall;
} Fork;

static FutureCore *
new_future(PyObject *func)
{
    FutureCore *fut = PyObject_GC_New(FutureCore, future_type);
    if (fut == NULL) {
        return NULL;
    }
    Py_INCREF(state_objects[RUNNING]);
    fut->state = state_objects[RUNNING];
    Py_INCREF(func);
    fut->func = func;
    fut->handle = NULL;
    fut->value = NULL;
    Py_INCREF(Py_None);
    fut->waiters = Py_None;
    fut->traceback = NULL;
    fut->unretrieved = NULL;
    fut->weakrefs = NULL;
    PyObject_GC_Track(fut);
    return fut;
}

static PyObject *
Fork_vectorcall(PyObject *Py_UNUSED(self), PyObject *const *args, size_t nargsf,
                PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!ready) {
        not_ready();
        return NULL;
    }
    if (nargs < 1 || !PyFunction_Check(args[0])) {
        goto python;
    }
    PyObject *func = args[0];
    PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(func);
    if (!(code->co_flags & CO_COROUTINE)) {
        goto python;
    }
    PyObject *observer = current_observer();
    if (observer == NULL) {
        return NULL;
    }
    Py_DECREF(observer);
    if (observer != Py_None) {
        goto python; /* a scope, a trace or sequential mode sees this fork */
    }
    PyObject *loop = running_loop();
    if (loop == NULL) {
        return NULL;
    }
    if (loop == Py_None) {
        Py_DECREF(loop);
        goto python;
    }
    FutureCore *fut = new_future(func);
    if (fut == NULL) {
        Py_DECREF(loop);
        return NULL;
    }
    PyObject *coro = PyObject_Vectorcall(func, args + 1, nargs - 1, kwnames);
    if (coro == NULL) {
        Py_DECREF(loop);
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(fut);
            return NULL;
        }
        /* Bad arguments: the waiter gets them, as for sync calls. */
        PyObject *exc = fetch_exception();
        Py_INCREF(Py_None);
        fut->handle = Py_None;
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)fut, str_set_exception, exc);
        Py_DECREF(exc);
        if (r == NULL) {
            Py_DECREF(fut);
            return NULL;
        }
        Py_DECREF(r);
        return (PyObject *)fut;
    }
    if (!PyCoro_CheckExact(coro)) {
        PyObject *r = PyObject_CallFunctionObjArgs(fork_returned, fut, coro, loop, NULL);
        Py_DECREF(coro);
        Py_DECREF(loop);
        if (r == NULL) {
            Py_DECREF(fut);
            return NULL;
        }
        Py_DECREF(r);
        return (PyObject *)fut;
    }
    PyObject *driver = new_driver(fut, coro);
    Py_DECREF(coro);
    if (driver == NULL) {
        Py_DECREF(loop);
        Py_DECREF(fut);
        return NULL;
    }
    PyObject *call_args[2] = {loop, driver};
    PyObject *task = PyObject_VectorcallMethod(
        str_create_task, call_args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(driver); /* without a task it settles the future as cancelled, here */
    Py_DECREF(loop);
    if (task == NULL) {
        Py_DECREF(fut);
        return NULL;
    }
    set_field(&fut->handle, task);
    return (PyObject *)fut;
python:
    return PyObject_Vectorcall(python_fork, args, nargsf, kwnames);
}

static PyObject *
Fork_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return PyVectorcall_Call(self, args, kwargs);
}

static PyObject *
Fork_descr_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    /* A plain function: a class attribute fork = forkwait.fork binds like one. */
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static int
Fork_traverse(Fork *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    return 0;
}

static int
Fork_clear(Fork *self)
{
    Py_CLEAR(self->dict);
    return 0;
}

static void
Fork_dealloc(Fork *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    Fork_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
Fork_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    Fork *self = PyObject_GC_New(Fork, type);
    if (self == NULL) {
        return NULL;
    }
    self->dict = NULL;
    self->weakrefs = NULL;
    self->vectorcall = Fork_vectorcall;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
Fork_repr(PyObject *Py_UNUSED(self))
{
    return PyUnicode_FromString("<function forkwait.fork>");
}

static PyObject *
Fork_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    /* Pickled by name, as a function is: forkwait.fork. */
    return PyObject_GetAttrString(self, "__qualname__");
}

static PyMethodDef Fork_methods[] = {
    {"__reduce__", (PyCFunction)Fork_reduce, METH_NOARGS, NULL},
    {NULL},
};

static PyGetSetDef Fork_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject Fork_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "forkwait._speedups.Fork",
    .tp_doc = PyDoc_STR("forkwait.fork, with its hot path in C."),
    .tp_basicsize = sizeof(Fork),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = Fork_new,
    .tp_dealloc = (destructor)Fork_dealloc,
    .tp_traverse = (traverseproc)Fork_traverse,
    .tp_clear = (inquiry)Fork_clear,
    .tp_call = Fork_call,
    .tp_vectorcall_offset = offsetof(Fork, vectorcall),
    .tp_dictoffset = offsetof(Fork, dict),
    .tp_weaklistoffset = offsetof(Fork, weakrefs),
    .tp_descr_get = Fork_descr_get,
    .tp_repr = Fork_repr,
    .tp_methods = Fork_methods,
    .tp_getset = Fork_getset,
};

/* -- module -------------------------------------------------------------------------- */

static PyObject *
setup(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {
        "future", "observer_var", "fork", "await_", "settle_failed", "settle_closed",
        "fork_returned", "await_any", NULL,
    };
    PyObject *future, *var, *fork, *await_, *failed, *closed, *returned, *any;
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_RuntimeError, "forkwait._speedups serves the main interpreter only");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOOOO:setup", keywords, &future,
                                     &var, &fork, &await_, &failed, &closed, &returned,
                                     &any)) {
        return NULL;
    }
    if (!PyType_Check(future) ||
        !PyType_IsSubtype((PyTypeObject *)future, &FutureCore_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup(): future must subclass FutureCore");
        return NULL;
    }
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL) {
        return NULL;
    }
    PyObject *task = PyObject_GetAttrString(asyncio, "Task");
    Py_DECREF(asyncio);
    if (task == NULL) {
        return NULL;
    }
    if (!PyType_Check(task)) {
        Py_DECREF(task);
        PyErr_SetString(PyExc_TypeError, "setup(): asyncio.Task is not a type");
        return NULL;
    }
    Py_XSETREF(task_type, (PyTypeObject *)task);
    PyTypeObject *future_class = (PyTypeObject *)future;
    if (future_class->tp_basicsize != FutureCore_Type.tp_basicsize ||
        future_class->tp_dictoffset != 0 || future_class->tp_finalize != NULL ||
        future_class->tp_dealloc == (destructor)Future_dealloc) {
        PyErr_SetString(PyExc_TypeError,
                        "setup(): future must add no slots, __dict__ or __del__ to "
                        "FutureCore, and be set up once");
        return NULL;
    }
    future_class->tp_traverse = (traverseproc)Future_traverse;
    future_class->tp_dealloc = (destructor)Future_dealloc;
    Py_INCREF(future);
    Py_XSETREF(future_type, future_class);
    PyObject **slots[] = {&observer_var, &python_fork, &python_await, &settle_failed,
                          &settle_closed, &fork_returned, &await_any};
    PyObject *values[] = {var, fork, await_, failed, closed, returned, any};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        Py_INCREF(values[i]);
        Py_XSETREF(*slots[i], values[i]);
    }
    ready = 1;
    Py_RETURN_NONE;
}

static PyObject *
in_main_interpreter(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    /* A second interpreter gets this module's dict copied, not initialised anew: the
       state above is process-wide, so forkwait runs in pure Python there. */
    return PyBool_FromLong(PyInterpreterState_Get() == PyInterpreterState_Main());
}

static PyMethodDef module_methods[] = {
    {"in_main_interpreter", in_main_interpreter, METH_NOARGS,
     PyDoc_STR("Whether this is the main interpreter, the only one the fast paths serve.")},
    {"running_loop", running_loop_function, METH_NOARGS,
     PyDoc_STR("asyncio.events._get_running_loop(), without its system call.")},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("Wire the fast paths to the Python code they hand the rest to.")},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "forkwait._speedups",
    .m_doc = PyDoc_STR("The hot path of fork(coroutine function) and await, in C."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        /* Its state is process-wide: a second interpreter runs forkwait in pure Python. */
        PyErr_SetString(PyExc_ImportError,
                        "forkwait._speedups runs in the main interpreter only");
        return NULL;
    }
    for (int i = 0; i < 5; i++) {
        state_objects[i] = PyLong_FromLong(i);
        if (state_objects[i] == NULL) {
            return NULL;
        }
    }
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&str_drain, "_drain"},
        {&str_create_task, "create_task"},
        {&str_get_loop, "get_loop"},
        {&str_wait_after_the_turn, "_wait_after_the_turn"},
        {&str_outcome, "_outcome"},
        {&str_set_exception, "_set_exception"},
        {&str_throw, "throw"},
        {&str_close, "close"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL) {
            return NULL;
        }
    }
    PyTypeObject *types[] = {&FutureCore_Type, &Awaiter_Type, &Driver_Type, &Fork_Type};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (PyType_Ready(types[i]) < 0) {
            return NULL;
        }
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "FutureCore", (PyObject *)&FutureCore_Type) < 0 ||
        PyModule_AddObjectRef(module, "Driver", (PyObject *)&Driver_Type) < 0 ||
        PyModule_AddObjectRef(module, "Fork", (PyObject *)&Fork_Type) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (init_running_loop() < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
