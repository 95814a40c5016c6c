/* SRP wire format: receive, parse and send one SEQPACKET record. */
#define _GNU_SOURCE
#include "srp.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *const VERBS[] = {"HELLO", "STATE", "LOADED", "CHECKPOINT", "RESUME"};

static int key_ok(const char *k, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

int srp_parse(struct srp_msg *m, size_t len)
{
    m->verb = NULL;
    m->value = -1;
    m->nfields = 0;
    if (len > SRP_MAX_MESSAGE || memchr(m->buf, '\0', len))
        return -1;
    m->buf[len] = '\0';
    const char *verb_val = NULL;
    char *line = m->buf;
    while (line < m->buf + len) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        char *next = nl ? nl + 1 : m->buf + len;
        if (*line) {
            char *eq = strchr(line, '=');
            if (!eq || !key_ok(line, (size_t)(eq - line)))
                return -1;
            *eq = '\0';
            const char *val = eq + 1;
            int seen = 0;
            for (int i = 0; i < m->nfields && !seen; i++)
                seen = strcmp(m->keys[i], line) == 0;
            if (m->verb && strcmp(m->verb, line) == 0)
                seen = 1;
            if (!seen) {
                int is_verb = 0;
                for (size_t v = 0; v < sizeof VERBS / sizeof *VERBS && !is_verb; v++)
                    is_verb = strcmp(VERBS[v], line) == 0;
                if (is_verb && !m->verb) { /* the first verb key is the verb */
                    m->verb = line;
                    verb_val = val;
                } else if (m->nfields < SRP_MAX_FIELDS) {
                    m->keys[m->nfields] = line;
                    m->vals[m->nfields] = val;
                    m->nfields++;
                } /* more keys than we keep: ignored, like unknown keys */
            }
        }
        line = next;
    }
    if (!m->verb || !verb_val)
        return -1;
    if (strcmp(verb_val, "0") == 0)
        m->value = 0;
    else if (strcmp(verb_val, "1") == 0)
        m->value = 1;
    else
        return -1;
    return 0;
}

const char *srp_get(const struct srp_msg *m, const char *key)
{
    for (int i = 0; i < m->nfields; i++)
        if (strcmp(m->keys[i], key) == 0)
            return m->vals[i];
    return NULL;
}

int srp_seq(const struct srp_msg *m, unsigned long long *seq)
{
    const char *s = srp_get(m, "SEQ");
    if (!s || !*s || strlen(s) > 18)
        return 0;
    unsigned long long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        v = v * 10 + (unsigned)(*s - '0');
    }
    *seq = v;
    return 1;
}

void srp_close_fds(struct srp_msg *m)
{
    for (int i = 0; i < m->nfds; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    m->nfds = 0;
}

enum srp_recv_result srp_recv(int fd, struct srp_msg *m)
{
    union {
        char buf[CMSG_SPACE(SRP_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    /* A record longer than the limit sets MSG_TRUNC (SEQPACKET keeps boundaries). */
    struct iovec iov = {.iov_base = m->buf, .iov_len = SRP_MAX_MESSAGE};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = control.buf,
                        .msg_controllen = sizeof control.buf};
    m->nfds = 0;
    m->verb = NULL;
    ssize_t n;
    do
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? SRP_AGAIN : SRP_ERROR;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count && m->nfds < SRP_MAX_FDS; i++)
            memcpy(&m->fds[m->nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (n == 0 && m->nfds == 0)
        return SRP_EOF;
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || srp_parse(m, (size_t)n) < 0) {
        srp_close_fds(m);
        return SRP_INVALID;
    }
    return SRP_MESSAGE;
}

int srp_send(int fd, const char *text, size_t len, const int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(SRP_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    if (len > SRP_MAX_MESSAGE || nfds < 0 || nfds > SRP_MAX_FDS) {
        errno = EMSGSIZE;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)text, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(control.buf, 0, sizeof control.buf);
        mh.msg_control = control.buf;
        mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    if ((size_t)n != len) {
        errno = EMSGSIZE;
        return -1;
    }
    return 0;
}
