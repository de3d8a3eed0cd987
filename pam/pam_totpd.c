/*
 * pam_totpd.c - the PAM module of totpd, a TOTP second factor.
 *
 * The module never sees a secret. It asks the totpd daemon whether the account
 * needs a code (`check`), prompts through the PAM conversation, sends the answer
 * (`verify`, on a new connection) and maps the daemon's status to a PAM return
 * code. The bytes on the wire are wire.c's (docs/protocol.md, version 1). Any
 * doubt - daemon missing, socket or peer not trusted, timeout, malformed reply -
 * fails closed with PAM_AUTHINFO_UNAVAIL; nothing turns "no answer" into success.
 *
 * Read top to bottom: options -> connect & check peer -> ask -> converse ->
 * answer -> map reply -> cleanup (pam_sm_authenticate, at the end). Everything
 * lives on the stack of one call: no static mutable state.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define PAM_SM_AUTH
#include <security/pam_ext.h>
#include <security/pam_modules.h>

#include "wire.h"

/* This module's own limits and defaults (docs/pam.md). */
#define MAX_CODE 256 /* longest answer sent as `code` (TOTP or recovery code) */
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

#define UNAVAILABLE_TEXT \
    "The verification service is unavailable; try again later or contact your administrator."

/* ---------------------------------------------------------------- options */

struct options {
    const char *socket_path;
    const char *daemon_user;
    const char *prompt; /* NULL: DEFAULT_PROMPT, or DEFAULT_FORWARD_PROMPT with forward_pass */
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

    return strncmp(arg, name, len) == 0 && arg[len] == '=' ? arg + len + 1 : NULL;
}

static void parse_options(pam_handle_t *pamh, int argc, const char **argv, struct options *opts)
{
    *opts = (struct options){
        .socket_path = DEFAULT_SOCKET,
        .daemon_user = DEFAULT_DAEMON_USER,
        .timeout_ms = DEFAULT_TIMEOUT_S * 1000,
        .digits = DEFAULT_DIGITS,
    };
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i], *value;

        if (arg == NULL)
            continue;
        if ((value = option_value(arg, "socket")) != NULL) {
            opts->socket_path = value; /* checked where it is used */
        } else if ((value = option_value(arg, "timeout")) != NULL) {
            char *end = NULL;
            long seconds = value[0] >= '0' && value[0] <= '9' ? strtol(value, &end, 10) : 0;

            if (end != NULL && *end == '\0' && seconds >= 1 && seconds <= MAX_TIMEOUT_S)
                opts->timeout_ms = (int)seconds * 1000;
            else
                pam_syslog(pamh, LOG_ERR, "timeout=%s is not 1 to %d seconds; using %d", value,
                           MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S);
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

/* What one call knows: its options, the login it asks about, whom it trusts. */
struct context {
    pam_handle_t *pamh;
    struct options opts;
    const char *user, *service, *rhost, *tty; /* service, rhost, tty: NULL if unset */
    uid_t daemon_uid;
    bool daemon_uid_looked_up; /* daemon_user is resolved only when a uid other than 0 needs judging */
    bool daemon_uid_known;     /* false: daemon_user does not exist, only root is trusted */
};

/* ------------------------------------------------------ connect & check peer */

/*
 * Root, or the daemon's own user. daemon_user is looked up (NSS: files,
 * systemd-userdb or a directory service) only when a uid other than root must
 * be judged: under systemd the socket and its listener are root's, and the
 * lookup would cost more than the rest of the exchange.
 */
static bool trusted_uid(struct context *ctx, uid_t uid)
{
    struct passwd pwd, *found = NULL;
    char *buf = NULL;
    int err = ERANGE;

    if (uid == 0 || ctx->daemon_uid_looked_up)
        return uid == 0 || (ctx->daemon_uid_known && uid == ctx->daemon_uid);
    ctx->daemon_uid_looked_up = true;
    for (size_t size = PWBUF_INITIAL; err == ERANGE && size <= PWBUF_MAX; size *= 2) {
        char *bigger = realloc(buf, size);

        if (bigger == NULL)
            break;
        buf = bigger;
        err = getpwnam_r(ctx->opts.daemon_user, &pwd, buf, size, &found);
    }
    if (err == 0 && found != NULL) {
        ctx->daemon_uid = found->pw_uid;
        ctx->daemon_uid_known = true;
    } else if (ctx->opts.debug) {
        pam_syslog(ctx->pamh, LOG_DEBUG, "daemon_user '%s' not found; trusting only root",
                   ctx->opts.daemon_user);
    }
    free(buf);
    return ctx->daemon_uid_known && uid == ctx->daemon_uid;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for events or the deadline passes (errno ETIMEDOUT). */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        int64_t left = deadline - now_ms();
        int rc = left > 0 ? poll(&pfd, 1, (int)left) : 0;

        if (rc > 0)
            return 0;
        if (rc == 0)
            errno = ETIMEDOUT;
        if (rc == 0 || errno != EINTR)
            return -1;
    }
}

/*
 * A non-blocking AF_UNIX connect completes at once or, with the daemon's listen
 * backlog full, fails with EAGAIN: then it is retried until the deadline.
 */
static int connect_by(int fd, const struct sockaddr_un *addr, int64_t deadline)
{
    while (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
        int64_t left = deadline - now_ms();

        if (errno != EAGAIN)
            return -1;
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        poll(NULL, 0, left < CONNECT_RETRY_MS ? (int)left : CONNECT_RETRY_MS);
    }
    return 0;
}

/*
 * A socket descriptor above 2 (SSSD's make_safe_fd): with a standard descriptor
 * closed, the application's own reads and writes of it would reach the daemon.
 */
static int safe_socket(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd >= 0 && fd <= STDERR_FILENO) {
        int moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
        int saved = errno;

        close(fd);
        errno = saved;
        fd = moved;
    }
    return fd;
}

/* A connection to the daemon, or -1 (logged) for a socket or peer we do not trust. */
static int connect_daemon(struct context *ctx, int64_t deadline)
{
    pam_handle_t *pamh = ctx->pamh;
    const char *path = ctx->opts.socket_path;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    struct stat st;
    int fd;

    if (path[0] != '/' || strlen(path) >= sizeof addr.sun_path) {
        pam_syslog(pamh, LOG_ERR, "socket=%s is not an absolute path shorter than %zu bytes",
                   path, sizeof addr.sun_path);
        return -1;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    if (lstat(path, &st) != 0) {
        pam_syslog(pamh, LOG_ERR, "cannot reach totpd at %s: %m (is totpd running?)", path);
        return -1;
    }
    if (!S_ISSOCK(st.st_mode) || !trusted_uid(ctx, st.st_uid)) {
        pam_syslog(pamh, LOG_ERR, "%s is not a socket owned by root or %s (uid %u); refusing it",
                   path, ctx->opts.daemon_user, (unsigned int)st.st_uid);
        return -1;
    }
    fd = safe_socket();
    if (fd < 0) {
        pam_syslog(pamh, LOG_ERR, "socket(AF_UNIX): %m");
        return -1;
    }
    if (connect_by(fd, &addr, deadline) != 0) {
        pam_syslog(pamh, LOG_ERR, "cannot connect to totpd at %s: %m", path);
        close(fd);
        return -1;
    }
    /* The lstat above can race with a swapped socket; the peer's credentials cannot. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0 || peer_len != sizeof peer)
        peer.uid = (uid_t)-1;
    if (!trusted_uid(ctx, peer.uid)) {
        pam_syslog(pamh, LOG_ERR, "peer at %s runs as uid %d, not root or %s; refusing it", path,
                   (int)peer.uid, ctx->opts.daemon_user);
        close(fd);
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------- ask */

/* Send or receive exactly len bytes by the deadline; a close before that is ECONNRESET. */
static int transfer(int fd, unsigned char *buf, size_t len, bool sending, int64_t deadline)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = sending ? send(fd, buf + done, len - done, MSG_NOSIGNAL)
                            : recv(fd, buf + done, len - done, 0);

        if (n > 0) {
            done += (size_t)n;
        } else if (n == 0) {
            errno = ECONNRESET;
            return -1;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_fd(fd, sending ? POLLOUT : POLLIN, deadline) != 0)
                return -1;
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

/*
 * The request and its reply on fd, by the deadline; NULL, or what went wrong.
 * With lines (enrollment at login), a reply of up to MAX_ENROLL_REPLY_PAYLOAD and
 * its lines are read; the payload, which may hold a secret, is wiped.
 */
static const char *talk(int fd, struct wire_request *req, struct wire_reply *reply,
                        struct wire_lines *lines, int64_t deadline)
{
    unsigned char header[FRAME_HEADER_SIZE];
    unsigned char payload[MAX_ENROLL_REPLY_PAYLOAD];
    size_t limit = lines != NULL ? MAX_ENROLL_REPLY_PAYLOAD : MAX_AUTH_REPLY_PAYLOAD;
    const char *fault = NULL;
    size_t len = 0;

    if (transfer(fd, req->frame, req->len, true, deadline) != 0)
        return "cannot send to";
    if (transfer(fd, header, sizeof header, false, deadline) != 0)
        return "no reply from";
    errno = EBADMSG; /* what %m says of a malformed reply */
    if (!wire_parse_header_limit(header, limit, &len))
        return "malformed reply header from";
    if (transfer(fd, payload, len, false, deadline) != 0) {
        fault = "incomplete reply from";
    } else {
        errno = EBADMSG;
        if (!wire_parse_reply_lines(payload, len, limit, reply, lines))
            fault = "malformed reply payload from";
    }
    explicit_bzero(payload, len);
    return fault;
}

/* The questions the module asks: verbs of docs/protocol.md. */
enum verb { CHECK, VERIFY, LOGIN_ENROLL, LOGIN_CONFIRM, VERBS };

static const char *const verb_names[VERBS] = {
    [CHECK] = "check",
    [VERIFY] = "verify",
    [LOGIN_ENROLL] = "login_enroll",
    [LOGIN_CONFIRM] = "login_confirm",
};

/*
 * Ask one question (check, or verify with the code) on a new connection, all
 * within opts.timeout_ms; the request frame holding the code is wiped. `lines`:
 * NULL, or where an enrollment verb's lines go.
 */
static int ask_lines(struct context *ctx, enum verb verb, const char *code,
                     struct wire_reply *reply, struct wire_lines *lines)
{
    const struct wire_field fields[] = {
        {"user", ctx->user}, {"service", ctx->service}, {"rhost", ctx->rhost},
        {"tty", ctx->tty},   {"code", code},
    };
    int64_t deadline = now_ms() + ctx->opts.timeout_ms;
    struct wire_request req;
    const char *fault = "cannot connect to";
    int fd;

    if (!wire_build_request(&req, verb_names[verb], fields, sizeof fields / sizeof fields[0])) {
        pam_syslog(ctx->pamh, LOG_ERR, "PAM_SERVICE, PAM_RHOST or PAM_TTY is over %d bytes or "
                   "holds a control character; nothing sent to totpd", MAX_VALUE);
        return PAM_AUTHINFO_UNAVAIL;
    }
    fd = connect_daemon(ctx, deadline); /* which logs why it refused */
    if (fd >= 0) {
        fault = talk(fd, &req, reply, lines, deadline);
        if (fault != NULL)
            pam_syslog(ctx->pamh, LOG_ERR, "%s: %s totpd at %s: %m", verb_names[verb], fault,
                       ctx->opts.socket_path);
        close(fd);
    }
    explicit_bzero(&req, sizeof req);
    if (fault != NULL) {
        pam_error(ctx->pamh, "%s", UNAVAILABLE_TEXT);
        return PAM_AUTHINFO_UNAVAIL;
    }
    if (ctx->opts.debug)
        pam_syslog(ctx->pamh, LOG_DEBUG, "%s user=%s: totpd answered %s", verb_names[verb],
                   ctx->user, reply->status);
    return PAM_SUCCESS;
}

static int ask(struct context *ctx, enum verb verb, const char *code, struct wire_reply *reply)
{
    return ask_lines(ctx, verb, code, reply, NULL);
}

/* ------------------------------------------------------------- converse */

/* pam_prompt's outcome: PAM_SUCCESS with *answer set, or the conversation's failure
 * (logged) with nothing left in *answer. */
static int prompted(const struct context *ctx, int ret, char **answer)
{
    if (ret == PAM_SUCCESS && *answer != NULL)
        return PAM_SUCCESS;
    if (*answer != NULL) {
        explicit_bzero(*answer, strlen(*answer));
        free(*answer);
        *answer = NULL;
    }
    pam_syslog(ctx->pamh, LOG_ERR, "conversation failed: %s", pam_strerror(ctx->pamh, ret));
    return ret == PAM_CONV_AGAIN ? PAM_INCOMPLETE : PAM_CONV_ERR;
}

/*
 * What the person typed, as a string the caller wipes and frees: from
 * PAM_AUTHTOK with try_first_pass/use_first_pass, else from one
 * PAM_PROMPT_ECHO_OFF prompt. The module owns the prompt's text: only it knows
 * whether it asks for a code or (forward_pass) a password and a code.
 */
static int get_answer(const struct context *ctx, char **answer)
{
    const struct options *opts = &ctx->opts;
    const char *prompt = opts->prompt != NULL ? opts->prompt
                         : opts->forward_pass ? DEFAULT_FORWARD_PROMPT
                                              : DEFAULT_PROMPT;
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
    ret = pam_prompt(ctx->pamh, PAM_PROMPT_ECHO_OFF, answer, "%s", prompt);
    return prompted(ctx, ret, answer);
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
        len = strlen(answer);
        code_len = ctx->opts.digits;
        start = len >= code_len ? answer + len - code_len : answer;
        if (len < code_len || strspn(start, "0123456789") != code_len) {
            pam_syslog(ctx->pamh, LOG_NOTICE, "forward_pass: answer does not end in %zu digits",
                       code_len);
            return PAM_AUTH_ERR;
        }
    }
    if (code_len == 0) {
        if (ctx->opts.debug)
            pam_syslog(ctx->pamh, LOG_DEBUG, "empty code; refused without asking totpd");
        return PAM_AUTH_ERR;
    }
    if (!wire_valid_text(start, code_len, MAX_CODE)) {
        pam_syslog(ctx->pamh, LOG_NOTICE, "code too long or holds a control character; refused");
        return PAM_AUTH_ERR;
    }
    memcpy(code, start, code_len);
    code[code_len] = '\0';
    if (!ctx->opts.forward_pass)
        return PAM_SUCCESS;
    answer[len - code_len] = '\0'; /* answer now holds only the password */
    ret = pam_set_item(ctx->pamh, PAM_AUTHTOK, answer);
    if (ret != PAM_SUCCESS)
        pam_syslog(ctx->pamh, LOG_ERR, "forward_pass: cannot set PAM_AUTHTOK: %s",
                   pam_strerror(ctx->pamh, ret));
    return ret;
}

/* ------------------------------------------------------------ map reply */

/* What a reply to one verb leads to. */
enum next {
    END,         /* the conversation ends with the status's PAM code, its message shown */
    GO_ON,       /* the conversation's next step */
    ENROLL_NOW,  /* enrollment at login */
    OUT_OF_TURN, /* a yes where only a refusal may come: unavailable, its message not shown */
};

/*
 * docs/protocol.md "Statuses and what the PAM module does with them": the one
 * place a status becomes a PAM code or the conversation's next step, for each
 * verb (END where none is named). A status not listed, like NEED_CODE or ENROLL
 * where it leads nowhere, ends as PAM_AUTHINFO_UNAVAIL. Enrollment at login says
 * yes only through NEED_CODE, then ACCEPTED.
 */
static const struct status_rule {
    const char *status;
    int pam_code;
    enum next next[VERBS];
} status_rules[] = {
    {"ACCEPTED", PAM_SUCCESS, {[LOGIN_ENROLL] = OUT_OF_TURN, [LOGIN_CONFIRM] = GO_ON}},
    {"IGNORE", PAM_IGNORE, {[LOGIN_ENROLL] = OUT_OF_TURN, [LOGIN_CONFIRM] = OUT_OF_TURN}},
    {"REJECTED", PAM_AUTH_ERR, {END}},
    {"DENIED", PAM_AUTH_ERR, {END}},
    {"LOCKED", PAM_MAXTRIES, {END}},
    {"UNKNOWN_USER", PAM_USER_UNKNOWN, {END}},
    {"NEED_CODE", PAM_AUTHINFO_UNAVAIL, {[CHECK] = GO_ON, [LOGIN_ENROLL] = GO_ON}},
    {"ENROLL", PAM_AUTHINFO_UNAVAIL, {[CHECK] = ENROLL_NOW}},
};

static const struct status_rule unlisted_status = {"", PAM_AUTHINFO_UNAVAIL, {END}};

/* Refusals go out as PAM_ERROR_MSG (always); anything else as PAM_TEXT_INFO. */
static void show_message(const struct context *ctx, int flags, const struct wire_reply *reply,
                         bool refusal)
{
    if (!reply->has_message || reply->message[0] == '\0')
        return;
    if (refusal)
        pam_error(ctx->pamh, "%s", reply->message);
    else if (!(flags & PAM_SILENT))
        pam_info(ctx->pamh, "%s", reply->message);
}

/*
 * The reply to `verb`, read through status_rules: GO_ON or ENROLL_NOW with *ret
 * PAM_SUCCESS, else END with *ret the PAM code the conversation ends with, what
 * the person must see shown and anything unavailable logged.
 */
static enum next read_reply(const struct context *ctx, int flags, enum verb verb,
                            const struct wire_reply *reply, int *ret)
{
    const struct status_rule *rule = &unlisted_status;
    enum next next;

    for (size_t i = 0; i < sizeof status_rules / sizeof status_rules[0]; i++)
        if (strcmp(reply->status, status_rules[i].status) == 0)
            rule = &status_rules[i];
    next = rule->next[verb];
    if (next == GO_ON || next == ENROLL_NOW) {
        *ret = PAM_SUCCESS;
        return next;
    }
    *ret = next == OUT_OF_TURN ? PAM_AUTHINFO_UNAVAIL : rule->pam_code;
    if (*ret == PAM_AUTHINFO_UNAVAIL) {
        pam_syslog(ctx->pamh, LOG_ERR, "%s: totpd answered %s", verb_names[verb], reply->status);
        if (next == OUT_OF_TURN || !reply->has_message)
            pam_error(ctx->pamh, "%s", UNAVAILABLE_TEXT);
    }
    if (next == END)
        show_message(ctx, flags, reply, *ret != PAM_SUCCESS && *ret != PAM_IGNORE);
    return END;
}

/* ----------------------------------------------------- enroll at login */

/*
 * The daemon answered `check` with ENROLL (docs/pam.md "Enrollment at login"):
 * `login_enroll` gives the lines to show (the QR code, the key); they go out in
 * the text of the prompt for the first code, so every client shows them (sshd
 * puts text sent before a prompt into that prompt's keyboard-interactive
 * request). `login_confirm` sends the code; its lines (the recovery codes) go out
 * in one last prompt that waits for Enter, because text after the last prompt
 * reaches only clients with a pty. Every buffer that held the key, the code or
 * the recovery codes is wiped.
 */
#define ENROLL_PROMPT "Code from the app: "
#define ENROLLED_PROMPT "Press Enter to continue: "
#define SCREEN_SIZE (MAX_ENROLL_REPLY_PAYLOAD + 64) /* the lines, a LF each, the prompt */

/*
 * The lines, then the prompt, as one text. The daemon's text was checked free of
 * control characters, and none is added: OpenSSH's client shows an escape in a
 * prompt as the text \033, so the QR code's rows go out as they came.
 */
static bool compose_screen(const struct wire_lines *lines, const char *prompt, char *screen,
                           size_t size)
{
    size_t used = 0;

    for (size_t i = 0; i < lines->count; i++) {
        const struct wire_line *line = &lines->line[i];

        if (line->len + 1 > size - used)
            return false;
        memcpy(screen + used, lines->text + line->start, line->len);
        used += line->len;
        screen[used++] = '\n';
    }
    if (strlen(prompt) + 1 > size - used)
        return false;
    memcpy(screen + used, prompt, strlen(prompt) + 1);
    return true;
}

/* One prompt showing the lines; *answer as get_answer's. */
static int show_and_prompt(const struct context *ctx, int style, const struct wire_lines *lines,
                           const char *prompt, char **answer)
{
    char *screen = malloc(SCREEN_SIZE);
    int ret;

    *answer = NULL;
    if (screen == NULL)
        return PAM_BUF_ERR;
    if (!compose_screen(lines, prompt, screen, SCREEN_SIZE)) {
        explicit_bzero(screen, SCREEN_SIZE);
        free(screen);
        pam_syslog(ctx->pamh, LOG_ERR, "enrollment text does not fit the screen buffer");
        return PAM_AUTHINFO_UNAVAIL;
    }
    ret = pam_prompt(ctx->pamh, style, answer, "%s", screen);
    explicit_bzero(screen, SCREEN_SIZE);
    free(screen);
    return prompted(ctx, ret, answer);
}

static int enroll_at_login(struct context *ctx, int flags)
{
    struct context plain = *ctx; /* the first code is a code alone, typed after the QR code */
    struct wire_reply reply;
    struct wire_lines *lines = malloc(sizeof *lines);
    char code[MAX_CODE + 1] = {0};
    char *answer = NULL;
    size_t answer_size = 0;
    int ret;

    if (lines == NULL)
        return PAM_BUF_ERR;
    plain.opts.forward_pass = false;
    if (ctx->opts.forward_pass) {
        /* the password would come after pam_totpd: no first factor has been checked */
        pam_syslog(ctx->pamh, LOG_ERR, "enroll_at_login: not with forward_pass; refused");
        pam_error(ctx->pamh, "%s", "No authenticator is enrolled for this account; ask your administrator.");
        ret = PAM_AUTH_ERR;
        goto cleanup;
    }
    ret = ask_lines(ctx, LOGIN_ENROLL, NULL, &reply, lines);
    if (ret != PAM_SUCCESS || read_reply(ctx, flags, LOGIN_ENROLL, &reply, &ret) != GO_ON)
        goto cleanup;
    ret = show_and_prompt(ctx, PAM_PROMPT_ECHO_OFF, lines, ENROLL_PROMPT, &answer);
    if (ret != PAM_SUCCESS)
        goto cleanup;
    answer_size = strlen(answer);
    ret = take_code(&plain, answer, code);
    if (ret != PAM_SUCCESS)
        goto cleanup;
    ret = ask_lines(ctx, LOGIN_CONFIRM, code, &reply, lines);
    if (ret != PAM_SUCCESS || read_reply(ctx, flags, LOGIN_CONFIRM, &reply, &ret) != GO_ON)
        goto cleanup;
    explicit_bzero(answer, answer_size);
    free(answer);
    answer = NULL;
    /* the recovery codes: shown inside a prompt, the answer ignored */
    ret = show_and_prompt(ctx, PAM_PROMPT_ECHO_ON, lines, ENROLLED_PROMPT, &answer);
    if (ret == PAM_SUCCESS)
        answer_size = strlen(answer);

cleanup:
    explicit_bzero(code, sizeof code);
    explicit_bzero(lines, sizeof *lines);
    free(lines);
    if (answer != NULL) {
        explicit_bzero(answer, answer_size);
        free(answer);
    }
    return ret;
}

/* ---------------------------------------------------------------- entry */

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct context ctx = {.pamh = pamh};
    struct wire_reply reply;
    char code[MAX_CODE + 1] = {0};
    char *answer = NULL;
    size_t answer_size = 0; /* take_code cuts answer short: wipe all of it */
    const void *item;
    enum next next;
    int ret;

    /* options */
    parse_options(pamh, argc, argv, &ctx.opts);
    ret = pam_get_user(pamh, &ctx.user, NULL);
    if (ret != PAM_SUCCESS) {
        pam_syslog(pamh, LOG_ERR, "cannot get the user name: %s", pam_strerror(pamh, ret));
        goto cleanup;
    }
    if (ctx.user == NULL || !wire_valid_user(ctx.user)) {
        pam_syslog(pamh, LOG_NOTICE, "user name is empty, too long or not a valid name");
        ret = PAM_USER_UNKNOWN;
        goto cleanup;
    }
    ctx.service = pam_get_item(pamh, PAM_SERVICE, &item) == PAM_SUCCESS ? item : NULL;
    ctx.rhost = pam_get_item(pamh, PAM_RHOST, &item) == PAM_SUCCESS ? item : NULL;
    ctx.tty = pam_get_item(pamh, PAM_TTY, &item) == PAM_SUCCESS ? item : NULL;

    /* ask: does this account need a code here? */
    ret = ask(&ctx, CHECK, NULL, &reply);
    if (ret != PAM_SUCCESS)
        goto cleanup;
    next = read_reply(&ctx, flags, CHECK, &reply, &ret);
    if (next == ENROLL_NOW)
        ret = enroll_at_login(&ctx, flags);
    if (next != GO_ON)
        goto cleanup;
    show_message(&ctx, flags, &reply, false);

    /* converse */
    ret = get_answer(&ctx, &answer);
    if (ret != PAM_SUCCESS)
        goto cleanup;
    answer_size = strlen(answer);
    ret = take_code(&ctx, answer, code);
    if (ret != PAM_SUCCESS)
        goto cleanup;

    /* answer, then map the reply (every status to verify ends the conversation) */
    ret = ask(&ctx, VERIFY, code, &reply);
    if (ret == PAM_SUCCESS)
        read_reply(&ctx, flags, VERIFY, &reply, &ret);

cleanup:
    explicit_bzero(code, sizeof code);
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
