/* counter: a tiny TCP counter service that keeps its state across hot relays
 * with SRP (docs/srp.md), written against the wire protocol in plain C11 + libc.
 *
 * - The listening socket comes from LISTEN_FDS (LISTEN_PID checked), READY=1
 *   goes to NOTIFY_SOCKET (one sd_notify datagram).
 * - The state (a counter and a ring of the last requests) lives in a memfd
 *   mapped MAP_SHARED; it is sealed against shrinking and growing from the start.
 * - At start: HELLO=1 VERSION=1 WANT_STATE=1 on the SEQPACKET fd AETERNA_SRP_FD,
 *   then a bounded wait for STATE=1 (a sealed memfd: seals, size, format,
 *   schema and checksum are checked before it is mapped) or STATE=0; answer
 *   LOADED=1/0 SEQ=n; only then READY=1 and serving.
 * - Serving: one line per TCP connection. "get" answers the counter, "log" the
 *   last requests, anything else increments the counter; the answer is
 *   "counter=<n> gen=<AETERNA_GENERATION>\n".
 * - CHECKPOINT=1 SEQ=n: stop accepting, finish the requests in hand (bounded),
 *   answer STATE=1 SEQ=n with the state (a sealed snapshot copy, or the live
 *   memfd itself as an arena) and take no new work. Then either SIGTERM (the
 *   relay promoted the next generation: exit 0) or RESUME=1 (a rollback: load
 *   the newest state, answer LOADED=, accept again).
 * - SIGTERM while it still holds the state: stop accepting, finish the
 *   requests in hand, leave an unsolicited checkpoint (STATE=1 without SEQ)
 *   with the manager so that a restart continues from it, exit 0.
 *
 * Environment (all optional):
 *   COUNTER_KIND=snapshot|arena  how checkpoints travel (default snapshot)
 *   COUNTER_SCHEMA=n             schema written and the only one accepted (1)
 *   COUNTER_SRP_WAIT_MS=ms       bound on the wait for STATE at start (60000)
 *   COUNTER_DRAIN_MS=ms          bound on finishing requests in hand (2000)
 *   COUNTER_REQUIRE_STATE=1      never serve cold when a state was due but could
 *                                not be loaded: wait to be stopped instead
 *   COUNTER_FAIL_AFTER=k         after k increments served by this process...
 *   COUNTER_FAIL_MODE=exit|trigger  ...exit 1, or send WATCHDOG=trigger
 *   COUNTER_WEAK_SEALS=1         (for tests) snapshot checkpoints lack F_SEAL_WRITE
 *   COUNTER_NAIVE_ACCEPT=1       (for tests) trust O_NONBLOCK on the shared listener
 *   COUNTER_START_DELAY_MS=ms    (for tests) sleep first, like a slow-starting app
 */
#define _GNU_SOURCE
#include "sha256.h"
#include "srp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FORMAT "x-counter"
#define FDNAME "counter"
#define MAGIC "xcounter"
#define LOG_ENTRIES 16
#define LINE_LEN 48
#define MAX_CONNS 64
#define CONN_TIMEOUT_MS 5000

/* The state's layout: fixed size, native byte order (the receiver is a later
 * build of this program on the same host). SCHEMA= versions it. */
struct entry {
    uint64_t n;   /* the counter after this request */
    uint32_t gen; /* the generation that served it */
    uint32_t len;
    char line[LINE_LEN];
};
struct state {
    char magic[8];
    uint64_t counter;
    uint64_t logged; /* entries ever written; the ring keeps the last LOG_ENTRIES */
    struct entry log[LOG_ENTRIES];
};

struct conn {
    int fd;
    size_t len;
    char buf[LINE_LEN + 16];
    long long deadline;
};

enum kind { SNAPSHOT, ARENA };

static struct {
    /* configuration */
    enum kind kind;
    unsigned schema;
    long long srp_wait_ms, drain_ms;
    long fail_after;
    int fail_exit, weak_seals, naive_accept, require_state;
    const char *gen_s;
    uint32_t gen;
    /* fds */
    int listen_fd, srp_fd, mem_fd;
    struct state *st;
    /* who holds what */
    int accepting;     /* takes new work */
    int owner;         /* holds the unit's current state (it has not handed it over) */
    int authoritative; /* its state continues the unit's history (so it may push it) */
    int pending;       /* a CHECKPOINT waits for the requests in hand */
    unsigned long long pending_seq;
    long long pending_deadline;
    int terminating;
    long long term_deadline;
    long served;
} g = {.listen_fd = -1, .srp_fd = -1, .mem_fd = -1, .fail_after = -1};

static struct conn conns[MAX_CONNS];
static int nconns;
static volatile sig_atomic_t got_term;
static sigset_t run_mask; /* the mask while waiting: SIGTERM and SIGINT deliverable */
static struct srp_msg msg; /* 17 KiB: static, not on the stack */

/* ------------------------------------------------------------------ utils */

static void say(const char *fmt, ...)
{
    char line[512];
    int n = snprintf(line, sizeof line, "c-srp[%d] gen=%s: ", (int)getpid(),
                     g.gen_s ? g.gen_s : "?");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    if (write(2, line, (size_t)n) < 0) { /* nothing to do about it */
    }
}

static _Noreturn void die(const char *what)
{
    say("fatal: %s%s%s", what, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(1);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A whole decimal string to a number; -1 if it is not one. */
static long long parse_num(const char *s)
{
    if (!s || !*s || strlen(s) > 18)
        return -1;
    long long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

static long long env_num(const char *name, long long dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    long long v = parse_num(s);
    if (v < 0) {
        errno = 0;
        say("%s=%s is not a number", name, s);
        exit(2);
    }
    return v;
}

/* sd_notify: one datagram to NOTIFY_SOCKET (a path, or @abstract). */
static void notify(const char *text)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, text, strlen(text), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0)
        say("sd_notify failed: %s", strerror(errno));
    close(fd);
}

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

/* ------------------------------------------------------------ inherited fds */

static void take_listener(void)
{
    long long pid = parse_num(getenv("LISTEN_PID"));
    long long n = parse_num(getenv("LISTEN_FDS"));
    if (pid < 0 || n < 0) {
        errno = 0;
        die("no LISTEN_PID/LISTEN_FDS: run me socket-activated (under aeterna)");
    }
    if (pid != (long long)getpid()) {
        errno = 0;
        die("LISTEN_PID is another process's: the fds are not mine");
    }
    for (int fd = 3; fd < 3 + n; fd++) {
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
            die("a LISTEN_FDS fd is not open");
        int type = 0, acc = 0;
        socklen_t len = sizeof type;
        if (g.listen_fd < 0 && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
            type == SOCK_STREAM && (len = sizeof acc,
                                    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len)) == 0 &&
            acc)
            g.listen_fd = fd;
    }
    if (g.listen_fd < 0) {
        errno = 0;
        die("no listening stream socket among LISTEN_FDS");
    }
    /* Generations share this socket (and its accept queue): never block in accept(). */
    int fl = fcntl(g.listen_fd, F_GETFL);
    if (fl < 0 || fcntl(g.listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)
        die("O_NONBLOCK on the listener");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
}

static void take_srp_fd(void)
{
    const char *s = getenv("AETERNA_SRP_FD");
    if (!s)
        return; /* no SRP: runs cold, like under plain systemd */
    long long fd = parse_num(s);
    int type = 0;
    socklen_t len = sizeof type;
    if (fd < 3 || fd > 1 << 20 || getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        type != SOCK_SEQPACKET) {
        say("AETERNA_SRP_FD=%s is not a SEQPACKET socket: no SRP", s);
        return;
    }
    g.srp_fd = (int)fd;
    fcntl(g.srp_fd, F_SETFD, FD_CLOEXEC); /* our children must not inherit it */
    unsetenv("AETERNA_SRP_FD");
}

/* ------------------------------------------------------------------ state */

static void new_live_state(void)
{
    int fd = memfd_create("counter-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        die("memfd_create");
    if (ftruncate(fd, sizeof(struct state)) < 0)
        die("ftruncate");
    /* Arena-shaped from the start: its size can never change, and it stays writable. */
    if (fcntl(fd, F_ADD_SEALS, SRP_SEALS_ARENA) < 0)
        die("F_ADD_SEALS");
    void *p = mmap(NULL, sizeof(struct state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    g.mem_fd = fd;
    g.st = p;
    memcpy(g.st->magic, MAGIC, sizeof g.st->magic);
}

/* Check and load a STATE=1/RESUME=1 message's memfd; NULL on success, else the
 * ERROR= word for LOADED=0. On success the fd is taken from m. */
static const char *load_state(struct srp_msg *m)
{
    if (m->nfds != 1)
        return "fds";
    const char *format = srp_get(m, "FORMAT"), *kinds = srp_get(m, "FDKINDS");
    const char *names = srp_get(m, "FDNAMES"), *sum = srp_get(m, "CHECKSUM");
    if (!format || strcmp(format, FORMAT) != 0)
        return "format";
    if (parse_num(srp_get(m, "SCHEMA")) != (long long)g.schema)
        return "schema";
    if (names && strcmp(names, FDNAME) != 0)
        return "fdnames";
    int arena;
    if (kinds && strcmp(kinds, "snapshot") == 0)
        arena = 0;
    else if (kinds && strcmp(kinds, "arena") == 0)
        arena = 1;
    else
        return "fdkinds";
    int fd = m->fds[0];
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0)
        return "not-memfd";
    int need = arena ? SRP_SEALS_ARENA : SRP_SEALS_SNAPSHOT;
    if ((seals & need) != need)
        return "seals";
    /* Sealed against SHRINK and GROW: mapping all of it can never SIGBUS. */
    struct stat sb;
    if (fstat(fd, &sb) < 0 || sb.st_size != (off_t)sizeof(struct state) ||
        parse_num(srp_get(m, "SIZE")) != (long long)sb.st_size)
        return "size";
    int prot = arena ? PROT_READ | PROT_WRITE : PROT_READ;
    struct state *p = mmap(NULL, sizeof(struct state), prot, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return "mmap";
    const char *err = NULL;
    if (sum) {
        char hex[65];
        sha256_hex(p, sizeof *p, hex);
        if (strncmp(sum, "sha256:", 7) != 0 || strcmp(sum + 7, hex) != 0)
            err = "checksum";
    }
    if (!err && memcmp(p->magic, MAGIC, sizeof p->magic) != 0)
        err = "magic";
    if (err) {
        munmap(p, sizeof *p);
        return err;
    }
    if (arena) { /* the received memfd becomes the live state: nothing is copied */
        munmap(g.st, sizeof *g.st);
        close(g.mem_fd);
        g.st = p;
        g.mem_fd = fd;
    } else {
        memcpy(g.st, p, sizeof *p);
        munmap(p, sizeof *p);
        close(fd);
    }
    m->fds[0] = -1;
    return NULL;
}

/* STATE=1 with the state attached; with_seq=0 for an unsolicited checkpoint. */
static int send_state(int with_seq, unsigned long long seq)
{
    int fd, close_after = 0;
    char sum[65] = "";
    if (g.kind == SNAPSHOT) {
        fd = memfd_create("counter-snapshot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
            return -1;
        close_after = 1;
        const char *p = (const char *)g.st;
        size_t off = 0;
        while (off < sizeof *g.st) {
            ssize_t w = pwrite(fd, p + off, sizeof *g.st - off, (off_t)off);
            if (w <= 0) {
                close(fd);
                return -1;
            }
            off += (size_t)w;
        }
        int seals = g.weak_seals ? SRP_SEALS_ARENA : SRP_SEALS_SNAPSHOT;
        if (fcntl(fd, F_ADD_SEALS, seals) < 0) {
            close(fd);
            return -1;
        }
        sha256_hex(g.st, sizeof *g.st, sum);
    } else {
        /* The arena is the live memfd itself. From here on this process does not
         * write to it: its ownership moves with the message (docs/srp.md §4).
         * No CHECKSUM: the receiver keeps writing to these very bytes. */
        fd = g.mem_fd;
    }
    char text[512], seqs[40] = "", sums[90] = "";
    if (with_seq)
        snprintf(seqs, sizeof seqs, "SEQ=%llu\n", seq);
    if (sum[0])
        snprintf(sums, sizeof sums, "CHECKSUM=sha256:%s\n", sum);
    int n = snprintf(text, sizeof text,
                     "STATE=1\n%sFORMAT=" FORMAT "\nSCHEMA=%u\nSIZE=%zu\n%sFDNAMES=" FDNAME
                     "\nFDKINDS=%s\n",
                     seqs, g.schema, sizeof *g.st, sums, g.kind == ARENA ? "arena" : "snapshot");
    int rc = srp_send(g.srp_fd, text, (size_t)n, &fd, 1);
    int saved = errno;
    if (close_after)
        close(fd);
    errno = saved;
    return rc;
}

static void send_text(const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (g.srp_fd >= 0 && srp_send(g.srp_fd, text, (size_t)n, NULL, 0) < 0)
        say("srp send failed: %s", strerror(errno));
}

/* ------------------------------------------------------------------ start */

static void hello_and_load(void)
{
    if (g.srp_fd < 0) {
        say("no AETERNA_SRP_FD: starting cold");
        return;
    }
    send_text("HELLO=1\nVERSION=1\nWANT_STATE=1\n");
    long long deadline = now_ms() + g.srp_wait_ms;
    for (;;) {
        long long left = deadline - now_ms();
        if (got_term) {
            say("SIGTERM before any state came: exit");
            exit(0);
        }
        if (left <= 0) {
            say("no STATE within %lld ms: starting cold", g.srp_wait_ms);
            return;
        }
        struct pollfd p = {.fd = g.srp_fd, .events = POLLIN};
        struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
        if (ppoll(&p, 1, &ts, &run_mask) <= 0)
            continue;
        enum srp_recv_result r = srp_recv(g.srp_fd, &msg);
        if (r == SRP_AGAIN || r == SRP_INVALID)
            continue;
        if (r != SRP_MESSAGE) {
            say("the SRP channel closed: starting cold");
            close(g.srp_fd);
            g.srp_fd = -1;
            return;
        }
        unsigned long long seq = 0;
        int has_seq = srp_seq(&msg, &seq);
        if (strcmp(msg.verb, "STATE") == 0 && msg.value == 1 && has_seq) {
            const char *err = load_state(&msg);
            srp_close_fds(&msg);
            if (err) {
                send_text("LOADED=0\nSEQ=%llu\nERROR=%s\n", seq, err);
                say("state refused (%s): starting cold", err);
            } else {
                send_text("LOADED=1\nSEQ=%llu\n", seq);
                g.authoritative = 1;
                say("state loaded: counter=%llu", (unsigned long long)g.st->counter);
            }
            return;
        }
        if (strcmp(msg.verb, "STATE") == 0 && msg.value == 0) {
            const char *reason = srp_get(&msg, "REASON");
            /* "none": the unit has no state yet, so a cold start is its history. */
            g.authoritative = reason && strcmp(reason, "none") == 0;
            say("no state (%s): starting cold", reason ? reason : "?");
            return;
        }
        if (strcmp(msg.verb, "CHECKPOINT") == 0 && has_seq)
            send_text("STATE=0\nSEQ=%llu\nERROR=not-ready\n", seq);
        srp_close_fds(&msg);
    }
}

/* The predecessor's state could not be loaded and this app must not serve
 * without it: take no work (no READY=1) and let the manager roll back. */
static _Noreturn void wait_to_be_stopped(void)
{
    say("COUNTER_REQUIRE_STATE=1 and no state loaded: not serving, waiting to be stopped");
    long long deadline = now_ms() + g.srp_wait_ms;
    while (!got_term) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            say("never stopped: exit 1");
            exit(1);
        }
        struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
        ppoll(NULL, 0, &ts, &run_mask);
    }
    say("SIGTERM: exit 0 without having served");
    exit(0);
}

/* ---------------------------------------------------------------- serving */

static void close_conn(int i)
{
    close(conns[i].fd);
    conns[i] = conns[--nconns];
}

static void close_all_conns(const char *why)
{
    if (nconns)
        say("closing %d unanswered connection(s): %s", nconns, why);
    while (nconns)
        close_conn(0);
}

static int reply(int fd, const char *text, size_t len)
{
    return send(fd, text, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len ? 0 : -1;
}

static void handle_line(struct conn *c)
{
    char *line = c->buf;
    line[c->len] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    char out[LOG_ENTRIES * 96 + 32];
    if (strcmp(line, "get") == 0) {
        int n = snprintf(out, sizeof out, "counter=%llu gen=%s\n",
                         (unsigned long long)g.st->counter, g.gen_s);
        reply(c->fd, out, (size_t)n);
        return;
    }
    if (strcmp(line, "log") == 0) {
        size_t n = 0;
        uint64_t first = g.st->logged > LOG_ENTRIES ? g.st->logged - LOG_ENTRIES : 0;
        for (uint64_t i = first; i < g.st->logged; i++) {
            const struct entry *e = &g.st->log[i % LOG_ENTRIES];
            n += (size_t)snprintf(out + n, sizeof out - n, "n=%llu gen=%u line=%.*s\n",
                                  (unsigned long long)e->n, (unsigned)e->gen, (int)e->len,
                                  e->line);
        }
        n += (size_t)snprintf(out + n, sizeof out - n, "end\n");
        reply(c->fd, out, n);
        return;
    }
    /* An increment: it counts only if its answer went out, so an increment is
     * acknowledged exactly when it is in the state. */
    uint64_t next = g.st->counter + 1;
    int n = snprintf(out, sizeof out, "counter=%llu gen=%s\n", (unsigned long long)next, g.gen_s);
    if (reply(c->fd, out, (size_t)n) < 0)
        return;
    g.st->counter = next;
    struct entry *e = &g.st->log[g.st->logged % LOG_ENTRIES];
    e->n = next;
    e->gen = g.gen;
    e->len = (uint32_t)strnlen(line, LINE_LEN);
    for (uint32_t i = 0; i < e->len; i++)
        e->line[i] = line[i] >= 0x20 && line[i] < 0x7f ? line[i] : '?';
    g.st->logged++;
    g.served++;
    if (g.fail_after >= 0 && g.served == g.fail_after) {
        if (g.fail_exit) {
            say("COUNTER_FAIL_AFTER=%ld reached: exit 1", g.fail_after);
            exit(1);
        }
        say("COUNTER_FAIL_AFTER=%ld reached: WATCHDOG=trigger", g.fail_after);
        notify("WATCHDOG=trigger\n");
    }
}

/* O_NONBLOCK lives on the open file description, which this process shares with
 * the manager and with the other generations of the unit, and whoever spawns or
 * runs beside us may flip it (the manager clears it when it spawns the next
 * generation, like systemd's NonBlocking=no). So accept() must not rely on it:
 * one accept() per readiness reported by poll(). With SRP only one generation
 * accepts at a time (N stops at CHECKPOINT, N+1 starts after LOADED), so the
 * connection poll() saw is still queued and accept() returns at once whatever
 * the flag says. A blocked accept() would also hold off CHECKPOINT and SIGTERM. */
static void accept_some(void)
{
    /* COUNTER_NAIVE_ACCEPT=1: trust the O_NONBLOCK set at start and accept until
     * EAGAIN, as most event loops do. */
    int max = g.naive_accept ? 16 : 1;
    for (int i = 0; i < max && nconns < MAX_CONNS; i++) {
        int fd = accept4(g.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN: the queue is empty (or another process got there first) */
        conns[nconns++] = (struct conn){.fd = fd, .deadline = now_ms() + CONN_TIMEOUT_MS};
    }
}

/* Returns 1 when the connection is finished (answered or gone). */
static int read_conn(struct conn *c)
{
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, MSG_DONTWAIT);
    if (n < 0)
        return errno != EAGAIN && errno != EINTR;
    if (n == 0)
        return 1;
    c->len += (size_t)n;
    if (memchr(c->buf, '\n', c->len) || c->len == sizeof c->buf - 1) {
        handle_line(c);
        return 1;
    }
    return 0;
}

static void on_srp_message(void)
{
    unsigned long long seq = 0;
    int has_seq = srp_seq(&msg, &seq);
    const char *verb = msg.verb;
    if (strcmp(verb, "CHECKPOINT") == 0 && msg.value == 1 && has_seq) {
        const char *reason = srp_get(&msg, "REASON");
        if (!g.owner || g.pending) {
            send_text("STATE=0\nSEQ=%llu\nERROR=%s\n", seq, g.pending ? "busy" : "not-owner");
        } else {
            /* Take no new work; answer once the requests in hand are done. */
            g.pending = 1;
            g.pending_seq = seq;
            g.pending_deadline = now_ms() + g.drain_ms;
            g.accepting = 0;
            say("CHECKPOINT seq=%llu reason=%s: stopped accepting, %d request(s) in hand", seq,
                reason ? reason : "?", nconns);
        }
    } else if (strcmp(verb, "RESUME") == 0 && msg.value == 1 && has_seq) {
        /* A rollback: the newest state comes back (N+1's, or the one we gave). */
        const char *err = msg.nfds ? load_state(&msg) : NULL;
        if (err)
            send_text("LOADED=0\nSEQ=%llu\nERROR=%s\n", seq, err);
        else
            send_text("LOADED=1\nSEQ=%llu\n", seq);
        g.owner = 1;
        g.authoritative = 1;
        g.accepting = !g.terminating;
        say("RESUME seq=%llu: %s%s, counter=%llu, accepting again", seq,
            err ? "kept my own state, refused: " : "state loaded", err ? err : "",
            (unsigned long long)g.st->counter);
    } else if (strcmp(verb, "STATE") == 0 && msg.value == 1 && has_seq) {
        send_text("LOADED=0\nSEQ=%llu\nERROR=late\n", seq); /* we already started */
    }
    srp_close_fds(&msg);
}

static void read_srp(void)
{
    for (int i = 0; i < 64 && g.srp_fd >= 0; i++) {
        enum srp_recv_result r = srp_recv(g.srp_fd, &msg);
        if (r == SRP_AGAIN)
            return;
        if (r == SRP_INVALID) {
            say("dropped a record that is not SRP");
            continue;
        }
        if (r == SRP_MESSAGE) {
            on_srp_message();
            continue;
        }
        say("the SRP channel closed (the manager is gone)");
        close(g.srp_fd);
        g.srp_fd = -1;
    }
}

static void finish_checkpoint(void)
{
    close_all_conns("checkpoint drain bound reached");
    if (send_state(1, g.pending_seq) < 0) {
        say("checkpoint seq=%llu failed: %s", g.pending_seq, strerror(errno));
        send_text("STATE=0\nSEQ=%llu\nERROR=%s\n", g.pending_seq, strerror(errno));
        g.accepting = !g.terminating; /* still ours: keep serving */
    } else {
        g.owner = 0; /* handed over: wait for SIGTERM (promoted) or RESUME (rollback) */
        say("checkpoint seq=%llu sent: counter=%llu kind=%s", g.pending_seq,
            (unsigned long long)g.st->counter, g.kind == ARENA ? "arena" : "snapshot");
    }
    g.pending = 0;
}

static _Noreturn void finish_and_exit(void)
{
    close_all_conns("stop drain bound reached");
    if (g.owner && g.authoritative && g.srp_fd >= 0) {
        if (send_state(0, 0) == 0)
            say("left a checkpoint with the manager: counter=%llu",
                (unsigned long long)g.st->counter);
        else
            say("could not leave a checkpoint: %s", strerror(errno));
    }
    say("exit 0 (served %ld increment(s))", g.served);
    exit(0);
}

static void serve(void)
{
    struct pollfd p[2 + MAX_CONNS];
    for (;;) {
        long long now = now_ms();
        if (got_term && !g.terminating) {
            g.terminating = 1;
            g.accepting = 0;
            g.term_deadline = now + g.drain_ms;
            if (g.owner) /* a generation that handed its state over is no longer the unit */
                notify("STOPPING=1\n");
            say("SIGTERM: stopped accepting, %d request(s) in hand", nconns);
        }
        if (g.pending && (nconns == 0 || now >= g.pending_deadline))
            finish_checkpoint();
        if (g.terminating && !g.pending && (nconns == 0 || now >= g.term_deadline))
            finish_and_exit();
        for (int i = 0; i < nconns;) { /* idle clients do not hold us forever */
            if (now >= conns[i].deadline)
                close_conn(i);
            else
                i++;
        }

        int np = 0, listen_at = -1, srp_at = -1;
        long long wake = -1;
        if (g.accepting && nconns < MAX_CONNS) {
            listen_at = np;
            p[np++] = (struct pollfd){.fd = g.listen_fd, .events = POLLIN};
        }
        if (g.srp_fd >= 0) {
            srp_at = np;
            p[np++] = (struct pollfd){.fd = g.srp_fd, .events = POLLIN};
        }
        int conns_at = np;
        for (int i = 0; i < nconns; i++) {
            p[np++] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
            if (wake < 0 || conns[i].deadline < wake)
                wake = conns[i].deadline;
        }
        if (g.pending && (wake < 0 || g.pending_deadline < wake))
            wake = g.pending_deadline;
        if (g.terminating && (wake < 0 || g.term_deadline < wake))
            wake = g.term_deadline;
        struct timespec ts, *tsp = NULL;
        if (wake >= 0) {
            long long left = wake > now ? wake - now : 0;
            ts = (struct timespec){.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
            tsp = &ts;
        }
        int n = ppoll(p, (nfds_t)np, tsp, &run_mask);
        if (n < 0 && errno != EINTR)
            die("ppoll");
        if (n <= 0)
            continue;
        /* Connections first (their fds shift when one closes), newest last. */
        for (int i = nconns - 1; i >= 0; i--) {
            if (p[conns_at + i].revents && read_conn(&conns[i]))
                close_conn(i);
        }
        if (srp_at >= 0 && p[srp_at].revents)
            read_srp();
        if (listen_at >= 0 && (p[listen_at].revents & POLLIN) && g.accepting)
            accept_some();
    }
}

int main(void)
{
    g.gen_s = getenv("AETERNA_GENERATION");
    if (!g.gen_s || parse_num(g.gen_s) < 0)
        g.gen_s = "0";
    g.gen = (uint32_t)parse_num(g.gen_s);
    const char *kind = getenv("COUNTER_KIND");
    g.kind = kind && strcmp(kind, "arena") == 0 ? ARENA : SNAPSHOT;
    g.schema = (unsigned)env_num("COUNTER_SCHEMA", 1);
    g.srp_wait_ms = env_num("COUNTER_SRP_WAIT_MS", 60000);
    g.drain_ms = env_num("COUNTER_DRAIN_MS", 2000);
    g.fail_after = getenv("COUNTER_FAIL_AFTER") ? (long)env_num("COUNTER_FAIL_AFTER", -1) : -1;
    const char *mode = getenv("COUNTER_FAIL_MODE");
    g.fail_exit = !mode || strcmp(mode, "trigger") != 0;
    g.weak_seals = env_num("COUNTER_WEAK_SEALS", 0) != 0;
    g.naive_accept = env_num("COUNTER_NAIVE_ACCEPT", 0) != 0;
    g.require_state = env_num("COUNTER_REQUIRE_STATE", 0) != 0;

    /* SIGTERM/SIGINT are blocked except inside ppoll(): no lost wake-up. */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &run_mask);
    sigdelset(&run_mask, SIGTERM);
    sigdelset(&run_mask, SIGINT);
    struct sigaction sa = {.sa_handler = on_term};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    long long delay = env_num("COUNTER_START_DELAY_MS", 0);
    struct timespec ts = {.tv_sec = delay / 1000, .tv_nsec = (delay % 1000) * 1000000};
    while (delay > 0 && nanosleep(&ts, &ts) < 0 && errno == EINTR && !got_term)
        ;
    take_listener();
    take_srp_fd();
    new_live_state();
    hello_and_load();
    if (g.require_state && !g.authoritative)
        wait_to_be_stopped();
    g.owner = 1;
    g.accepting = 1;
    char ready[128];
    snprintf(ready, sizeof ready, "READY=1\nSTATUS=serving, counter=%llu\n",
             (unsigned long long)g.st->counter);
    notify(ready);
    say("serving: counter=%llu kind=%s schema=%u", (unsigned long long)g.st->counter,
        g.kind == ARENA ? "arena" : "snapshot", g.schema);
    serve();
}
