// Task metrics for generated answers: ViGGO meaning representations, GSM8K final answers, SQL and exact match.
#include <stdlib.h>
#include <string.h>
#include "data/data_internal.h"
#include "data/metrics.h"
#include "util/error.h"

static const char *const NAMES[] = {"exact", "viggo", "gsm8k", "sql"};

int metric_from_name(const char *name, halo_metric *out) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, NAMES[i])) { *out = (halo_metric)i; return HALO_OK; }
    return halo_fail("unknown metric '%s' (known: exact, viggo, gsm8k, sql)", name);
}

const char *metric_name(halo_metric m) { return (unsigned)m < 4 ? NAMES[m] : "?"; }

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Appends s[0..n) stripped.
static void put_stripped(data_str *o, const char *s, size_t n) {
    data_strip_span(&s, &n);
    data_str_append(o, s, n);
}

// One attribute "name[v1, v2]" in canonical spacing: "name[v1, v2]"; without brackets, just stripped.
static char *canon_attr(const char *s, size_t n) {
    data_str o = {0};
    data_strip_span(&s, &n);
    const char *lb = memchr(s, '[', n);
    if (!lb || s[n - 1] != ']') {
        put_stripped(&o, s, n);
    } else {
        put_stripped(&o, s, (size_t)(lb - s));
        data_str_append(&o, "[", 1);
        const char *v = lb + 1, *end = s + n - 1;
        for (bool first = true;; first = false) {
            const char *c = memchr(v, ',', (size_t)(end - v));
            if (!first) data_str_append(&o, ", ", 2);
            put_stripped(&o, v, (size_t)((c ? c : end) - v));
            if (!c) break;
            v = c + 1;
        }
        data_str_append(&o, "]", 1);
    }
    data_str_append(&o, "", 0);
    return o.p;
}

char *metric_viggo_canonical(const char *mr) {
    size_t n = strlen(mr);
    data_strip_span(&mr, &n);
    const char *open = memchr(mr, '(', n);
    if (!open || n == 0 || mr[n - 1] != ')') return NULL;
    const char *fn = mr;
    size_t fn_len = (size_t)(open - mr);
    data_strip_span(&fn, &fn_len);
    if (!fn_len) return NULL;
    const char *in = open + 1, *end = mr + n - 1;
    char **attrs = NULL;
    int n_attrs = 0, depth = 0;
    bool bad = false;
    const char *start = in;
    for (const char *p = in;; p++) {
        if (p < end && *p == '[') depth++;
        else if (p < end && *p == ']') depth--;
        if (p == end || (*p == ',' && depth == 0)) {
            const char *a = start;
            size_t al = (size_t)(p - start);
            data_strip_span(&a, &al);
            if (al == 0) { if (p != end || n_attrs > 0) bad = true; }
            else {
                attrs = xrealloc(attrs, (size_t)(n_attrs + 1) * sizeof *attrs);
                attrs[n_attrs++] = canon_attr(a, al);
            }
            start = p + 1;
            if (p == end) break;
        }
    }
    char *res = NULL;
    if (!bad && depth == 0) {
        if (n_attrs > 1) qsort(attrs, (size_t)n_attrs, sizeof *attrs, cmp_str);
        data_str o = {0};
        data_str_append(&o, fn, fn_len);
        data_str_append(&o, "(", 1);
        for (int i = 0; i < n_attrs; i++) {
            if (i) data_str_append(&o, ", ", 2);
            data_str_puts(&o, attrs[i]);
        }
        data_str_append(&o, ")", 1);
        res = o.p;
    }
    for (int i = 0; i < n_attrs; i++) free(attrs[i]);
    free(attrs);
    return res;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

char *metric_gsm8k_answer(const char *text) {
    const char *last = NULL;
    for (const char *p = strstr(text, "####"); p; p = strstr(p + 1, "####")) last = p;
    if (!last) return NULL;
    const char *s = last + 4;
    size_t n = strlen(s);
    data_strip_span(&s, &n);
    char *r = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ',' && i > 0 && i + 1 < n && is_digit(s[i - 1]) && is_digit(s[i + 1])) continue;
        r[k++] = s[i];
    }
    r[k] = 0;
    return r;
}

static bool stripped_equal(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    data_strip_span(&a, &na);
    data_strip_span(&b, &nb);
    return na == nb && !memcmp(a, b, na);
}

double metric_score(halo_metric m, const char *pred, const char *ref) {
    switch (m) {
    case METRIC_EXACT:
    case METRIC_SQL: return stripped_equal(pred, ref);
    case METRIC_GSM8K: {
        char *a = metric_gsm8k_answer(pred), *b = metric_gsm8k_answer(ref);
        bool ok = a && b && !strcmp(a, b);
        free(a); free(b);
        return ok;
    }
    case METRIC_VIGGO: {
        char *a = metric_viggo_canonical(pred), *b = metric_viggo_canonical(ref);
        bool ok = a && b && !strcmp(a, b);
        free(a); free(b);
        return ok;
    }
    }
    return 0;
}
