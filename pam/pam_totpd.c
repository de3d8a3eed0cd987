/*
 * pam_totpd.c - the PAM module of totpd, a TOTP second factor.
 *
 * The module never sees a secret. It asks the totpd daemon whether the account
 * needs a code (`check`), prompts through the PAM conversation, sends the answer
 * (`verify`, on a new connection) and maps the daemon's status to a PAM return code. The wire format is
 * docs/protocol.md, version 1. Any doubt - daemon missing, socket or peer not
 * trusted, timeout, malformed reply - fails closed with PAM_AUTHINFO_UNAVAIL;
 * nothing here ever turns "no answer" into success.
 *
 * Read top to bottom: options -> connect & check peer -> ask -> converse ->
 * answer -> map reply -> cleanup (pam_sm_authenticate, at the end).
 *
 * No static mutable state: everything lives on the stack of one call, so the
 * module is safe in threaded applications and across pam_start/pam_end cycles.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define PAM_SM_AUTH
#include <security/pam_ext.h>
#include <security/pam_modules.h>

/* docs/protocol.md: framing and limits (same names as totpd/protocol.py). */
#define FRAME_MAGIC_0 0x54 /* 'T' */
#define FRAME_MAGIC_1 0x44 /* 'D' */
#define FRAME_VERSION 1
#define FRAME_HEADER_SIZE 8
#define MAX_REQUEST_PAYLOAD 4096
#define MAX_AUTH_REPLY_PAYLOAD 4096
#define MAX_VALUE 1024
#define MAX_MESSAGE 512
#define MAX_USER 256
#define MAX_TOKEN 32 /* a verb, status or key: [a-z_]{1,32} or [A-Z_]{1,32} */

/* This module's own limits and defaults (docs/pam.md). */
#define MAX_CODE 256 /* longest answer sent as `code` (TOTP or recovery code) */
#define MAX_REPLY_KEYS (MAX_AUTH_REPLY_PAYLOAD / 3) /* "k=\n" is the shortest line */
#define DEFAULT_SOCKET "/run/totpd/totpd.sock"
#define DEFAULT_TIMEOUT_S 5
#define MAX_TIMEOUT_S 300
#define DEFAULT_DAEMON_USER "totpd"
#define DEFAULT_PROMPT "Verification code: "
#define DEFAULT_FORWARD_PROMPT "Password & verification code: "
#define DEFAULT_DIGITS 6
#define CONNECT_RETRY_MS 10 /* pause before retrying a connect to a full backlog */
#define PWBUF_INITIAL 4096
#define PWBUF_MAX (1024 * 1024)

_Static_assert(MAX_AUTH_REPLY_PAYLOAD <= UINT16_MAX, "struct reply_key holds offsets in 16 bits");
_Static_assert(MAX_TOKEN <= UINT8_MAX, "struct reply_key holds key lengths in 8 bits");

#define UNAVAILABLE_TEXT \
    "The verification service is unavailable; try again later or contact your administrator."

/* ---------------------------------------------------------------- options */

struct options {
    const char *socket_path;
    const char *daemon_user;
    const char *prompt; /* NULL: the daemon's prompt, then DEFAULT_PROMPT */
    int timeout_ms;
    unsigned int digits;
    bool debug;
    bool forward_pass;
    bool try_first_pass;
    bool use_first_pass;
};

static const char *option_value(const char *arg, const char *name)
{
    size_t len = strlen(name);

    if (strncmp(arg, name, len) == 0 && arg[len] == '=')
        return arg + len + 1;
    return NULL;
}

static bool parse_uint(const char *text, long low, long high, long *out)
{
    char *end = NULL;
    long value;

    if (*text < '0' || *text > '9')
        return false;
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < low || value > high)
        return false;
    *out = value;
    return true;
}

static void parse_options(pam_handle_t *pamh, int argc, const char **argv,
                          struct options *opts)
{
    *opts = (struct options){
        .socket_path = DEFAULT_SOCKET,
        .daemon_user = DEFAULT_DAEMON_USER,
        .prompt = NULL,
        .timeout_ms = DEFAULT_TIMEOUT_S * 1000,
        .digits = DEFAULT_DIGITS,
    };

    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const char *value;
        long number;

        if (arg == NULL)
            continue;
        if ((value = option_value(arg, "socket")) != NULL) {
            opts->socket_path = value; /* checked where it is used */
        } else if ((value = option_value(arg, "timeout")) != NULL) {
            if (parse_uint(value, 1, MAX_TIMEOUT_S, &number))
                opts->timeout_ms = (int)number * 1000;
            else
                pam_syslog(pamh, LOG_ERR, "timeout=%s is not 1 to %d seconds; using %d",
                           value, MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S);
        } else if ((value = option_value(arg, "prompt")) != NULL) {
            opts->prompt = value;
        } else if ((value = option_value(arg, "daemon_user")) != NULL) {
            opts->daemon_user = value;
        } else if ((value = option_value(arg, "digits")) != NULL) {
            if (strcmp(value, "6") == 0 || strcmp(value, "8") == 0)
                opts->digits = (unsigned int)(value[0] - '0');
            else
                pam_syslog(pamh, LOG_ERR, "digits=%s is not 6 or 8; using %d", value,
                           DEFAULT_DIGITS);
        } else if (strcmp(arg, "debug") == 0) {
            opts->debug = true;
        } else if (strcmp(arg, "forward_pass") == 0) {
            opts->forward_pass = true;
        } else if (strcmp(arg, "try_first_pass") == 0) {
            opts->try_first_pass = true;
        } else if (strcmp(arg, "use_first_pass") == 0) {
            opts->use_first_pass = true;
        } else {
            pam_syslog(pamh, LOG_ERR, "unknown option '%s' ignored", arg);
        }
    }
}

/* ------------------------------------------------------------ text checks */

/*
 * Length of the UTF-8 character at s (n bytes available), or 0 when it is
 * invalid UTF-8 or a control character: C0 (0x00-0x1F), DEL, C1 (U+0080-U+009F).
 */
static size_t text_char_len(const unsigned char *s, size_t n)
{
    unsigned char lead = s[0];
    uint32_t cp;
    size_t len;

    if (lead < 0x80)
        return (lead < 0x20 || lead == 0x7f) ? 0 : 1;
    if (lead >= 0xc2 && lead <= 0xdf) {
        len = 2;
        cp = lead & 0x1f;
    } else if (lead >= 0xe0 && lead <= 0xef) {
        len = 3;
        cp = lead & 0x0f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        len = 4;
        cp = lead & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
        return 0;
    return len;
}

/* A protocol value: valid UTF-8 without control characters, at most max bytes. */
static bool valid_text(const void *text, size_t len, size_t max)
{
    const unsigned char *s = text;
    size_t pos = 0;

    if (len > max)
        return false;
    while (pos < len) {
        size_t step = text_char_len(s + pos, len - pos);

        if (step == 0)
            return false;
        pos += step;
    }
    return true;
}

static bool valid_item(const char *value, size_t max)
{
    return value == NULL || valid_text(value, strnlen(value, max + 1), max);
}

/* docs/protocol.md "Account names": 1-256 bytes, no control, no '/', not . or .. */
static bool valid_user(const char *user)
{
    size_t len = strnlen(user, MAX_USER + 1);

    return len > 0 && valid_text(user, len, MAX_USER) && strchr(user, '/') == NULL &&
           strcmp(user, ".") != 0 && strcmp(user, "..") != 0;
}

/* ------------------------------------------------------ connect & trust */

/* What one call knows: its options and whom it trusts at the other end. */
struct context {
    pam_handle_t *pamh;
    struct options opts;
    uid_t daemon_uid;
    bool daemon_uid_looked_up; /* daemon_user is resolved only when a uid other than 0 needs judging */
    bool daemon_uid_known;     /* false: daemon_user does not exist, only root is trusted */
    int fd;                    /* the connection of the current exchange; -1: none */
};

static void lookup_daemon_user(struct context *ctx)
{
    struct passwd pwd;
    struct passwd *found = NULL;
    size_t size = PWBUF_INITIAL;
    char *buf = NULL;
    int err;

    ctx->daemon_uid_looked_up = true;
    ctx->daemon_uid_known = false;
    for (;;) {
        char *bigger = realloc(buf, size);

        if (bigger == NULL)
            break;
        buf = bigger;
        err = getpwnam_r(ctx->opts.daemon_user, &pwd, buf, size, &found);
        if (err == ERANGE && size < PWBUF_MAX) {
            size *= 2;
            continue;
        }
        if (err == 0 && found != NULL) {
            ctx->daemon_uid = found->pw_uid;
            ctx->daemon_uid_known = true;
        }
        break;
    }
    free(buf);
    if (!ctx->daemon_uid_known && ctx->opts.debug)
        pam_syslog(ctx->pamh, LOG_DEBUG, "daemon_user '%s' not found; trusting only root",
                   ctx->opts.daemon_user);
}

/*
 * Root, or the daemon's own user. daemon_user is looked up (NSS, which can mean
 * files, systemd-userdb or a directory service) only when a uid other than root
 * must be judged: under systemd the socket and its listener are root's, and the
 * lookup would cost more than the rest of the exchange.
 */
static bool trusted_uid(struct context *ctx, uid_t uid)
{
    if (uid == 0)
        return true;
    if (!ctx->daemon_uid_looked_up)
        lookup_daemon_user(ctx);
    return ctx->daemon_uid_known && uid == ctx->daemon_uid;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline)
{
    int64_t left = deadline - now_ms();

    return left < 0 ? 0 : (int)left;
}

/* Wait until fd is ready for events or the deadline passes (errno ETIMEDOUT). */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        int left = remaining_ms(deadline);
        int rc;

        if (left == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        rc = poll(&pfd, 1, left);
        if (rc > 0)
            return 0;
        if (rc == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR)
            return -1;
    }
}

static int connect_with_deadline(int fd, const struct sockaddr_un *addr, int64_t deadline)
{
    for (;;) {
        int soerr = 0;
        socklen_t soerr_len = sizeof soerr;

        if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0 || errno == EISCONN)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) { /* listen backlog full: retry until the deadline */
            int left = remaining_ms(deadline);

            if (left == 0) {
                errno = ETIMEDOUT;
                return -1;
            }
            poll(NULL, 0, left < CONNECT_RETRY_MS ? left : CONNECT_RETRY_MS);
            continue;
        }
        if (errno != EINPROGRESS)
            return -1;
        if (wait_fd(fd, POLLOUT, deadline) != 0)
            return -1;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &soerr_len) != 0)
            return -1;
        if (soerr != 0) {
            errno = soerr;
            return -1;
        }
        return 0;
    }
}

/* Open a connection to the daemon, refusing a socket or peer we do not trust. */
static int connect_daemon(struct context *ctx, int64_t deadline, int *fd_out)
{
    pam_handle_t *pamh = ctx->pamh;
    const char *path = ctx->opts.socket_path;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t path_len = strlen(path);
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    struct stat st;
    int fd;

    *fd_out = -1;
    if (path[0] != '/' || path_len >= sizeof addr.sun_path) {
        pam_syslog(pamh, LOG_ERR, "socket=%s is not an absolute path shorter than %zu bytes",
                   path, sizeof addr.sun_path);
        return PAM_AUTHINFO_UNAVAIL;
    }
    memcpy(addr.sun_path, path, path_len + 1);

    if (lstat(path, &st) != 0) {
        pam_syslog(pamh, LOG_ERR, "cannot reach totpd at %s: %m (is totpd running?)", path);
        return PAM_AUTHINFO_UNAVAIL;
    }
    if (!S_ISSOCK(st.st_mode)) {
        pam_syslog(pamh, LOG_ERR, "%s is not a socket; refusing it", path);
        return PAM_AUTHINFO_UNAVAIL;
    }
    if (!trusted_uid(ctx, st.st_uid)) {
        pam_syslog(pamh, LOG_ERR, "%s is owned by uid %u, not root or %s; refusing it", path,
                   (unsigned int)st.st_uid, ctx->opts.daemon_user);
        return PAM_AUTHINFO_UNAVAIL;
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        pam_syslog(pamh, LOG_ERR, "socket(AF_UNIX): %m");
        return PAM_AUTHINFO_UNAVAIL;
    }
    if (connect_with_deadline(fd, &addr, deadline) != 0) {
        pam_syslog(pamh, LOG_ERR, "cannot connect to totpd at %s: %m", path);
        close(fd);
        return PAM_AUTHINFO_UNAVAIL;
    }
    /* The lstat above can race with a swapped socket; the peer's credentials cannot. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0 ||
        peer_len != sizeof peer) {
        pam_syslog(pamh, LOG_ERR, "cannot read the credentials of the peer at %s: %m", path);
        close(fd);
        return PAM_AUTHINFO_UNAVAIL;
    }
    if (!trusted_uid(ctx, peer.uid)) {
        pam_syslog(pamh, LOG_ERR, "peer at %s runs as uid %u, not root or %s; refusing it",
                   path, (unsigned int)peer.uid, ctx->opts.daemon_user);
        close(fd);
        return PAM_AUTHINFO_UNAVAIL;
    }
    *fd_out = fd;
    return PAM_SUCCESS;
}

/* -------------------------------------------------------------- framing */

/* One request frame; it may hold the code, so it is wiped by the caller. */
struct request {
    unsigned char frame[FRAME_HEADER_SIZE + MAX_REQUEST_PAYLOAD];
    size_t len; /* bytes used in frame, header included */
    bool overflow;
};

static void request_append(struct request *req, const char *bytes, size_t len)
{
    if (req->overflow || len > sizeof req->frame - req->len) {
        req->overflow = true;
        return;
    }
    memcpy(req->frame + req->len, bytes, len);
    req->len += len;
}

static void request_start(struct request *req, const char *verb)
{
    req->len = FRAME_HEADER_SIZE;
    req->overflow = false;
    request_append(req, verb, strlen(verb));
    request_append(req, "\n", 1);
}

/* Append key=value; an absent or empty optional item is left out. */
static void request_add(struct request *req, const char *key, const char *value)
{
    if (value == NULL || value[0] == '\0')
        return;
    request_append(req, key, strlen(key));
    request_append(req, "=", 1);
    request_append(req, value, strlen(value));
    request_append(req, "\n", 1);
}

/* Write the header; false if the payload outgrew MAX_REQUEST_PAYLOAD. */
static bool request_finish(struct request *req)
{
    size_t payload = req->len - FRAME_HEADER_SIZE;

    if (req->overflow || payload == 0 || payload > MAX_REQUEST_PAYLOAD)
        return false;
    req->frame[0] = FRAME_MAGIC_0;
    req->frame[1] = FRAME_MAGIC_1;
    req->frame[2] = FRAME_VERSION;
    req->frame[3] = 0;
    req->frame[4] = (unsigned char)(payload >> 24);
    req->frame[5] = (unsigned char)(payload >> 16);
    req->frame[6] = (unsigned char)(payload >> 8);
    req->frame[7] = (unsigned char)payload;
    return true;
}

static int send_all(int fd, const unsigned char *buf, size_t len, int64_t deadline)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = send(fd, buf + done, len - done, MSG_NOSIGNAL);

        if (n > 0) {
            done += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline) != 0)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Read exactly len bytes by the deadline. */
static int recv_exact(int fd, unsigned char *buf, size_t len, int64_t deadline)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = recv(fd, buf + done, len - done, 0);

        if (n > 0) {
            done += (size_t)n;
        } else if (n == 0) {
            errno = ECONNRESET; /* closed before a whole frame arrived */
            return -1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_fd(fd, POLLIN, deadline) != 0)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* ----------------------------------------------------------------- reply */

struct reply {
    char status[MAX_TOKEN + 1];
    char message[MAX_MESSAGE + 1];
    char prompt[MAX_MESSAGE + 1];
    bool has_message;
    bool has_prompt;
};

/* A key already seen in a reply: offset and length within the payload. */
struct reply_key {
    uint16_t offset;
    uint8_t len;
};

static bool token_chars(const unsigned char *s, size_t len, char low, char high)
{
    if (len == 0 || len > MAX_TOKEN)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] != '_' && (s[i] < (unsigned char)low || s[i] > (unsigned char)high))
            return false;
    return true;
}

static bool key_is(const unsigned char *key, size_t len, const char *name)
{
    return len == strlen(name) && memcmp(key, name, len) == 0;
}

/*
 * Parse a reply payload strictly: a status line [A-Z_]{1,32}, then key=value
 * lines, each LF-terminated, keys [a-z_]{1,32} at most once each, values valid
 * UTF-8 without control characters. Unknown keys are checked and ignored.
 */
static bool parse_reply(const unsigned char *payload, size_t len, struct reply *out)
{
    struct reply_key seen[MAX_REPLY_KEYS];
    size_t nseen = 0;
    const unsigned char *line_end;
    size_t pos;

    memset(out, 0, sizeof *out);
    if (len == 0 || len > MAX_AUTH_REPLY_PAYLOAD || payload[len - 1] != '\n')
        return false;

    line_end = memchr(payload, '\n', len);
    if (!token_chars(payload, (size_t)(line_end - payload), 'A', 'Z'))
        return false;
    memcpy(out->status, payload, (size_t)(line_end - payload));
    pos = (size_t)(line_end - payload) + 1;

    while (pos < len) {
        const unsigned char *line = payload + pos;
        const unsigned char *eq;
        const unsigned char *value;
        size_t line_len, key_len, value_len;

        line_end = memchr(line, '\n', len - pos); /* found: the payload ends with LF */
        line_len = (size_t)(line_end - line);
        eq = memchr(line, '=', line_len);
        if (eq == NULL)
            return false;
        key_len = (size_t)(eq - line);
        if (!token_chars(line, key_len, 'a', 'z'))
            return false;
        for (size_t i = 0; i < nseen; i++)
            if (seen[i].len == key_len && memcmp(payload + seen[i].offset, line, key_len) == 0)
                return false;
        if (nseen == MAX_REPLY_KEYS)
            return false;
        seen[nseen++] = (struct reply_key){.offset = (uint16_t)pos, .len = (uint8_t)key_len};

        value = eq + 1;
        value_len = line_len - key_len - 1;
        if (!valid_text(value, value_len, MAX_AUTH_REPLY_PAYLOAD))
            return false;
        if (key_is(line, key_len, "message")) {
            if (value_len > MAX_MESSAGE)
                return false;
            memcpy(out->message, value, value_len);
            out->has_message = true;
        } else if (key_is(line, key_len, "prompt")) {
            if (value_len > MAX_MESSAGE)
                return false;
            memcpy(out->prompt, value, value_len);
            out->has_prompt = true;
        }
        pos += line_len + 1;
    }
    return true;
}

static void drop_connection(struct context *ctx)
{
    if (ctx->fd >= 0)
        close(ctx->fd);
    ctx->fd = -1;
}

/* One exchange on a new connection (connect & check peer), all within opts.timeout_ms. */
static int exchange(struct context *ctx, const struct request *req, struct reply *reply)
{
    pam_handle_t *pamh = ctx->pamh;
    int64_t deadline = now_ms() + ctx->opts.timeout_ms;
    unsigned char header[FRAME_HEADER_SIZE];
    unsigned char payload[MAX_AUTH_REPLY_PAYLOAD];
    uint32_t length;
    int ret;

    ret = connect_daemon(ctx, deadline, &ctx->fd);
    if (ret != PAM_SUCCESS)
        return ret;
    ret = PAM_AUTHINFO_UNAVAIL;
    if (send_all(ctx->fd, req->frame, req->len, deadline) != 0) {
        pam_syslog(pamh, LOG_ERR, "cannot send to totpd at %s: %m", ctx->opts.socket_path);
        goto out;
    }
    if (recv_exact(ctx->fd, header, sizeof header, deadline) != 0) {
        pam_syslog(pamh, LOG_ERR, "no reply from totpd at %s: %m", ctx->opts.socket_path);
        goto out;
    }
    length = (uint32_t)header[4] << 24 | (uint32_t)header[5] << 16 |
             (uint32_t)header[6] << 8 | (uint32_t)header[7];
    if (header[0] != FRAME_MAGIC_0 || header[1] != FRAME_MAGIC_1 ||
        header[2] != FRAME_VERSION || header[3] != 0 || length == 0 ||
        length > MAX_AUTH_REPLY_PAYLOAD) {
        pam_syslog(pamh, LOG_ERR, "malformed reply header from totpd at %s",
                   ctx->opts.socket_path);
        goto out;
    }
    if (recv_exact(ctx->fd, payload, length, deadline) != 0) {
        pam_syslog(pamh, LOG_ERR, "incomplete reply from totpd at %s: %m",
                   ctx->opts.socket_path);
        goto out;
    }
    if (!parse_reply(payload, length, reply)) {
        pam_syslog(pamh, LOG_ERR, "malformed reply payload from totpd at %s",
                   ctx->opts.socket_path);
        goto out;
    }
    ret = PAM_SUCCESS;
out:
    drop_connection(ctx);
    return ret;
}

/* ------------------------------------------------------ map & messages */

static const struct {
    const char *status;
    int pam_code;
} status_map[] = {
    {"ACCEPTED", PAM_SUCCESS},     {"IGNORE", PAM_IGNORE},
    {"REJECTED", PAM_AUTH_ERR},    {"DENIED", PAM_AUTH_ERR},
    {"LOCKED", PAM_MAXTRIES},      {"UNKNOWN_USER", PAM_USER_UNKNOWN},
};

/* docs/protocol.md "Statuses": anything not listed fails closed. */
static int map_status(const char *status)
{
    for (size_t i = 0; i < sizeof status_map / sizeof status_map[0]; i++)
        if (strcmp(status, status_map[i].status) == 0)
            return status_map[i].pam_code;
    return PAM_AUTHINFO_UNAVAIL;
}

/* Refusals go out as PAM_ERROR_MSG (always); anything else as PAM_TEXT_INFO. */
static void show_message(const struct context *ctx, int flags, const struct reply *reply,
                         bool refusal)
{
    if (!reply->has_message || reply->message[0] == '\0')
        return;
    if (refusal)
        pam_error(ctx->pamh, "%s", reply->message);
    else if (!(flags & PAM_SILENT))
        pam_info(ctx->pamh, "%s", reply->message);
}

/* Map a final reply (anything but NEED_CODE) and show its message. */
static int finish_reply(const struct context *ctx, int flags, const char *verb,
                        const struct reply *reply)
{
    int ret = strcmp(reply->status, "NEED_CODE") == 0 ? PAM_AUTHINFO_UNAVAIL
                                                       : map_status(reply->status);
    bool refusal = ret != PAM_SUCCESS && ret != PAM_IGNORE;

    if (ctx->opts.debug || ret == PAM_AUTHINFO_UNAVAIL)
        pam_syslog(ctx->pamh, ret == PAM_AUTHINFO_UNAVAIL ? LOG_ERR : LOG_DEBUG,
                   "%s: totpd answered %s -> %s", verb, reply->status,
                   pam_strerror(ctx->pamh, ret));
    if (ret == PAM_AUTHINFO_UNAVAIL && !reply->has_message)
        pam_error(ctx->pamh, "%s", UNAVAILABLE_TEXT);
    else
        show_message(ctx, flags, reply, refusal);
    return ret;
}

/* ------------------------------------------------------------- converse */

/*
 * Get what the person typed, as a string this call owns (wiped and freed by
 * the caller): from PAM_AUTHTOK with try_first_pass/use_first_pass, else from
 * one PAM_PROMPT_ECHO_OFF prompt.
 */
static int get_answer(const struct context *ctx, const struct reply *check_reply,
                      char **answer)
{
    const struct options *opts = &ctx->opts;
    const char *prompt;
    char *response = NULL;
    int ret;

    *answer = NULL;
    if (opts->try_first_pass || opts->use_first_pass) {
        const void *item = NULL;

        ret = pam_get_item(ctx->pamh, PAM_AUTHTOK, &item);
        if (ret == PAM_SUCCESS && item != NULL && ((const char *)item)[0] != '\0') {
            *answer = strdup(item);
            return *answer != NULL ? PAM_SUCCESS : PAM_BUF_ERR;
        }
        if (opts->use_first_pass) {
            pam_syslog(ctx->pamh, LOG_ERR, "use_first_pass: no password from an earlier module");
            return PAM_AUTH_ERR;
        }
    }

    if (opts->prompt != NULL)
        prompt = opts->prompt;
    else if (opts->forward_pass)
        prompt = DEFAULT_FORWARD_PROMPT;
    else if (check_reply->has_prompt && check_reply->prompt[0] != '\0')
        prompt = check_reply->prompt;
    else
        prompt = DEFAULT_PROMPT;

    ret = pam_prompt(ctx->pamh, PAM_PROMPT_ECHO_OFF, &response, "%s", prompt);
    if (ret != PAM_SUCCESS) {
        if (response != NULL) {
            explicit_bzero(response, strlen(response));
            free(response);
        }
        pam_syslog(ctx->pamh, LOG_ERR, "conversation failed: %s", pam_strerror(ctx->pamh, ret));
        return ret == PAM_CONV_AGAIN ? PAM_INCOMPLETE : PAM_CONV_ERR;
    }
    if (response == NULL)
        return PAM_CONV_ERR;
    *answer = response;
    return PAM_SUCCESS;
}

/*
 * Split the answer into the code (into code[MAX_CODE + 1]) and, with
 * forward_pass, the password in front of it, set as PAM_AUTHTOK for the next
 * module. An empty or unsendable code is PAM_AUTH_ERR without asking the daemon.
 */
static int take_code(const struct context *ctx, char *answer, char *code)
{
    size_t len = strnlen(answer, MAX_CODE + 1);
    const char *start = answer;
    size_t code_len = len;
    int ret;

    if (ctx->opts.forward_pass) {
        size_t digits = ctx->opts.digits;

        len = strlen(answer);
        if (len < digits) {
            pam_syslog(ctx->pamh, LOG_NOTICE, "forward_pass: answer is shorter than the code");
            return PAM_AUTH_ERR;
        }
        start = answer + len - digits;
        code_len = digits;
        for (size_t i = 0; i < digits; i++)
            if (start[i] < '0' || start[i] > '9') {
                pam_syslog(ctx->pamh, LOG_NOTICE, "forward_pass: answer does not end in %zu digits",
                           digits);
                return PAM_AUTH_ERR;
            }
    }
    if (code_len == 0) {
        if (ctx->opts.debug)
            pam_syslog(ctx->pamh, LOG_DEBUG, "empty code; refused without asking totpd");
        return PAM_AUTH_ERR;
    }
    if (!valid_text(start, code_len, MAX_CODE)) {
        pam_syslog(ctx->pamh, LOG_NOTICE, "code too long or holds a control character; refused");
        return PAM_AUTH_ERR;
    }
    memcpy(code, start, code_len);
    code[code_len] = '\0';

    if (ctx->opts.forward_pass) {
        answer[len - code_len] = '\0'; /* answer now holds only the password */
        ret = pam_set_item(ctx->pamh, PAM_AUTHTOK, answer);
        if (ret != PAM_SUCCESS) {
            pam_syslog(ctx->pamh, LOG_ERR, "forward_pass: cannot set PAM_AUTHTOK: %s",
                       pam_strerror(ctx->pamh, ret));
            return ret;
        }
    }
    return PAM_SUCCESS;
}

/* ---------------------------------------------------------------- entry */

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct context ctx = {.pamh = pamh, .fd = -1};
    struct request req;
    struct reply reply;
    char code[MAX_CODE + 1];
    char *answer = NULL;
    size_t answer_size = 0; /* take_code cuts answer short: wipe all of it */
    const char *user = NULL;
    const void *service = NULL, *rhost = NULL, *tty = NULL;
    int ret;

    memset(&req, 0, sizeof req);
    memset(&reply, 0, sizeof reply);
    memset(code, 0, sizeof code);

    /* options */
    parse_options(pamh, argc, argv, &ctx.opts);

    ret = pam_get_user(pamh, &user, NULL);
    if (ret != PAM_SUCCESS) {
        pam_syslog(pamh, LOG_ERR, "cannot get the user name: %s", pam_strerror(pamh, ret));
        goto cleanup;
    }
    if (user == NULL || !valid_user(user)) {
        pam_syslog(pamh, LOG_NOTICE, "user name is empty, too long or not a valid name");
        ret = PAM_USER_UNKNOWN;
        goto cleanup;
    }
    if (pam_get_item(pamh, PAM_SERVICE, &service) != PAM_SUCCESS)
        service = NULL;
    if (pam_get_item(pamh, PAM_RHOST, &rhost) != PAM_SUCCESS)
        rhost = NULL;
    if (pam_get_item(pamh, PAM_TTY, &tty) != PAM_SUCCESS)
        tty = NULL;
    if (!valid_item(service, MAX_VALUE) || !valid_item(rhost, MAX_VALUE) ||
        !valid_item(tty, MAX_VALUE)) {
        pam_syslog(pamh, LOG_ERR, "PAM_SERVICE, PAM_RHOST or PAM_TTY is too long or holds "
                                  "a control character; cannot ask totpd");
        ret = PAM_AUTHINFO_UNAVAIL;
        goto cleanup;
    }

    /* ask: does this account need a code here? */
    request_start(&req, "check");
    request_add(&req, "user", user);
    request_add(&req, "service", service);
    request_add(&req, "rhost", rhost);
    request_add(&req, "tty", tty);
    if (!request_finish(&req)) {
        pam_syslog(pamh, LOG_ERR, "check request over %d bytes", MAX_REQUEST_PAYLOAD);
        ret = PAM_AUTHINFO_UNAVAIL;
        goto cleanup;
    }
    ret = exchange(&ctx, &req, &reply);
    if (ret != PAM_SUCCESS) {
        pam_error(pamh, "%s", UNAVAILABLE_TEXT);
        goto cleanup;
    }
    if (ctx.opts.debug)
        pam_syslog(pamh, LOG_DEBUG, "check user=%s: totpd answered %s", user, reply.status);
    if (strcmp(reply.status, "NEED_CODE") != 0) {
        ret = finish_reply(&ctx, flags, "check", &reply);
        goto cleanup;
    }
    show_message(&ctx, flags, &reply, false);

    /* converse */
    ret = get_answer(&ctx, &reply, &answer);
    if (ret != PAM_SUCCESS)
        goto cleanup;
    answer_size = strlen(answer);
    ret = take_code(&ctx, answer, code);
    if (ret != PAM_SUCCESS)
        goto cleanup;

    /* answer */
    request_start(&req, "verify");
    request_add(&req, "user", user);
    request_add(&req, "service", service);
    request_add(&req, "rhost", rhost);
    request_add(&req, "tty", tty);
    request_add(&req, "code", code);
    if (!request_finish(&req)) {
        pam_syslog(pamh, LOG_ERR, "verify request over %d bytes", MAX_REQUEST_PAYLOAD);
        ret = PAM_AUTHINFO_UNAVAIL;
        goto cleanup;
    }
    memset(&reply, 0, sizeof reply);
    ret = exchange(&ctx, &req, &reply);
    if (ret != PAM_SUCCESS) {
        pam_error(pamh, "%s", UNAVAILABLE_TEXT);
        goto cleanup;
    }

    /* map reply */
    ret = finish_reply(&ctx, flags, "verify", &reply);

cleanup:
    drop_connection(&ctx);
    explicit_bzero(code, sizeof code);
    explicit_bzero(&req, sizeof req);
    if (answer != NULL) {
        explicit_bzero(answer, answer_size);
        free(answer);
    }
    if (ctx.opts.debug)
        pam_syslog(pamh, LOG_DEBUG, "returning %s", pam_strerror(pamh, ret));
    return ret;
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh;
    (void)flags;
    (void)argc;
    (void)argv;
    return PAM_SUCCESS;
}
