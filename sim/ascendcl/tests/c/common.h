/*
 * Helpers for the C programs that check the drop-in libascendcl.so: each program forks before any ACL
 * call, then the two processes talk over a pair of pipes, the way two programs of the official samples
 * talk over files.
 */
#ifndef ACLSHM_C_COMMON_H
#define ACLSHM_C_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "acl/acl.h"

#define CHECK(call)                                                                                 \
    do {                                                                                            \
        aclError err_ = (call);                                                                     \
        if (err_ != ACL_SUCCESS) {                                                                  \
            fprintf(stderr, "%s:%d: %s failed with %d\n", __FILE__, __LINE__, #call, (int)err_);  \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

#define EXPECT(call, code)                                                                          \
    do {                                                                                            \
        aclError err_ = (call);                                                                     \
        if (err_ != (code)) {                                                                       \
            fprintf(stderr, "%s:%d: %s returned %d, expected %d\n", __FILE__, __LINE__, #call,     \
                    (int)err_, (int)(code));                                                        \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

/* Properties of pinned device memory of `attr` on `device`, for aclrtMallocPhysical. */
static inline aclrtPhysicalMemProp device_prop(uint32_t device, aclrtMemAttr attr) {
    aclrtPhysicalMemProp p;
    memset(&p, 0, sizeof p);
    p.handleType = ACL_MEM_HANDLE_TYPE_NONE;
    p.allocationType = ACL_MEM_ALLOCATION_TYPE_PINNED;
    p.memAttr = attr;
    p.location.type = ACL_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = device;
    return p;
}

/* One direction of the conversation. */
typedef struct {
    int rd;
    int wr;
} channel;

/* Fork: returns 0 in the child (process B), the child's pid in the parent (process A). */
static inline pid_t start_pair(channel *a_side, channel *b_side) {
    int ab[2], ba[2];
    if (pipe(ab) != 0 || pipe(ba) != 0) {
        perror("pipe");
        exit(1);
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        b_side->rd = ab[0];
        b_side->wr = ba[1];
        close(ab[1]);
        close(ba[0]);
    } else {
        a_side->rd = ba[0];
        a_side->wr = ab[1];
        close(ab[0]);
        close(ba[1]);
    }
    return pid;
}

static inline void send_bytes(channel *c, const void *buf, size_t len) {
    if (write(c->wr, buf, len) != (ssize_t)len) {
        perror("write");
        exit(1);
    }
}

static inline void recv_bytes(channel *c, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(c->rd, (char *)buf + got, len - got);
        if (n <= 0) {
            fprintf(stderr, "the other process went away\n");
            exit(1);
        }
        got += (size_t)n;
    }
}

/*
 * The parent's last step: wait for the child, then report the program's result as the test expects it
 * ("<name>: ok"). Returns main's exit status: 1 if the child failed.
 */
static inline int finish_pair(pid_t child, const char *name) {
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "process B failed (status %d)\n", status);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

#endif
