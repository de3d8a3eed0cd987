/*
 * fuzz_wire.c - libFuzzer target over wire.c's reply parser (`make -C pam fuzz`).
 *
 * Each input is read twice: as a reply frame, the way pam_totpd.c reads one (the
 * header, then exactly its payload, copied so ASan sees its end), and as a bare
 * payload, so that mutations need not keep a header valid to reach the payload
 * parser. What a parse accepts must be within the protocol's limits, since the
 * module shows it on a terminal; what it refuses must leave nothing behind.
 * The input is also a request value: the builder must refuse it or frame it; and
 * an enrollment reply (wire_parse_reply_lines), whose lines must keep their limits.
 */

#define _GNU_SOURCE

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

static void check(bool parsed, const struct wire_reply *reply)
{
    size_t status_len = strnlen(reply->status, sizeof reply->status);
    size_t message_len = strnlen(reply->message, sizeof reply->message);

    if (!parsed) {
        if (status_len != 0 || message_len != 0 || reply->has_message)
            abort();
        return;
    }
    if (status_len == 0 || status_len > MAX_TOKEN ||
        strspn(reply->status, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") != status_len)
        abort();
    if (message_len > MAX_MESSAGE || !wire_valid_text(reply->message, message_len, MAX_MESSAGE) ||
        (!reply->has_message && message_len != 0))
        abort();
}

/* The lines an enrollment reply keeps: within their limits, text, each NUL-terminated in text. */
static void check_lines(bool parsed, const struct wire_reply *reply, const struct wire_lines *lines)
{
    check(parsed, reply);
    if (!parsed) {
        if (lines->count != 0 || lines->used != 0)
            abort();
        return;
    }
    if (lines->count > MAX_LINES || lines->used > sizeof lines->text)
        abort();
    for (size_t i = 0; i < lines->count; i++) {
        const struct wire_line *line = &lines->line[i];

        if (line->len > MAX_MESSAGE || line->start + line->len >= lines->used ||
            lines->text[line->start + line->len] != '\0' ||
            !wire_valid_text(lines->text + line->start, line->len, MAX_MESSAGE))
            abort();
    }
}

static void check_request(const uint8_t *data, size_t size)
{
    char *value = strndup((const char *)data, size);
    const struct wire_field fields[] = {{"user", "alice"}, {"rhost", value}};
    struct wire_request req;
    size_t len;

    if (value == NULL)
        abort();
    if (!wire_build_request(&req, "check", fields, 2)) {
        if (req.len != 0 || wire_valid_text(value, strlen(value), MAX_VALUE))
            abort();
    } else if (!wire_parse_header(req.frame, &len) || len != req.len - FRAME_HEADER_SIZE ||
               req.frame[req.len - 1] != '\n') {
        abort();
    }
    free(value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct wire_lines lines; /* large: off the stack; each parse starts by clearing it */
    struct wire_reply reply;
    size_t len;

    if (size >= FRAME_HEADER_SIZE &&
        wire_parse_header_limit(data, MAX_ENROLL_REPLY_PAYLOAD, &len) &&
        len <= size - FRAME_HEADER_SIZE) {
        unsigned char *payload = malloc(len);

        if (payload == NULL)
            abort();
        memcpy(payload, data + FRAME_HEADER_SIZE, len);
        check_lines(wire_parse_reply_lines(payload, len, MAX_ENROLL_REPLY_PAYLOAD, &reply, &lines),
                    &reply, &lines);
        free(payload);
    }
    check_lines(wire_parse_reply_lines(data, size, MAX_ENROLL_REPLY_PAYLOAD, &reply, &lines), &reply,
                &lines);

    if (size >= FRAME_HEADER_SIZE && wire_parse_header(data, &len) &&
        len <= size - FRAME_HEADER_SIZE) {
        unsigned char *payload = malloc(len);

        if (payload == NULL)
            abort();
        memcpy(payload, data + FRAME_HEADER_SIZE, len);
        check(wire_parse_reply(payload, len, &reply), &reply);
        free(payload);
    }
    check(wire_parse_reply(data, size, &reply), &reply);
    check_request(data, size);
    return 0;
}
