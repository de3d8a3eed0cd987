/*
 * wire.c - framing, reply parsing and text checks of docs/protocol.md (wire.h).
 *
 * Every length is checked against a named limit before a byte is copied; daemon
 * text is refused unless it is valid UTF-8 without control characters, because
 * the module shows it on the person's terminal.
 */

#include "wire.h"

#include <stdint.h>
#include <string.h>

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

bool wire_valid_text(const void *text, size_t len, size_t max)
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

bool wire_valid_user(const char *user)
{
    size_t len = strnlen(user, MAX_USER + 1);

    return len > 0 && wire_valid_text(user, len, MAX_USER) && strchr(user, '/') == NULL &&
           strcmp(user, ".") != 0 && strcmp(user, "..") != 0;
}

/* A verb, status or key: 1-MAX_TOKEN bytes of '_' and low..high. */
static bool valid_token(const void *token, size_t len, char low, char high)
{
    const unsigned char *s = token;

    if (len == 0 || len > MAX_TOKEN)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] != '_' && (s[i] < (unsigned char)low || s[i] > (unsigned char)high))
            return false;
    return true;
}

/* Append to the payload; false when it would outgrow MAX_REQUEST_PAYLOAD. */
static bool append(struct wire_request *req, const void *bytes, size_t len)
{
    if (len > sizeof req->frame - req->len)
        return false;
    memcpy(req->frame + req->len, bytes, len);
    req->len += len;
    return true;
}

static bool build_request(struct wire_request *req, const char *verb,
                          const struct wire_field *fields, size_t nfields)
{
    size_t payload;

    req->len = FRAME_HEADER_SIZE;
    if (!valid_token(verb, strlen(verb), 'a', 'z') || !append(req, verb, strlen(verb)) ||
        !append(req, "\n", 1))
        return false;
    for (size_t i = 0; i < nfields; i++) {
        const char *key = fields[i].key, *value = fields[i].value;
        size_t value_len;

        if (value == NULL || value[0] == '\0')
            continue;
        value_len = strnlen(value, MAX_VALUE + 1);
        if (!valid_token(key, strlen(key), 'a', 'z') || !wire_valid_text(value, value_len, MAX_VALUE) ||
            !append(req, key, strlen(key)) || !append(req, "=", 1) ||
            !append(req, value, value_len) || !append(req, "\n", 1))
            return false;
    }
    payload = req->len - FRAME_HEADER_SIZE;
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

bool wire_build_request(struct wire_request *req, const char *verb,
                        const struct wire_field *fields, size_t nfields)
{
    if (build_request(req, verb, fields, nfields))
        return true;
    req->len = 0; /* nothing of a refused request may be sent */
    return false;
}

bool wire_parse_header_limit(const unsigned char header[FRAME_HEADER_SIZE], size_t limit,
                             size_t *payload_len)
{
    uint32_t len = (uint32_t)header[4] << 24 | (uint32_t)header[5] << 16 |
                   (uint32_t)header[6] << 8 | (uint32_t)header[7];

    *payload_len = len;
    return header[0] == FRAME_MAGIC_0 && header[1] == FRAME_MAGIC_1 &&
           header[2] == FRAME_VERSION && header[3] == 0 && len > 0 &&
           len <= limit && len <= MAX_ENROLL_REPLY_PAYLOAD;
}

bool wire_parse_header(const unsigned char header[FRAME_HEADER_SIZE], size_t *payload_len)
{
    return wire_parse_header_limit(header, MAX_AUTH_REPLY_PAYLOAD, payload_len);
}

static bool is_key(const unsigned char *key, size_t key_len, const char *name)
{
    return key_len == strlen(name) && memcmp(key, name, key_len) == 0;
}

/* Keep one `info` or `qr` line; false when it is too long or one too many. */
static bool keep_line(struct wire_lines *lines, const unsigned char *value, size_t len)
{
    struct wire_line *line;

    if (lines->count >= MAX_LINES || len > MAX_MESSAGE ||
        len + 1 > sizeof lines->text - lines->used)
        return false;
    line = &lines->line[lines->count++];
    line->start = lines->used;
    line->len = len;
    memcpy(lines->text + lines->used, value, len);
    lines->text[lines->used + len] = '\0';
    lines->used += len + 1;
    return true;
}

static bool parse_reply(const unsigned char *payload, size_t len, size_t limit,
                        struct wire_reply *out, struct wire_lines *lines)
{
    const unsigned char *end = payload + len;
    const unsigned char *line, *line_end;

    if (len == 0 || len > limit || len > MAX_ENROLL_REPLY_PAYLOAD || payload[len - 1] != '\n')
        return false;
    line_end = memchr(payload, '\n', len);
    if (!valid_token(payload, (size_t)(line_end - payload), 'A', 'Z'))
        return false;
    memcpy(out->status, payload, (size_t)(line_end - payload));

    for (line = line_end + 1; line < end; line = line_end + 1) {
        const unsigned char *eq, *value;
        size_t key_len, value_len;

        line_end = memchr(line, '\n', (size_t)(end - line)); /* found: the payload ends with LF */
        eq = memchr(line, '=', (size_t)(line_end - line));
        if (eq == NULL)
            return false;
        key_len = (size_t)(eq - line);
        value = eq + 1;
        value_len = (size_t)(line_end - value);
        if (!valid_token(line, key_len, 'a', 'z') || !wire_valid_text(value, value_len, limit))
            return false;
        if (lines != NULL && (is_key(line, key_len, "info") || is_key(line, key_len, "qr"))) {
            if (!keep_line(lines, value, value_len))
                return false;
        } else if (is_key(line, key_len, "message")) {
            /* a key the module reads comes once: which of two would the person see? */
            if (out->has_message || value_len > MAX_MESSAGE)
                return false;
            memcpy(out->message, value, value_len);
            out->has_message = true;
        }
    }
    return true;
}

bool wire_parse_reply_lines(const unsigned char *payload, size_t len, size_t limit,
                            struct wire_reply *out, struct wire_lines *lines)
{
    memset(out, 0, sizeof *out);
    if (lines != NULL)
        memset(lines, 0, sizeof *lines);
    if (parse_reply(payload, len, limit, out, lines))
        return true;
    memset(out, 0, sizeof *out); /* nothing of a refused reply may be shown */
    if (lines != NULL)
        memset(lines, 0, sizeof *lines);
    return false;
}

bool wire_parse_reply(const unsigned char *payload, size_t len, struct wire_reply *out)
{
    return wire_parse_reply_lines(payload, len, MAX_AUTH_REPLY_PAYLOAD, out, NULL);
}
