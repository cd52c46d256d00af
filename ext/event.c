/* ddlock upload event: the event.json part of the agent's multipart
 * request (see exporter.h, ddl_exporter_event_json).
 *
 * Pure C11: never includes Python.h, never calls Python.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "export_internal.h"

/* Length of the well-formed UTF-8 sequence starting at s (n bytes
 * available), or 0 when it is not well formed. */
static size_t
utf8_sequence_length(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    uint32_t cp, min;
    size_t len, i;

    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
        min = 0x80;
    }
    else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
        min = 0x800;
    }
    else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
        min = 0x10000;
    }
    else {
        return 0;
    }
    if (len > n) {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

/* Append s as a JSON string literal: quotes and backslashes escaped,
 * control characters as \u00XX, malformed UTF-8 replaced by U+FFFD. */
static void
sb_json_string(ddl_strbuf *sb, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), i = 0, run;
    char esc[8];

    ddl_ex_sb_append(sb, "\"", 1);
    while (i < n) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            ddl_ex_sb_append(sb, esc, 2);
            i++;
        }
        else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)c);
            ddl_ex_sb_append(sb, esc, 6);
            i++;
        }
        else if (c < 0x80) {
            run = 1;
            while (i + run < n && p[i + run] >= 0x20 && p[i + run] < 0x7f &&
                   p[i + run] != '"' && p[i + run] != '\\') {
                run++;
            }
            ddl_ex_sb_append(sb, s + i, run);
            i += run;
        }
        else {
            run = utf8_sequence_length(p + i, n - i);
            if (run == 0) {
                ddl_ex_sb_puts(sb, "\\ufffd");
                i++;
            }
            else {
                ddl_ex_sb_append(sb, s + i, run);
                i += run;
            }
        }
    }
    ddl_ex_sb_append(sb, "\"", 1);
}

/* Append "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ" (quoted) for epoch ns. */
static void
sb_rfc3339(ddl_strbuf *sb, int64_t ns)
{
    struct tm tm;
    time_t secs;
    long frac;
    char out[80];
    size_t n;

    if (ns < 0) {
        ns = 0;
    }
    secs = (time_t)(ns / NS_PER_S);
    frac = (long)(ns % NS_PER_S);
    if (gmtime_r(&secs, &tm) == NULL) {
        secs = 0;
        frac = 0;
        gmtime_r(&secs, &tm);
    }
    n = strftime(out, sizeof(out), "\"%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, sizeof(out) - n, ".%09ldZ\"", frac);
    ddl_ex_sb_puts(sb, out);
}

char *
ddl_exporter_event_json(const char *tags, int64_t start_ns, int64_t end_ns,
                        const char *version)
{
    ddl_strbuf sb = {NULL, 0, 0, 0};

    ddl_ex_sb_puts(&sb,
                   "{\"attachments\":[\"profile.pprof\"],\"tags_profiler\":");
    sb_json_string(&sb, tags ? tags : "");
    ddl_ex_sb_puts(&sb, ",\"start\":");
    sb_rfc3339(&sb, start_ns);
    ddl_ex_sb_puts(&sb, ",\"end\":");
    sb_rfc3339(&sb, end_ns);
    ddl_ex_sb_puts(&sb, ",\"family\":\"python\",\"version\":\"4\","
                        "\"endpoint_counts\":null,"
                        "\"internal\":{\"profiler\":\"ddlock\","
                        "\"profiler_version\":");
    sb_json_string(&sb, version ? version : "");
    ddl_ex_sb_puts(&sb, "},\"info\":{}}");
    if (sb.failed) {
        free(sb.p);
        return NULL;
    }
    return sb.p;
}
