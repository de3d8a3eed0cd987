/*
 * wire.h - the totpd wire protocol as the PAM module speaks it (docs/protocol.md,
 * version 1): request frames, reply headers and payloads, and the text checks.
 *
 * Pure functions over caller-owned buffers: no libpam, no I/O, no allocation, so
 * pam/fuzz/ can drive the parser directly.
 */

#ifndef TOTPD_WIRE_H
#define TOTPD_WIRE_H

#include <stdbool.h>
#include <stddef.h>

/* docs/protocol.md: framing and limits (same names as totpd/protocol.py). */
#define FRAME_MAGIC_0 0x54 /* 'T' */
#define FRAME_MAGIC_1 0x44 /* 'D' */
#define FRAME_VERSION 1
#define FRAME_HEADER_SIZE 8
#define MAX_REQUEST_PAYLOAD 4096
#define MAX_AUTH_REPLY_PAYLOAD 4096
#define MAX_ENROLL_REPLY_PAYLOAD 16384 /* replies to login_enroll and login_confirm */
#define MAX_LINES 64                   /* `info` and `qr` lines in one reply */
#define MAX_VALUE 1024
#define MAX_MESSAGE 512
#define MAX_USER 256
#define MAX_TOKEN 32 /* a verb, status or key: [a-z_]{1,32} or [A-Z_]{1,32} */

/* One request frame; it may hold the code, so its owner wipes it. */
struct wire_request {
    unsigned char frame[FRAME_HEADER_SIZE + MAX_REQUEST_PAYLOAD];
    size_t len; /* bytes used in frame, header included */
};

/* One key=value line of a request; a NULL or empty value is left out. */
struct wire_field {
    const char *key;
    const char *value;
};

/* What the module reads from a reply: the status and the one key it shows. */
struct wire_reply {
    char status[MAX_TOKEN + 1];
    char message[MAX_MESSAGE + 1];
    bool has_message;
};

/*
 * The lines a reply asks the module to show, in order (docs/protocol.md "Lines"):
 * each `info` or `qr` value, NUL-terminated, in text. They may hold a secret
 * (the key, recovery codes): the owner wipes them.
 */
struct wire_line {
    size_t start; /* offset in text */
    size_t len;
};

struct wire_lines {
    size_t count;
    size_t used; /* bytes of text used */
    struct wire_line line[MAX_LINES];
    char text[MAX_ENROLL_REPLY_PAYLOAD];
};

/* Valid UTF-8 without control characters (C0, DEL, C1), at most max bytes. */
bool wire_valid_text(const void *text, size_t len, size_t max);

/* docs/protocol.md "Account names": 1-256 bytes of text, no '/', not . or .. */
bool wire_valid_user(const char *user);

/*
 * Build a whole frame: the verb, then each field with a value. False, with
 * nothing usable in req, if a value is not text of at most MAX_VALUE bytes or
 * the payload would exceed MAX_REQUEST_PAYLOAD.
 */
bool wire_build_request(struct wire_request *req, const char *verb,
                        const struct wire_field *fields, size_t nfields);

/* Check a reply header; *payload_len is its length, valid only when true. */
bool wire_parse_header(const unsigned char header[FRAME_HEADER_SIZE], size_t *payload_len);

/* The same with a payload limit of `limit` (at most MAX_ENROLL_REPLY_PAYLOAD). */
bool wire_parse_header_limit(const unsigned char header[FRAME_HEADER_SIZE], size_t limit,
                             size_t *payload_len);

/*
 * Parse a reply payload strictly: a status line [A-Z_]{1,32}, then key=value
 * lines, each LF-terminated, keys [a-z_]{1,32}, values text. `message` (at most
 * MAX_MESSAGE bytes, at most once) is kept; other keys are checked and ignored.
 */
bool wire_parse_reply(const unsigned char *payload, size_t len, struct wire_reply *out);

/*
 * The same for a payload of at most `limit` bytes (at most MAX_ENROLL_REPLY_PAYLOAD),
 * also keeping its `info` and `qr` lines (each at most MAX_MESSAGE bytes, at most
 * MAX_LINES of them, repeats allowed) in *lines; NULL lines: they are ignored.
 */
bool wire_parse_reply_lines(const unsigned char *payload, size_t len, size_t limit,
                            struct wire_reply *out, struct wire_lines *lines);

#endif
