/* SRP, the State Relay Protocol (docs/srp.md), app side, in plain C11 + libc.
 *
 * One message is one SOCK_SEQPACKET record: newline-separated KEY=VALUE lines
 * (the sd_notify grammar), at most 16384 bytes, no NUL, with up to 253 fds
 * attached by SCM_RIGHTS. Exactly one verb key per message; the first line
 * wins for a repeated key; unknown keys are ignored.
 */
#ifndef SRP_H
#define SRP_H

#include <stddef.h>

#define SRP_MAX_MESSAGE 16384
#define SRP_MAX_FDS 253 /* SCM_MAX_FD */
#define SRP_MAX_FIELDS 64

/* Seals each memfd kind must carry (docs/srp.md §4). */
#define SRP_SEALS_ARENA (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define SRP_SEALS_SNAPSHOT (SRP_SEALS_ARENA | F_SEAL_WRITE)

struct srp_msg {
    char buf[SRP_MAX_MESSAGE + 1]; /* the record, split into lines in place */
    const char *verb;              /* "HELLO", "STATE", "LOADED", "CHECKPOINT", "RESUME" */
    int value;                     /* the verb's value: 0 or 1 */
    int nfields;                   /* other keys, first occurrence only */
    const char *keys[SRP_MAX_FIELDS];
    const char *vals[SRP_MAX_FIELDS];
    int nfds;
    int fds[SRP_MAX_FDS]; /* received with MSG_CMSG_CLOEXEC; the caller owns them */
};

enum srp_recv_result {
    SRP_MESSAGE = 1, /* *m holds a valid message */
    SRP_EOF = 0,     /* the peer closed its end (the manager is gone) */
    SRP_AGAIN = -1,  /* nothing to read (non-blocking) */
    SRP_ERROR = -2,  /* recvmsg failed: errno says why */
    SRP_INVALID = -3 /* a record that is not SRP: dropped, its fds closed */
};

/* Read one record without blocking and parse it. */
enum srp_recv_result srp_recv(int fd, struct srp_msg *m);

/* Send one record (text of len bytes, plus nfds fds). 0 on success, -1 + errno. */
int srp_send(int fd, const char *text, size_t len, const int *fds, int nfds);

/* Parse a payload in place (buf must be NUL-terminated at len). 0 or -1. */
int srp_parse(struct srp_msg *m, size_t len);

/* The value of KEY, or NULL. */
const char *srp_get(const struct srp_msg *m, const char *key);

/* SEQ= as a number: 1 if present and valid, else 0. */
int srp_seq(const struct srp_msg *m, unsigned long long *seq);

/* Close every fd still attached to m. */
void srp_close_fds(struct srp_msg *m);

#endif
