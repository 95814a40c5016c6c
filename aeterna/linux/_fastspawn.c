/*
 * aeterna._fastspawn: start a process with vfork() and write its own pid into
 * LISTEN_PID / WATCHDOG_PID between vfork and exec.
 *
 * Why: forking the (20 MiB, Python) manager copies its page tables and tears
 * them down again at exec, about 3 ms per start; posix_spawn() avoids that but
 * cannot put the child's pid in its environment, which socket activation
 * requires (sd_listen_fds() checks LISTEN_PID == getpid()). vfork() shares the
 * parent's memory until exec, so the child costs nothing to create and can
 * still write its pid into a buffer of its own stack before execve().
 *
 * The module is optional: aeterna.spawn falls back to posix_spawn plus a
 * /bin/sh shim when it was not built. Everything the child does between vfork
 * and exec is async-signal-safe and touches no Python object.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Write "NAME=<pid>" into buf (at least 64 bytes); no stdio after vfork. */
static void pid_assignment(char *buf, const char *name, pid_t pid)
{
    size_t n = strlen(name);
    char digits[16];
    int k = 0;
    if (n > 40)
        n = 40;
    memcpy(buf, name, n);
    buf[n++] = '=';
    do {
        digits[k++] = (char)('0' + pid % 10);
        pid /= 10;
    } while (pid > 0 && k < 15);
    while (k > 0)
        buf[n++] = digits[--k];
    buf[n] = '\0';
}

static char **to_cstrings(PyObject *seq, Py_ssize_t extra)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    char **out = PyMem_Calloc((size_t)(n + extra + 1), sizeof(char *));
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "expected bytes");
            PyMem_Free(out);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

/* Write a decimal int (maybe negative) and a newline into buf (>= 16 bytes); its length. */
static size_t int_line(char *buf, int value)
{
    char digits[12];
    size_t n = 0;
    int k = 0;
    unsigned int v = value < 0 ? (unsigned int)(-(long)value) : (unsigned int)value;
    if (value < 0)
        buf[n++] = '-';
    do {
        digits[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0 && k < 11);
    while (k > 0)
        buf[n++] = digits[--k];
    buf[n++] = '\n';
    return n;
}

/* The step of the child that failed, for the OSError's strerror (a stage name). */
enum { STAGE_EXEC = 1, STAGE_CHDIR, STAGE_SETRLIMIT, STAGE_NICE, STAGE_OOM };
static const char *const stage_names[] = {"", "exec", "chdir", "setrlimit", "nice",
                                          "oom_score_adj"};

#define NO_NICE 100
#define NO_OOM -10000
#define MAX_LIMITS 16

/*
 * spawn(path, argv, envp, pid_names, fd_pairs, cwd, nofile, limits, umask, nice,
 *       oom_score_adj) -> pid
 *   path: bytes; argv, envp: lists of bytes; pid_names: list of bytes (e.g.
 *   b"LISTEN_PID") whose value is the child's pid; fd_pairs: list of (src, dst)
 *   applied with dup2 in order (sources must not collide with targets);
 *   cwd: bytes or None; nofile: the child's soft RLIMIT_NOFILE, or -1 to keep
 *   ours (capped at the hard limit). limits: list of (resource, soft, hard), -1 for
 *   infinity, set exactly (systemd's Limit*=: a failure fails the start); umask: -1 to
 *   keep ours; nice: 100 to keep ours; oom_score_adj: -10000 to keep ours. All are
 *   applied before exec, in the child. The child gets its own session, an empty signal
 *   mask and default dispositions. Raises OSError (errno of the step that failed, its
 *   strerror the step: exec, chdir, setrlimit, nice, oom_score_adj).
 */
static PyObject *fastspawn_spawn(PyObject *self, PyObject *args)
{
    (void)self;
    const char *path;
    PyObject *argv_obj, *envp_obj, *names_obj, *pairs_obj, *cwd_obj;
    PyObject *limits_obj = NULL;
    long nofile = -1;
    int mask = -1, nice_level = NO_NICE, oom = NO_OOM;
    if (!PyArg_ParseTuple(args, "yOOOOO|lOiii", &path, &argv_obj, &envp_obj, &names_obj,
                          &pairs_obj, &cwd_obj, &nofile, &limits_obj, &mask, &nice_level,
                          &oom))
        return NULL;
    int lim_res[MAX_LIMITS];
    struct rlimit lim_val[MAX_LIMITS];
    Py_ssize_t n_limits = 0;
    if (limits_obj != NULL && limits_obj != Py_None) {
        PyObject *lseq = PySequence_Fast(limits_obj, "limits must be a sequence");
        if (lseq == NULL)
            return NULL;
        n_limits = PySequence_Fast_GET_SIZE(lseq);
        if (n_limits > MAX_LIMITS) {
            Py_DECREF(lseq);
            PyErr_SetString(PyExc_ValueError, "at most 16 limits");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < n_limits; i++) {
            long long soft, hard;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(lseq, i), "iLL", &lim_res[i],
                                  &soft, &hard)) {
                Py_DECREF(lseq);
                return NULL;
            }
            lim_val[i].rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
            lim_val[i].rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
        }
        Py_DECREF(lseq);
    }

    PyObject *argv_seq = PySequence_Fast(argv_obj, "argv must be a sequence");
    PyObject *envp_seq = PySequence_Fast(envp_obj, "envp must be a sequence");
    PyObject *names_seq = PySequence_Fast(names_obj, "pid_names must be a sequence");
    PyObject *pairs_seq = PySequence_Fast(pairs_obj, "fd_pairs must be a sequence");
    char **argv = NULL, **envp = NULL, **names = NULL;
    int *fds = NULL;
    PyObject *result = NULL;
    const char *cwd = NULL;
    if (!argv_seq || !envp_seq || !names_seq || !pairs_seq)
        goto done;
    if (cwd_obj != Py_None) {
        if (!PyBytes_Check(cwd_obj)) {
            PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
            goto done;
        }
        cwd = PyBytes_AS_STRING(cwd_obj);
    }
    Py_ssize_t n_names = PySequence_Fast_GET_SIZE(names_seq);
    Py_ssize_t n_env = PySequence_Fast_GET_SIZE(envp_seq);
    Py_ssize_t n_pairs = PySequence_Fast_GET_SIZE(pairs_seq);
    if (n_names > 4) {
        PyErr_SetString(PyExc_ValueError, "at most 4 pid variables");
        goto done;
    }
    argv = to_cstrings(argv_seq, 0);
    envp = to_cstrings(envp_seq, n_names);
    names = to_cstrings(names_seq, 0);
    fds = PyMem_Calloc((size_t)(2 * n_pairs + 1), sizeof(int));
    if (!argv || !envp || !names || !fds)
        goto done;
    for (Py_ssize_t i = 0; i < n_pairs; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(pairs_seq, i);
        if (!PyArg_ParseTuple(pair, "ii", &fds[2 * i], &fds[2 * i + 1]))
            goto done;
    }

    /* Block every signal across vfork: the child shares our memory until exec,
     * and must never run the interpreter's signal handler. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    volatile int child_errno = 0;
    volatile int child_stage = 0;
    pid_t pid = vfork();
    if (pid == 0) {
        char bufs[4][64];
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; sig++)
            if (sig != SIGKILL && sig != SIGSTOP)
                sigaction(sig, &dfl, NULL);
        if (setsid() < 0) {
            child_errno = errno;
            _exit(127);
        }
        for (Py_ssize_t i = 0; i < n_pairs; i++) {
            if (dup2(fds[2 * i], fds[2 * i + 1]) < 0) {
                child_errno = errno;
                _exit(127);
            }
        }
        if (nice_level != NO_NICE && setpriority(PRIO_PROCESS, 0, nice_level) < 0) {
            child_errno = errno;
            child_stage = STAGE_NICE;
            _exit(127);
        }
        if (oom != NO_OOM) {
            char line[16];
            size_t n = int_line(line, oom);
            int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
            /* As systemd: refused for want of privilege means a container; go on. */
            if ((fd < 0 || write(fd, line, n) != (ssize_t)n) && errno != EACCES &&
                errno != EPERM) {
                child_errno = errno;
                child_stage = STAGE_OOM;
                _exit(127);
            }
            if (fd >= 0)
                close(fd);
        }
        if (nofile >= 0) {
            /* Best effort, as a shell's ulimit: the limit we raised for ourselves
             * goes back to what we were started with. */
            struct rlimit rl;
            if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
                rl.rlim_cur = (rlim_t)nofile < rl.rlim_max ? (rlim_t)nofile : rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
            }
        }
        for (Py_ssize_t i = 0; i < n_limits; i++) {
            /* systemd's setrlimit_closest(): a limit above what we may raise to (a
             * container's hard limit) becomes the highest one we may set. */
            if (setrlimit(lim_res[i], &lim_val[i]) < 0) {
                struct rlimit cur, near = lim_val[i];
                if (errno != EPERM || getrlimit(lim_res[i], &cur) < 0) {
                    child_errno = errno;
                    child_stage = STAGE_SETRLIMIT;
                    _exit(127);
                }
                if (near.rlim_max > cur.rlim_max)
                    near.rlim_max = cur.rlim_max;
                if (near.rlim_cur > near.rlim_max)
                    near.rlim_cur = near.rlim_max;
                if (setrlimit(lim_res[i], &near) < 0) {
                    child_errno = errno;
                    child_stage = STAGE_SETRLIMIT;
                    _exit(127);
                }
            }
        }
        if (mask >= 0)
            umask((mode_t)mask);
        if (cwd != NULL && chdir(cwd) < 0) {
            child_errno = errno;
            child_stage = STAGE_CHDIR;
            _exit(127);
        }
        pid_t me = getpid();
        for (Py_ssize_t i = 0; i < n_names; i++) {
            pid_assignment(bufs[i], names[i], me);
            envp[n_env + i] = bufs[i];
        }
        envp[n_env + n_names] = NULL;
        sigprocmask(SIG_SETMASK, &((sigset_t){0}), NULL);
        execve(path, argv, envp);
        child_errno = errno;
        child_stage = STAGE_EXEC;
        _exit(127);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        errno = saved;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (child_errno != 0) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        int stage = child_stage > 0 && child_stage <= STAGE_OOM ? child_stage : STAGE_EXEC;
        PyObject *exc = Py_BuildValue("(is)", child_errno, stage_names[stage]);
        if (exc != NULL) {
            PyErr_SetObject(PyExc_OSError, exc);
            Py_DECREF(exc);
        }
        goto done;
    }
    result = PyLong_FromLong((long)pid);
done:
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(names);
    PyMem_Free(fds);
    Py_XDECREF(argv_seq);
    Py_XDECREF(envp_seq);
    Py_XDECREF(names_seq);
    Py_XDECREF(pairs_seq);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", fastspawn_spawn, METH_VARARGS,
     "spawn(path, argv, envp, pid_names, fd_pairs, cwd, nofile=-1, limits=None, umask=-1, "
     "nice=100, oom_score_adj=-10000) -> pid: vfork and exec."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "aeterna.linux._fastspawn",
    "vfork/exec with the child's pid in its environment (LISTEN_PID).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastspawn(void) { return PyModule_Create(&module); }
