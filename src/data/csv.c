// Line-numbered file reading and RFC 4180 CSV records (quoted fields with commas, doubled quotes and newlines),
// plus the small string helpers the dataset sources share.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "data/data_internal.h"
#include "util/error.h"

void data_str_append(data_str *s, const char *text, size_t len) {
    if (s->n + len + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->n + len + 1) cap *= 2;
        s->p = xrealloc(s->p, cap);
        s->cap = cap;
    }
    if (len) memcpy(s->p + s->n, text, len);
    s->n += len;
    s->p[s->n] = 0;
}
void data_str_puts(data_str *s, const char *text) { data_str_append(s, text, strlen(text)); }
void data_str_clear(data_str *s) { s->n = 0; if (s->p) s->p[0] = 0; }
void data_str_free(data_str *s) { free(s->p); s->p = NULL; s->n = s->cap = 0; }

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

void data_strip_span(const char **s, size_t *len) {
    const char *p = *s;
    size_t n = *len;
    while (n && is_space(*p)) p++, n--;
    while (n && is_space(p[n - 1])) n--;
    *s = p; *len = n;
}

char *data_strip_dup(const char *s) {
    size_t n = strlen(s);
    data_strip_span(&s, &n);
    char *r = xmalloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

int data_lines_open(data_lines *lr, const char *path) {
    memset(lr, 0, sizeof *lr);
    lr->f = fopen(path, "rb");
    if (!lr->f) return halo_fail("%s: cannot open: %s", path, strerror(errno));
    lr->path = path;
    return HALO_OK;
}

int data_lines_next(data_lines *lr, char **text, size_t *len) {
    ssize_t k = getline(&lr->buf, &lr->cap, lr->f);
    if (k < 0) {
        if (ferror(lr->f)) return halo_fail("%s:%lld: read error", lr->path, (long long)lr->line + 1);
        return 0;
    }
    char *p = lr->buf;
    if (lr->line == 0 && k >= 3 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB &&
        (unsigned char)p[2] == 0xBF) p += 3, k -= 3;
    lr->line++;
    if (k && p[k - 1] == '\n') k--;
    if (k && p[k - 1] == '\r') k--;
    p[k] = 0;
    *text = p; *len = (size_t)k;
    return 1;
}

void data_lines_close(data_lines *lr) {
    if (lr->f) fclose(lr->f);
    free(lr->buf);
    memset(lr, 0, sizeof *lr);
}

int csv_open(csv_reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    return data_lines_open(&r->lr, path);
}

void csv_close(csv_reader *r) {
    for (int i = 0; i < r->cap_fields; i++) data_str_free(&r->fields[i]);
    free(r->fields);
    data_lines_close(&r->lr);
    memset(r, 0, sizeof *r);
}

static data_str *csv_new_field(csv_reader *r) {
    if (r->n_fields == r->cap_fields) {
        int cap = r->cap_fields ? 2 * r->cap_fields : 8;
        r->fields = xrealloc(r->fields, (size_t)cap * sizeof *r->fields);
        memset(r->fields + r->cap_fields, 0, (size_t)(cap - r->cap_fields) * sizeof *r->fields);
        r->cap_fields = cap;
    }
    data_str *f = &r->fields[r->n_fields++];
    data_str_clear(f);
    data_str_append(f, "", 0);
    return f;
}

int csv_next(csv_reader *r, bool *fatal) {
    char *s;
    size_t len;
    *fatal = false;
    int k;
    // Blank lines between records carry no record; a record with one empty field cannot be told from them.
    do {
        k = data_lines_next(&r->lr, &s, &len);
        if (k <= 0) { *fatal = k < 0; return k; }
    } while (len == 0);
    r->record_line = r->lr.line;
    r->n_fields = 0;
    size_t i = 0;
    for (;;) {   // one field per iteration; i is at the field's first character
        data_str *f = csv_new_field(r);
        if (i < len && s[i] == '"') {
            int64_t open_line = r->lr.line;
            i++;
            for (;;) {
                if (i == len) {   // the quoted field goes on to the next line; the newline is part of it
                    k = data_lines_next(&r->lr, &s, &len);
                    if (k < 0) { *fatal = true; return -1; }
                    if (k == 0) {
                        *fatal = true;
                        return halo_fail("%s:%lld: quoted field opened on this line is never closed",
                                         r->lr.path, (long long)open_line);
                    }
                    data_str_append(f, "\n", 1);
                    i = 0;
                    continue;
                }
                if (s[i] == '"') {
                    if (i + 1 < len && s[i + 1] == '"') { data_str_append(f, "\"", 1); i += 2; continue; }
                    i++;
                    break;
                }
                size_t j = i;
                while (j < len && s[j] != '"') j++;
                data_str_append(f, s + i, j - i);
                i = j;
            }
            if (i < len && s[i] != ',')
                return halo_fail("%s:%lld: unexpected character '%c' after a closing quote (a quote inside a quoted "
                                 "field is written \"\")", r->lr.path, (long long)r->lr.line, s[i]);
        } else {
            size_t j = i;
            while (j < len && s[j] != ',' && s[j] != '"') j++;
            if (j < len && s[j] == '"')
                return halo_fail("%s:%lld: quote inside an unquoted field (quote the whole field and double the "
                                 "quote)", r->lr.path, (long long)r->lr.line);
            data_str_append(f, s + i, j - i);
            i = j;
        }
        if (i == len) return 1;
        i++;   // the comma; a trailing comma makes one more empty field
        if (i == len) { csv_new_field(r); return 1; }
    }
}
