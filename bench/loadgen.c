/*
 * loadgen: drive totpd over its Unix socket with pre-encoded request frames.
 *
 *   loadgen SOCKET FRAMES CONNECTIONS persistent|new SECONDS
 *
 * FRAMES is a file of complete request frames (8-byte header + payload, as
 * docs/protocol.md specifies), written ahead of time by bench/bench.py: each a
 * verification of a valid, fresh code, in the order they must be sent (an
 * account's steps in increasing order). CONNECTIONS connections each keep one
 * request in flight and take the next frame from the shared queue, in order,
 * until the frames run out or SECONDS pass. "persistent" reuses each connection;
 * "new" opens a connection per request, as pam_totpd does (connect is then part
 * of the latency).
 *
 * Why C and one epoll thread: on two cores a Python client would eat the CPU the
 * daemon needs; this costs a few microseconds per request.
 *
 * Prints one line of key=value: requests, ok (ACCEPTED), status.NAME for every
 * other reply status (CLOSED = the daemon closed without a reply), seconds,
 * per_second, p50_us, p99_us, max_us. Exit 0 even when some replies were not
 * ACCEPTED: the caller judges; exit 2 on a usage or system error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HEADER_SIZE 8
#define MAX_REPLY 65536
#define MAX_STATUSES 32
#define MAX_STATUS_LEN 33

struct conn {
    int fd;
    size_t frame;      /* index of the frame in flight */
    uint64_t started;  /* ns, CLOCK_MONOTONIC */
    size_t have;       /* bytes of the reply read so far */
    size_t need;       /* total bytes of the reply (header + payload), 0 = unknown */
    unsigned char buf[HEADER_SIZE + MAX_REPLY];
};

static struct {
    char name[MAX_STATUS_LEN];
    unsigned long count;
} statuses[MAX_STATUSES];
static int nstatuses;

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void count_status(const char *name)
{
    for (int i = 0; i < nstatuses; i++)
        if (strcmp(statuses[i].name, name) == 0) {
            statuses[i].count++;
            return;
        }
    if (nstatuses == MAX_STATUSES)
        name = "OTHER";
    snprintf(statuses[nstatuses].name, MAX_STATUS_LEN, "%s", name);
    statuses[nstatuses++].count = 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int open_conn(const struct sockaddr_un *addr, int epfd, struct conn *c)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    /* A blocking connect: a full backlog makes us wait as a real client would. */
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0)
        die("connect");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
    c->fd = fd;
    return fd;
}

static void close_conn(struct conn *c)
{
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: loadgen SOCKET FRAMES CONNECTIONS persistent|new SECONDS\n");
        return 2;
    }
    const char *path = argv[1];
    int nconns = atoi(argv[3]);
    int fresh = strcmp(argv[4], "new") == 0;
    double seconds = atof(argv[5]);
    if (nconns < 1 || (!fresh && strcmp(argv[4], "persistent") != 0) || seconds <= 0) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }

    /* Read the frames and index them. */
    int ffd = open(argv[2], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (ffd < 0 || fstat(ffd, &st) < 0)
        die(argv[2]);
    unsigned char *data = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (data && got < (size_t)st.st_size) {
        ssize_t n = read(ffd, data + got, (size_t)st.st_size - got);
        if (n <= 0)
            die("read frames");
        got += (size_t)n;
    }
    close(ffd);
    size_t nframes = 0, cap = 1024;
    size_t *offsets = malloc(cap * sizeof *offsets);
    for (size_t off = 0; off + HEADER_SIZE <= got;) {
        uint32_t len = (uint32_t)data[off + 4] << 24 | (uint32_t)data[off + 5] << 16 |
                       (uint32_t)data[off + 6] << 8 | data[off + 7];
        if (nframes == cap)
            offsets = realloc(offsets, (cap *= 2) * sizeof *offsets);
        offsets[nframes++] = off;
        off += HEADER_SIZE + len;
        if (off > got) {
            fprintf(stderr, "loadgen: %s: truncated frame %zu\n", argv[2], nframes);
            return 2;
        }
    }
    uint64_t *latency = malloc((nframes + 1) * sizeof *latency);
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!offsets || !latency || !conns)
        die("malloc");

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "loadgen: socket path too long\n");
        return 2;
    }
    strcpy(addr.sun_path, path);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");

    size_t next = 0, done = 0, ok = 0;
    int active = 0;
    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(seconds * 1e9);

    /* Send the next frame on c (opening a connection first in "new" mode). */
#define SEND_NEXT(c)                                                                   \
    do {                                                                               \
        if (next >= nframes || now_ns() >= deadline) {                                 \
            if ((c)->fd >= 0)                                                          \
                close_conn(c);                                                         \
            active--;                                                                  \
            break;                                                                     \
        }                                                                              \
        (c)->frame = next++;                                                           \
        (c)->started = now_ns();                                                       \
        if ((c)->fd < 0)                                                               \
            open_conn(&addr, epfd, (c));                                               \
        size_t flen = (next < nframes ? offsets[next] : got) - offsets[(c)->frame];    \
        ssize_t w = send((c)->fd, data + offsets[(c)->frame], flen, MSG_NOSIGNAL);     \
        if (w != (ssize_t)flen)                                                        \
            die("send (partial or failed)");                                           \
        (c)->have = 0;                                                                 \
        (c)->need = 0;                                                                 \
    } while (0)

    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        if (!fresh)
            open_conn(&addr, epfd, &conns[i]);
    }
    start = now_ns();
    deadline = start + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < nconns; i++) {
        active++;
        SEND_NEXT(&conns[i]);
    }

    struct epoll_event events[256];
    while (active > 0) {
        int n = epoll_wait(epfd, events, 256, 30000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        if (n == 0) {
            fprintf(stderr, "loadgen: no reply for 30 s\n");
            return 2;
        }
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            size_t want = c->need ? c->need - c->have : HEADER_SIZE - c->have;
            ssize_t r = recv(c->fd, c->buf + c->have, want, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) { /* closed (or reset) without a complete reply */
                latency[done++] = now_ns() - c->started;
                count_status("CLOSED");
                close_conn(c);
                SEND_NEXT(c);
                continue;
            }
            c->have += (size_t)r;
            if (!c->need && c->have == HEADER_SIZE) {
                uint32_t len = (uint32_t)c->buf[4] << 24 | (uint32_t)c->buf[5] << 16 |
                               (uint32_t)c->buf[6] << 8 | c->buf[7];
                if (memcmp(c->buf, "TD\x01\x00", 4) != 0 || len == 0 || len > MAX_REPLY) {
                    fprintf(stderr, "loadgen: malformed reply header\n");
                    return 2;
                }
                c->need = HEADER_SIZE + len;
            }
            if (!c->need || c->have < c->need)
                continue;
            latency[done++] = now_ns() - c->started;
            char status[MAX_STATUS_LEN];
            size_t i = 0;
            while (i < MAX_STATUS_LEN - 1 && HEADER_SIZE + i < c->need && c->buf[HEADER_SIZE + i] != '\n') {
                status[i] = (char)c->buf[HEADER_SIZE + i];
                i++;
            }
            status[i] = '\0';
            if (strcmp(status, "ACCEPTED") == 0)
                ok++;
            else
                count_status(status);
            if (fresh)
                close_conn(c);
            SEND_NEXT(c);
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;

    qsort(latency, done, sizeof *latency, cmp_u64);
    printf("requests=%zu ok=%zu", done, ok);
    for (int i = 0; i < nstatuses; i++)
        printf(" status.%s=%lu", statuses[i].name, statuses[i].count);
    printf(" seconds=%.3f per_second=%.1f", elapsed, done / elapsed);
    if (done) {
        size_t p99 = done * 99 / 100;
        printf(" p50_us=%.1f p99_us=%.1f max_us=%.1f", latency[done / 2] / 1e3,
               latency[p99 < done ? p99 : done - 1] / 1e3, latency[done - 1] / 1e3);
    }
    printf(" frames=%zu\n", nframes);
    return 0;
}
