// Jinja2 subset for chat templates: a scanner (whitespace control, trim_blocks, lstrip_blocks), a recursive-descent
// parser to a node tree, and a tree-walking renderer. All memory of a parse or a render comes from an arena, so
// errors unwind with longjmp to the entry point, which frees the arena and reports "WHERE:LINE: message".
#include "data/jinja.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/error.h"

#define J_MAX_NEST 64                  // nested blocks (for/if/set)
#define J_MAX_REC 64                   // nested parentheses / brackets / unary operators in one expression
#define J_MAX_DEPTH 256                // depth of the node tree (bounds the renderer's recursion)
#define J_MAX_VDEPTH 256               // depth of nested values printed or compared
#define J_MAX_ITERS 1000000L           // loop iterations in one render
#define J_MAX_OUT ((size_t)64 << 20)   // rendered bytes
#define J_MAX_MEM ((size_t)512 << 20)  // arena bytes of one render
#define J_MAX_WORK 100000000L          // evaluation steps and element visits in one render

// ---------------------------------------------------------------- errors and arena

typedef struct {
    jmp_buf jb;
    const char *where;
    int line;   // line of the node being evaluated (for errors without their own line)
    char msg[2048];
} jerr;

static _Noreturn __attribute__((format(printf, 3, 4))) void jfail(jerr *e, int line, const char *fmt, ...) {
    int n = snprintf(e->msg, sizeof e->msg, "%s:%d: ", e->where, line);
    if (n < 0 || (size_t)n >= sizeof e->msg) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg + n, sizeof e->msg - (size_t)n, fmt, ap);
    va_end(ap);
    longjmp(e->jb, 1);
}

typedef struct chunk { struct chunk *next; size_t used, cap; max_align_t data[]; } chunk;
typedef struct { chunk *head; size_t total; jerr *err; } arena;

static void *ar_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n > J_MAX_MEM || a->total + n > J_MAX_MEM) jfail(a->err, a->err->line, "template needs more than %zu MiB of memory", J_MAX_MEM >> 20);
    chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        c = xmalloc(sizeof(chunk) + cap);
        c->cap = cap, c->used = 0, c->next = a->head;
        a->head = c;
        a->total += cap;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}
static void *ar_zalloc(arena *a, size_t n) { return memset(ar_alloc(a, n), 0, n); }
static void ar_free(arena *a) {
    for (chunk *c = a->head, *nx; c; c = nx) nx = c->next, free(c);
    a->head = NULL, a->total = 0;
}
static char *ar_strndup(arena *a, const char *s, size_t n) {
    char *p = ar_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}
// Grows an arena array of `*cap` elements of `size` bytes to hold at least `need`.
static void *ar_grow(arena *a, void *p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return p;
    size_t nc = *cap ? *cap * 2 : 8;
    while (nc < need) nc *= 2;
    void *q = ar_alloc(a, nc * size);
    if (*cap) memcpy(q, p, *cap * size);
    *cap = nc;
    return q;
}

// String builder in the arena.
typedef struct { char *p; size_t n, cap; arena *ar; } sbuf;
static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) b->p = ar_grow(b->ar, b->p, &b->cap, b->n + n + 1, 1);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_puts(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_putc(sbuf *b, char c) { sb_add(b, &c, 1); }

// ---------------------------------------------------------------- UTF-8 and Python whitespace

// Decodes one code point at s (n > 0 bytes left); an invalid byte counts as one code point of one byte.
static unsigned utf8_dec(const unsigned char *s, size_t n, size_t *len) {
    unsigned c = s[0];
    int k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (k < 0 || (size_t)k >= n) { *len = 1; return c; }
    unsigned cp = k == 0 ? c : c & (0x3F >> k);
    for (int i = 1; i <= k; i++) {
        if ((s[i] & 0xC0) != 0x80) { *len = 1; return c; }
        cp = cp << 6 | (s[i] & 0x3F);
    }
    *len = (size_t)k + 1;
    return cp;
}
static size_t utf8_enc(unsigned cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) { o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 63)); o[2] = (char)(0x80 | (cp & 63)); return 3; }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 63));
    o[2] = (char)(0x80 | (cp >> 6 & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}
// Start of the code point that ends just before s+n.
static size_t utf8_back(const char *s, size_t n) {
    size_t i = n - 1;
    for (int k = 0; k < 3 && i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80; k++) i--;
    size_t len;
    utf8_dec((const unsigned char *)s + i, n - i, &len);
    return i + len == n ? i : n - 1;
}
static size_t utf8_count(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0, len; i < n; i += len, c++) utf8_dec((const unsigned char *)s + i, n - i, &len);
    return c;
}
// str.isspace()
static int py_space(unsigned c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
static size_t ws_lead(const char *s, size_t n) {
    size_t i = 0, len;
    while (i < n && py_space(utf8_dec((const unsigned char *)s + i, n - i, &len))) i += len;
    return i;
}
static size_t ws_trail(const char *s, size_t n) {   // length after removing trailing whitespace
    while (n > 0) {
        size_t b = utf8_back(s, n), len;
        if (!py_space(utf8_dec((const unsigned char *)s + b, n - b, &len))) break;
        n = b;
    }
    return n;
}

// ---------------------------------------------------------------- values

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC, V_LOOP };

typedef struct jv {
    uint8_t t;
    uint8_t tup;   // V_LIST: a tuple; V_DICT: a namespace; V_UNDEF: u.s is a whole message, not a name
    size_t n;      // V_STR bytes, V_LIST items
    union { int64_t i; double f; const char *s; struct jv *a; struct jdict *d; struct jfn *fn; struct jloop *lp; } u;
} jv;
typedef struct jdict { size_t n, cap; jv *k, *v; } jdict;
typedef struct jfn { int id; jv self; } jfn;
typedef struct jloop { const jv *items; size_t n, i; } jloop;

static jv mk_undef(const char *name) { jv v = {.t = V_UNDEF}; v.u.s = name; return v; }
static jv mk_none(void) { return (jv){.t = V_NONE}; }
static jv mk_bool(int b) { jv v = {.t = V_BOOL}; v.u.i = b != 0; return v; }
static jv mk_int(int64_t i) { jv v = {.t = V_INT}; v.u.i = i; return v; }
static jv mk_float(double f) { jv v = {.t = V_FLOAT}; v.u.f = f; return v; }
static jv mk_str(const char *s, size_t n) { jv v = {.t = V_STR, .n = n}; v.u.s = s; return v; }
static jv mk_list(jv *a, size_t n) { jv v = {.t = V_LIST, .n = n}; v.u.a = a; return v; }
static jv mk_cstr(const char *s) { return mk_str(s, strlen(s)); }

static int is_num(const jv *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num_f(const jv *v) { return v->t == V_FLOAT ? v->u.f : (double)v->u.i; }

static const char *type_name(const jv *v) {
    switch (v->t) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v->tup ? "tuple" : "list";
    case V_DICT: return v->tup ? "Namespace" : "dict";
    case V_FUNC: return "function";
    default: return "LoopContext";
    }
}

static int truthy(const jv *v) {
    switch (v->t) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: case V_INT: return v->u.i != 0;
    case V_FLOAT: return v->u.f != 0;
    case V_STR: case V_LIST: return v->n != 0;
    case V_DICT: return v->tup || v->u.d->n != 0;
    default: return 1;
    }
}

static int jv_eq(const jv *a, const jv *b, int depth);
static jv *dict_find(const jdict *d, const jv *k) {
    for (size_t i = 0; i < d->n; i++)
        if (jv_eq(&d->k[i], k, 0)) return &d->v[i];
    return NULL;
}
static jv *dict_get(const jdict *d, const char *key, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].n == n && !memcmp(d->k[i].u.s, key, n)) return &d->v[i];
    return NULL;
}
static void dict_set(arena *ar, jdict *d, jv k, jv v) {
    jv *p = dict_find(d, &k);
    if (p) { *p = v; return; }
    size_t cap = d->cap;
    d->k = ar_grow(ar, d->k, &cap, d->n + 1, sizeof(jv));
    d->v = ar_grow(ar, d->v, &d->cap, d->n + 1, sizeof(jv));
    d->k[d->n] = k, d->v[d->n] = v, d->n++;
}
static jv mk_dict(arena *ar, int ns) {
    jv v = {.t = V_DICT, .tup = (uint8_t)ns};
    v.u.d = ar_zalloc(ar, sizeof(jdict));
    return v;
}

// Python ==.
static int jv_eq(const jv *a, const jv *b, int depth) {
    if (depth > J_MAX_VDEPTH) return 0;
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return a->u.i == b->u.i;
        return num_f(a) == num_f(b);
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a->n == b->n && !memcmp(a->u.s, b->u.s, a->n);
    case V_LIST:
        if (a->tup != b->tup || a->n != b->n) return 0;
        for (size_t i = 0; i < a->n; i++)
            if (!jv_eq(&a->u.a[i], &b->u.a[i], depth + 1)) return 0;
        return 1;
    case V_DICT:
        if (a->tup || b->tup) return a->u.d == b->u.d;
        if (a->u.d->n != b->u.d->n) return 0;
        for (size_t i = 0; i < a->u.d->n; i++) {
            jv *o = dict_find(b->u.d, &a->u.d->k[i]);
            if (!o || !jv_eq(&a->u.d->v[i], o, depth + 1)) return 0;
        }
        return 1;
    case V_FUNC: return a->u.fn == b->u.fn;
    default: return a->u.lp == b->u.lp;
    }
}

// Python repr of a float (shortest round-trip digits; exponent form below 1e-4 and from 1e16).
static void fmt_float(double x, char *out, size_t cap) {
    if (isnan(x)) { snprintf(out, cap, "nan"); return; }
    if (isinf(x)) { snprintf(out, cap, x < 0 ? "-inf" : "inf"); return; }
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    // e = [-]d[.ddd]e[+-]XX
    const char *q = e;
    int neg = *q == '-';
    if (neg) q++;
    char dig[24];
    int nd = 0;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') dig[nd++] = *q;
    int ex = atoi(q + 1);
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    char *o = out;
    if (neg) *o++ = '-';
    if (ex < -4 || ex >= 16) {
        *o++ = dig[0];
        if (nd > 1) { *o++ = '.'; memcpy(o, dig + 1, (size_t)nd - 1); o += nd - 1; }
        snprintf(o, cap - (size_t)(o - out), "e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
        return;
    }
    if (ex < 0) {
        *o++ = '0', *o++ = '.';
        for (int i = 0; i < -ex - 1; i++) *o++ = '0';
        memcpy(o, dig, (size_t)nd), o += nd;
    } else {
        for (int i = 0; i <= ex; i++) *o++ = i < nd ? dig[i] : '0';
        *o++ = '.';
        if (nd > ex + 1) memcpy(o, dig + ex + 1, (size_t)(nd - ex - 1)), o += nd - ex - 1;
        else *o++ = '0';
    }
    *o = 0;
}

// ---------------------------------------------------------------- scanner

enum { TK_TEXT, TK_VBEGIN, TK_VEND, TK_BBEGIN, TK_BEND, TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP, TK_EOF };
typedef struct { int type, line; const char *s; size_t n; int64_t i; double f; } tok;

typedef struct {
    arena *ar;   // tokens and decoded strings
    jerr *err;
    const char *src;
    size_t len, pos;
    int line;
    tok *t;
    size_t nt, cap;
} lexer;

static void lx_emit(lexer *L, int type, int line, const char *s, size_t n) {
    L->t = ar_grow(L->ar, L->t, &L->cap, L->nt + 1, sizeof(tok));
    L->t[L->nt++] = (tok){.type = type, .line = line, .s = s, .n = n};
}
static int count_nl(const char *s, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c;
}
// Advances over whitespace (Python \s) after a '-' tag end.
static void lx_skip_ws(lexer *L) {
    size_t k = ws_lead(L->src + L->pos, L->len - L->pos);
    L->line += count_nl(L->src + L->pos, k);
    L->pos += k;
}

static int hexval(int c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; }

// A quoted string literal at L->pos, with Python's escapes.
static void lx_string(lexer *L) {
    const char *s = L->src;
    char q = s[L->pos];
    int line = L->line;
    size_t i = L->pos + 1;
    sbuf b = {.ar = L->ar};
    sb_add(&b, "", 0);
    for (;;) {
        if (i >= L->len) jfail(L->err, line, "unterminated string literal");
        char c = s[i];
        if (c == q) { i++; break; }
        if (c == '\n') L->line++;
        if (c != '\\') { sb_putc(&b, c); i++; continue; }
        if (i + 1 >= L->len) jfail(L->err, line, "unterminated string literal");
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case 'n': sb_putc(&b, '\n'); break;
        case 't': sb_putc(&b, '\t'); break;
        case 'r': sb_putc(&b, '\r'); break;
        case 'a': sb_putc(&b, '\a'); break;
        case 'b': sb_putc(&b, '\b'); break;
        case 'f': sb_putc(&b, '\f'); break;
        case 'v': sb_putc(&b, '\v'); break;
        case '\\': case '\'': case '"': sb_putc(&b, e); break;
        case '\n': L->line++; break;   // line continuation
        case 'x': case 'u': case 'U': {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            unsigned cp = 0;
            for (int k = 0; k < nd; k++) {
                int h = i + (size_t)k < L->len ? hexval((unsigned char)s[i + (size_t)k]) : -1;
                if (h < 0) jfail(L->err, L->line, "bad \\%c escape in a string literal", e);
                cp = cp << 4 | (unsigned)h;
            }
            i += (size_t)nd;
            // a \uD800-\uDBFF high surrogate followed by a \uDC00-\uDFFF low one is one code point
            if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= L->len && s[i] == '\\' && s[i + 1] == 'u') {
                unsigned lo = 0;
                int ok = 1;
                for (int k = 0; k < 4; k++) {
                    int h = hexval((unsigned char)s[i + 2 + (size_t)k]);
                    if (h < 0) ok = 0; else lo = lo << 4 | (unsigned)h;
                }
                if (ok && lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00), i += 6;
            }
            if (cp > 0x10FFFF) jfail(L->err, L->line, "bad \\U escape in a string literal");
            char o[4];
            sb_add(&b, o, utf8_enc(cp, o));
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                unsigned cp = (unsigned)(e - '0');
                for (int k = 0; k < 2 && i < L->len && s[i] >= '0' && s[i] <= '7'; k++) cp = cp * 8 + (unsigned)(s[i++] - '0');
                char o[4];
                sb_add(&b, o, utf8_enc(cp, o));
            } else {   // unknown escapes stay as written
                sb_putc(&b, '\\');
                i--;
            }
        }
    }
    lx_emit(L, TK_STR, line, b.p, b.n);
    L->pos = i;
}

static int is_id0(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_dig(int c) { return c >= '0' && c <= '9'; }

// Digits with '_' separators from s[*i] into buf (at most cap-1 bytes kept).
static void lx_digits(const char *s, size_t len, size_t *i, char *buf, size_t *nb, size_t cap) {
    while (*i < len && (is_dig(s[*i]) || (s[*i] == '_' && *i + 1 < len && is_dig(s[*i + 1])))) {
        if (s[*i] != '_' && *nb < cap - 1) buf[(*nb)++] = s[*i];
        (*i)++;
    }
}

static void lx_number(lexer *L) {
    const char *s = L->src;
    size_t i = L->pos;
    char buf[128];
    size_t nb = 0;
    int isf = 0;
    lx_digits(s, L->len, &i, buf, &nb, sizeof buf - 4);
    if (i + 1 < L->len && s[i] == '.' && is_dig(s[i + 1])) {
        isf = 1;
        buf[nb++] = s[i++];
        lx_digits(s, L->len, &i, buf, &nb, sizeof buf - 4);
    }
    if (i < L->len && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < L->len && (s[j] == '+' || s[j] == '-')) j++;
        if (j < L->len && is_dig(s[j])) {
            isf = 1;
            buf[nb++] = 'e';
            if (s[i + 1] == '-') buf[nb++] = '-';
            i = j;
            lx_digits(s, L->len, &i, buf, &nb, sizeof buf);
        }
    }
    buf[nb] = 0;
    lx_emit(L, isf ? TK_FLOAT : TK_INT, L->line, s + L->pos, i - L->pos);
    tok *t = &L->t[L->nt - 1];
    if (isf) t->f = strtod(buf, NULL);
    else {
        unsigned long long u = strtoull(buf, NULL, 10);
        if (nb > 19 || u > (unsigned long long)INT64_MAX) jfail(L->err, L->line, "integer literal too large");
        t->i = (int64_t)u;
    }
    L->pos = i;
}

// Tokens of one {{ }} or {% %} tag up to its end; `blk` picks the end marker.
static void lx_tag(lexer *L, int blk, int open_line) {
    const char *s = L->src;
    int depth = 0;
    char endc = blk ? '%' : '}';
    static const char *ops2[] = {"//", "**", "==", "!=", "<=", ">="};
    for (;;) {
        while (L->pos < L->len && (s[L->pos] == ' ' || s[L->pos] == '\t' || s[L->pos] == '\n' || s[L->pos] == '\r')) {
            if (s[L->pos] == '\n') L->line++;
            L->pos++;
        }
        if (L->pos >= L->len) jfail(L->err, open_line, "unclosed '%s' tag", blk ? "{%" : "{{");
        size_t p = L->pos;
        if (depth == 0) {
            int minus = s[p] == '-' || (blk && s[p] == '+');
            size_t q = p + (size_t)minus;
            if (q + 1 < L->len && s[q] == endc && s[q + 1] == '}') {
                lx_emit(L, blk ? TK_BEND : TK_VEND, L->line, s + p, q + 2 - p);
                L->pos = q + 2;
                if (minus && s[p] == '-') lx_skip_ws(L);
                else if (blk && !minus && L->pos < L->len && s[L->pos] == '\n') L->pos++, L->line++;   // trim_blocks
                return;
            }
        }
        char c = s[p];
        if (c == '\'' || c == '"') { lx_string(L); continue; }
        if (is_dig(c)) { lx_number(L); continue; }
        if (is_id0(c)) {
            size_t q = p;
            while (q < L->len && (is_id0(s[q]) || is_dig(s[q]))) q++;
            lx_emit(L, TK_NAME, L->line, s + p, q - p);
            L->pos = q;
            continue;
        }
        int n = 0;
        for (size_t k = 0; k < sizeof ops2 / sizeof *ops2; k++)
            if (p + 1 < L->len && s[p] == ops2[k][0] && s[p + 1] == ops2[k][1]) n = 2;
        if (!n && strchr("+-*/%~<>=()[]{},.:|", c) && c) n = 1;
        if (!n) jfail(L->err, L->line, "unexpected character '%c'", c);
        if (n == 1 && (c == '(' || c == '[' || c == '{')) depth++;
        if (n == 1 && (c == ')' || c == ']' || c == '}') && depth > 0) depth--;
        lx_emit(L, TK_OP, L->line, s + p, (size_t)n);
        L->pos = p + (size_t)n;
    }
}

// Emits text s[a, b) with lstrip/rstrip already decided by the caller.
static void lx_text(lexer *L, size_t a, size_t b, int line) {
    if (b > a) lx_emit(L, TK_TEXT, line, L->src + a, b - a);
}

// Matches `{%[-+]? raw [-+]?%}` at p; returns the end offset (just past "%}") or 0.
static size_t match_word_tag(const char *s, size_t len, size_t p, const char *word, int *lsign, int *rsign) {
    if (p + 2 > len || s[p] != '{' || s[p + 1] != '%') return 0;
    size_t i = p + 2;
    *lsign = (i < len && (s[i] == '-' || s[i] == '+')) ? s[i++] : 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    size_t wl = strlen(word);
    if (i + wl > len || memcmp(s + i, word, wl)) return 0;
    i += wl;
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    *rsign = (i < len && (s[i] == '-' || s[i] == '+')) ? s[i++] : 0;
    if (i + 2 > len || s[i] != '%' || s[i + 1] != '}') return 0;
    return i + 2;
}

static void lex(lexer *L) {
    const char *s = L->src;
    int line_start = 1;   // the previous tag's match ended with a newline (or this is the template's start)
    while (L->pos < L->len) {
        size_t p = L->pos, tag = p;
        while (tag + 1 < L->len && !(s[tag] == '{' && (s[tag + 1] == '{' || s[tag + 1] == '%' || s[tag + 1] == '#'))) tag++;
        if (tag + 1 >= L->len) { lx_text(L, p, L->len, L->line); break; }
        char kind = s[tag + 1];
        char sign = tag + 2 < L->len ? s[tag + 2] : 0;
        size_t end = tag;   // end of the kept text
        if (sign == '-') end = p + ws_trail(s + p, tag - p);
        else if (kind != '{' && sign != '+') {   // lstrip_blocks
            size_t l = tag;
            while (l > p && s[l - 1] != '\n') l--;
            if ((l > p || line_start) && ws_lead(s + l, tag - l) == tag - l) end = l;
        }
        lx_text(L, p, end, L->line);
        L->line += count_nl(s + p, tag - p);
        int tag_line = L->line;
        int rs, ls;
        size_t rawend;
        if (kind == '#') {
            size_t body = tag + 2 + (sign == '-' || sign == '+'), q = body;   // "{#-#}": that '-' is the opener's
            while (q + 1 < L->len && !(s[q] == '#' && s[q + 1] == '}')) q++;
            if (q + 1 >= L->len) jfail(L->err, tag_line, "unclosed comment");
            L->line += count_nl(s + tag, q - tag);
            char m = q > body ? s[q - 1] : 0;
            L->pos = q + 2;
            if (m == '-') lx_skip_ws(L);
            else if (m != '+' && L->pos < L->len && s[L->pos] == '\n') L->pos++, L->line++;
        } else if (kind == '%' && (rawend = match_word_tag(s, L->len, tag, "raw", &ls, &rs))) {
            L->line += count_nl(s + tag, rawend - tag);
            L->pos = rawend;
            if (rs == '-') lx_skip_ws(L);
            size_t a = L->pos, q = a, e2 = 0;
            for (; q + 1 < L->len; q++)
                if (s[q] == '{' && s[q + 1] == '%' && (e2 = match_word_tag(s, L->len, q, "endraw", &ls, &rs))) break;
            if (!e2) jfail(L->err, tag_line, "'raw' without 'endraw'");
            size_t kept = q;
            if (ls == '-') kept = a + ws_trail(s + a, q - a);
            else if (ls != '+') {
                size_t l = q;
                while (l > a && s[l - 1] != '\n') l--;
                if (l > a && ws_lead(s + l, q - l) == q - l) kept = l;
            }
            lx_text(L, a, kept, L->line);
            L->line += count_nl(s + a, e2 - a);
            L->pos = e2;
            if (rs == '-') lx_skip_ws(L);
            else if (rs != '+' && L->pos < L->len && s[L->pos] == '\n') L->pos++, L->line++;
        } else {
            int blk = kind == '%';
            lx_emit(L, blk ? TK_BBEGIN : TK_VBEGIN, tag_line, s + tag, 2);
            L->pos = tag + 2 + (sign == '-' || (blk && sign == '+'));
            lx_tag(L, blk, tag_line);
        }
        line_start = L->pos > 0 && s[L->pos - 1] == '\n';
    }
    lx_emit(L, TK_EOF, L->line, s + L->len, 0);
}

// ---------------------------------------------------------------- nodes and parser

enum {
    // statements
    S_BODY, S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_BREAK, S_CONT,
    // expressions
    E_CONST, E_NAME, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_KWARG, E_FILTER, E_TEST, E_BIN, E_CMP, E_NEG, E_POS, E_NOT,
    E_AND, E_OR, E_COND, E_LIST, E_TUPLE, E_DICT, E_CONCAT,
};
enum { OP_ADD = 1, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

typedef struct node {
    uint8_t k, op;    // kind; operator, or 1 for a negated test
    uint16_t depth;   // height of the subtree
    int line, id;     // id: filter or test number
    const char *name;
    jv val;
    struct node *a, *b, *c, *d, *e;
    struct node **kid;
    size_t nkid;
} node;

// Filters and tests, looked up by name when parsing (unknown names are syntax errors, as in Jinja).
enum { F_ABS, F_CAPITALIZE, F_COUNT, F_DEFAULT, F_DICTSORT, F_FIRST, F_FLOAT, F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH,
       F_LIST, F_LOWER, F_MAP, F_MAX, F_MIN, F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_SAFE, F_SELECT,
       F_SELECTATTR, F_SORT, F_STRING, F_SUM, F_TITLE, F_TOJSON, F_TRIM, F_UNIQUE, F_UPPER, F_WORDCOUNT };
static const struct { const char *name; int id; } filters[] = {
    {"abs", F_ABS}, {"capitalize", F_CAPITALIZE}, {"count", F_COUNT}, {"d", F_DEFAULT}, {"default", F_DEFAULT}, {"dictsort", F_DICTSORT},
    {"first", F_FIRST}, {"float", F_FLOAT}, {"int", F_INT}, {"items", F_ITEMS}, {"join", F_JOIN}, {"last", F_LAST},
    {"length", F_LENGTH}, {"list", F_LIST}, {"lower", F_LOWER}, {"map", F_MAP}, {"max", F_MAX}, {"min", F_MIN},
    {"reject", F_REJECT}, {"rejectattr", F_REJECTATTR}, {"replace", F_REPLACE}, {"reverse", F_REVERSE},
    {"safe", F_SAFE}, {"select", F_SELECT}, {"selectattr", F_SELECTATTR}, {"sort", F_SORT}, {"string", F_STRING},
    {"sum", F_SUM}, {"title", F_TITLE}, {"tojson", F_TOJSON}, {"trim", F_TRIM}, {"unique", F_UNIQUE},
    {"upper", F_UPPER}, {"wordcount", F_WORDCOUNT},
};
enum { T_DEFINED, T_UNDEFINED, T_NONE, T_STRING, T_NUMBER, T_INTEGER, T_FLOAT, T_BOOLEAN, T_TRUE, T_FALSE,
       T_MAPPING, T_ITERABLE, T_SEQUENCE, T_CALLABLE, T_EQ, T_NE, T_LT, T_LE, T_GT, T_GE, T_IN, T_ODD, T_EVEN,
       T_DIVISIBLEBY, T_SAMEAS, T_LOWER, T_UPPER };
static const struct { const char *name; int id; } tests[] = {
    {"defined", T_DEFINED}, {"undefined", T_UNDEFINED}, {"none", T_NONE}, {"string", T_STRING},
    {"number", T_NUMBER}, {"integer", T_INTEGER}, {"float", T_FLOAT}, {"boolean", T_BOOLEAN}, {"true", T_TRUE},
    {"false", T_FALSE}, {"mapping", T_MAPPING}, {"iterable", T_ITERABLE}, {"sequence", T_SEQUENCE},
    {"callable", T_CALLABLE}, {"eq", T_EQ}, {"equalto", T_EQ}, {"==", T_EQ}, {"ne", T_NE}, {"!=", T_NE},
    {"lt", T_LT}, {"lessthan", T_LT}, {"<", T_LT}, {"le", T_LE}, {"<=", T_LE}, {"gt", T_GT}, {"greaterthan", T_GT},
    {">", T_GT}, {"ge", T_GE}, {">=", T_GE}, {"in", T_IN}, {"odd", T_ODD}, {"even", T_EVEN},
    {"divisibleby", T_DIVISIBLEBY}, {"sameas", T_SAMEAS}, {"lower", T_LOWER}, {"upper", T_UPPER},
};
static int filter_id(const char *n) {
    for (size_t i = 0; i < sizeof filters / sizeof *filters; i++)
        if (!strcmp(filters[i].name, n)) return filters[i].id;
    return -1;
}
static int test_id(const char *n) {
    for (size_t i = 0; i < sizeof tests / sizeof *tests; i++)
        if (!strcmp(tests[i].name, n)) return tests[i].id;
    return -1;
}

typedef struct {
    arena *ar;    // nodes (the template's arena)
    jerr *err;
    const tok *t;
    size_t i;
    int nest, rec, loops;
} parser;

static const tok *cur(parser *P) { return &P->t[P->i]; }
static int is_op(const tok *t, const char *op) { return t->type == TK_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n); }
static int is_name(const tok *t, const char *nm) { return t->type == TK_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n); }
static const char *tok_desc(parser *P, const tok *t) {
    switch (t->type) {
    case TK_EOF: return "end of template";
    case TK_VEND: return "end of print statement '}}'";
    case TK_BEND: return "end of statement block '%}'";
    case TK_TEXT: return "template text";
    case TK_STR: return "string literal";
    default: {
        size_t n = t->n > 40 ? 40 : t->n;
        char *s = ar_alloc(P->ar, n + 3);
        s[0] = '\'', memcpy(s + 1, t->s, n), s[n + 1] = '\'', s[n + 2] = 0;
        return s;
    }
    }
}
static _Noreturn void unexpected(parser *P, const char *want) {
    const tok *t = cur(P);
    if (want) jfail(P->err, t->line, "expected %s, got %s", want, tok_desc(P, t));
    jfail(P->err, t->line, "unexpected %s", tok_desc(P, t));
}
static void expect_op(parser *P, const char *op) {
    if (!is_op(cur(P), op)) {
        char w[8];
        snprintf(w, sizeof w, "'%s'", op);
        unexpected(P, w);
    }
    P->i++;
}
static const char *expect_name(parser *P) {
    const tok *t = cur(P);
    if (t->type != TK_NAME) unexpected(P, "a name");
    P->i++;
    return ar_strndup(P->ar, t->s, t->n);
}

// Filter and test names may be dotted ("a.b"), as in Jinja.
static const char *expect_dotted(parser *P) {
    const char *n = expect_name(P);
    while (is_op(cur(P), ".") && P->t[P->i + 1].type == TK_NAME) {
        const tok *t = &P->t[P->i + 1];
        size_t a = strlen(n);
        char *m = ar_alloc(P->ar, a + t->n + 2);
        memcpy(m, n, a), m[a] = '.', memcpy(m + a + 1, t->s, t->n), m[a + 1 + t->n] = 0;
        n = m;
        P->i += 2;
    }
    return n;
}

static node *mk(parser *P, int k, int line) {
    node *n = ar_zalloc(P->ar, sizeof(node));
    n->k = (uint8_t)k, n->line = line, n->depth = 1;
    return n;
}
// Sets n's depth from its children; a tree too deep to render without deep recursion is an error.
static node *fin(parser *P, node *n) {
    unsigned d = 0;
    node *ch[5] = {n->a, n->b, n->c, n->d, n->e};
    for (int i = 0; i < 5; i++)
        if (ch[i] && ch[i]->depth > d) d = ch[i]->depth;
    for (size_t i = 0; i < n->nkid; i++)
        if (n->kid[i]->depth > d) d = n->kid[i]->depth;
    if (d + 1 > J_MAX_DEPTH) jfail(P->err, n->line, "template nested too deeply");
    n->depth = (uint16_t)(d + 1);
    return n;
}
static void add_kid(parser *P, node *n, node *k, size_t *cap) {
    n->kid = ar_grow(P->ar, n->kid, cap, n->nkid + 1, sizeof(node *));
    n->kid[n->nkid++] = k;
}
static void rec_enter(parser *P) {
    if (++P->rec > J_MAX_REC) jfail(P->err, cur(P)->line, "expression nested too deeply");
}

static node *parse_expr(parser *P, int condexpr);
static node *parse_unary(parser *P, int with_filter);

// Arguments of a call, filter or test after '(' (consumed here up to ')').
static void parse_args(parser *P, node *n) {
    size_t cap = n->nkid;
    expect_op(P, "(");
    while (!is_op(cur(P), ")")) {
        if (cur(P)->type == TK_NAME && is_op(&P->t[P->i + 1], "=")) {
            node *kw = mk(P, E_KWARG, cur(P)->line);
            kw->name = expect_name(P);
            P->i++;
            kw->a = parse_expr(P, 1);
            add_kid(P, n, fin(P, kw), &cap);
        } else {
            if (is_op(cur(P), "*") || is_op(cur(P), "**")) jfail(P->err, cur(P)->line, "*args and **kwargs are not supported");
            add_kid(P, n, parse_expr(P, 1), &cap);
        }
        if (!is_op(cur(P), ",")) break;
        P->i++;
    }
    expect_op(P, ")");
}

static node *parse_primary(parser *P) {
    const tok *t = cur(P);
    node *n;
    if (t->type == TK_NAME) {
        P->i++;
        if (is_name(t, "true") || is_name(t, "True")) { n = mk(P, E_CONST, t->line); n->val = mk_bool(1); return n; }
        if (is_name(t, "false") || is_name(t, "False")) { n = mk(P, E_CONST, t->line); n->val = mk_bool(0); return n; }
        if (is_name(t, "none") || is_name(t, "None")) { n = mk(P, E_CONST, t->line); n->val = mk_none(); return n; }
        n = mk(P, E_NAME, t->line);
        n->name = ar_strndup(P->ar, t->s, t->n);
        return n;
    }
    if (t->type == TK_STR) {   // adjacent literals concatenate
        sbuf b = {.ar = P->ar};
        sb_add(&b, "", 0);
        while (cur(P)->type == TK_STR) sb_add(&b, cur(P)->s, cur(P)->n), P->i++;
        n = mk(P, E_CONST, t->line);
        n->val = mk_str(b.p, b.n);
        return n;
    }
    if (t->type == TK_INT || t->type == TK_FLOAT) {
        P->i++;
        n = mk(P, E_CONST, t->line);
        n->val = t->type == TK_INT ? mk_int(t->i) : mk_float(t->f);
        return n;
    }
    if (is_op(t, "(")) {
        P->i++;
        rec_enter(P);
        if (is_op(cur(P), ")")) { P->i++; P->rec--; n = mk(P, E_TUPLE, t->line); return n; }
        node *e = parse_expr(P, 1);
        if (is_op(cur(P), ",")) {
            n = mk(P, E_TUPLE, t->line);
            size_t cap = 0;
            add_kid(P, n, e, &cap);
            while (is_op(cur(P), ",")) {
                P->i++;
                if (is_op(cur(P), ")")) break;
                add_kid(P, n, parse_expr(P, 1), &cap);
            }
            e = fin(P, n);
        }
        expect_op(P, ")");
        P->rec--;
        return e;
    }
    if (is_op(t, "[") || is_op(t, "{")) {
        int dict = is_op(t, "{");
        P->i++;
        rec_enter(P);
        n = mk(P, dict ? E_DICT : E_LIST, t->line);
        size_t cap = 0;
        const char *close = dict ? "}" : "]";
        while (!is_op(cur(P), close)) {
            add_kid(P, n, parse_expr(P, 1), &cap);
            if (dict) { expect_op(P, ":"); add_kid(P, n, parse_expr(P, 1), &cap); }
            if (!is_op(cur(P), ",")) break;
            P->i++;
        }
        expect_op(P, close);
        P->rec--;
        return fin(P, n);
    }
    unexpected(P, "an expression");
}

static node *parse_postfix(parser *P, node *n) {
    for (;;) {
        const tok *t = cur(P);
        if (is_op(t, ".")) {
            P->i++;
            if (cur(P)->type == TK_INT) {   // a.0 is a[0]
                node *x = mk(P, E_INDEX, t->line);
                x->a = n, x->b = mk(P, E_CONST, t->line), x->b->val = mk_int(cur(P)->i);
                P->i++;
                n = fin(P, x);
                continue;
            }
            node *x = mk(P, E_ATTR, t->line);
            x->a = n, x->name = expect_name(P);
            n = fin(P, x);
        } else if (is_op(t, "[")) {
            P->i++;
            rec_enter(P);
            node *parts[3] = {0};
            int colons = 0;
            for (;;) {
                if (is_op(cur(P), ":")) {
                    if (++colons > 2) unexpected(P, NULL);
                    P->i++;
                    continue;
                }
                if (is_op(cur(P), "]")) break;
                if (parts[colons]) unexpected(P, "':' or ']'");
                parts[colons] = parse_expr(P, 1);
            }
            if (!colons && !parts[0]) unexpected(P, "an expression");
            expect_op(P, "]");
            P->rec--;
            node *x = mk(P, colons ? E_SLICE : E_INDEX, t->line);
            x->a = n, x->b = parts[0], x->c = parts[1], x->d = parts[2];
            n = fin(P, x);
        } else if (is_op(t, "(")) {
            rec_enter(P);
            node *x = mk(P, E_CALL, t->line);
            x->a = n;
            parse_args(P, x);
            P->rec--;
            n = fin(P, x);
        } else return n;
    }
}

static node *parse_test(parser *P, node *n) {
    node *x = mk(P, E_TEST, cur(P)->line);
    P->i++;   // 'is'
    if (is_name(cur(P), "not")) x->op = 1, P->i++;
    const tok *t = cur(P);
    if (t->type != TK_NAME && !is_op(t, "==") && !is_op(t, "!=") && !is_op(t, "<") && !is_op(t, "<=") &&
        !is_op(t, ">") && !is_op(t, ">="))
        unexpected(P, "a test name");
    if (t->type == TK_NAME) x->name = expect_dotted(P);
    else x->name = ar_strndup(P->ar, t->s, t->n), P->i++;
    x->id = test_id(x->name);   // unknown: checked after parsing (check_names)
    x->a = n;
    t = cur(P);
    if (is_op(t, "(")) parse_args(P, x);
    else if ((t->type == TK_NAME || t->type == TK_STR || t->type == TK_INT || t->type == TK_FLOAT || is_op(t, "[") ||
              is_op(t, "{")) && !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
        if (is_name(t, "is")) jfail(P->err, t->line, "tests cannot be chained with 'is'");
        size_t cap = 0;
        rec_enter(P);
        add_kid(P, x, parse_postfix(P, parse_primary(P)), &cap);
        P->rec--;
    }
    return fin(P, x);
}

static node *parse_filters(parser *P, node *n) {
    for (;;) {
        const tok *t = cur(P);
        if (is_op(t, "|")) {
            P->i++;
            node *x = mk(P, E_FILTER, cur(P)->line);
            x->name = expect_dotted(P);
            x->id = filter_id(x->name);   // unknown: checked after parsing (check_names)
            x->a = n;
            if (is_op(cur(P), "(")) { rec_enter(P); parse_args(P, x); P->rec--; }
            n = fin(P, x);
        } else if (is_name(t, "is")) n = parse_test(P, n);
        else if (is_op(t, "(")) {
            rec_enter(P);
            node *x = mk(P, E_CALL, t->line);
            x->a = n;
            parse_args(P, x);
            P->rec--;
            n = fin(P, x);
        } else return n;
    }
}

static node *parse_unary(parser *P, int with_filter) {
    const tok *t = cur(P);
    node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        P->i++;
        rec_enter(P);
        n = mk(P, is_op(t, "-") ? E_NEG : E_POS, t->line);
        n->a = parse_unary(P, 0);
        P->rec--;
        n = fin(P, n);
    } else n = parse_postfix(P, parse_primary(P));
    return with_filter ? parse_filters(P, n) : n;
}

static node *bin(parser *P, int op, node *a, node *b, int line) {
    node *n = mk(P, E_BIN, line);
    n->op = (uint8_t)op, n->a = a, n->b = b;
    return fin(P, n);
}
static node *parse_pow(parser *P) {
    node *n = parse_unary(P, 1);
    while (is_op(cur(P), "**")) { int l = cur(P)->line; P->i++; n = bin(P, OP_POW, n, parse_unary(P, 1), l); }
    return n;
}
static node *parse_math2(parser *P) {
    node *n = parse_pow(P);
    for (;;) {
        const tok *t = cur(P);
        int op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV : is_op(t, "//") ? OP_FDIV : is_op(t, "%") ? OP_MOD : 0;
        if (!op) return n;
        P->i++;
        n = bin(P, op, n, parse_pow(P), t->line);
    }
}
static node *parse_concat(parser *P) {
    node *n = parse_math2(P);
    if (!is_op(cur(P), "~")) return n;
    node *c = mk(P, E_CONCAT, cur(P)->line);
    size_t cap = 0;
    add_kid(P, c, n, &cap);
    while (is_op(cur(P), "~")) { P->i++; add_kid(P, c, parse_math2(P), &cap); }
    return fin(P, c);
}
static node *parse_math1(parser *P) {
    node *n = parse_concat(P);
    for (;;) {
        const tok *t = cur(P);
        int op = is_op(t, "+") ? OP_ADD : is_op(t, "-") ? OP_SUB : 0;
        if (!op) return n;
        P->i++;
        n = bin(P, op, n, parse_concat(P), t->line);
    }
}
static node *parse_compare(parser *P) {
    node *n = parse_math1(P);
    node *c = NULL;
    size_t cap = 0;
    for (;;) {
        const tok *t = cur(P);
        int op = is_op(t, "==") ? OP_EQ : is_op(t, "!=") ? OP_NE : is_op(t, "<") ? OP_LT : is_op(t, "<=") ? OP_LE
               : is_op(t, ">") ? OP_GT : is_op(t, ">=") ? OP_GE : is_name(t, "in") ? OP_IN : 0;
        if (!op && is_name(t, "not") && is_name(&P->t[P->i + 1], "in")) op = OP_NOTIN, P->i++;
        if (!op) break;
        P->i++;
        if (!c) { c = mk(P, E_CMP, t->line); c->a = n; }
        node *o = mk(P, E_BIN, t->line);
        o->op = (uint8_t)op, o->a = parse_math1(P);
        add_kid(P, c, fin(P, o), &cap);
    }
    return c ? fin(P, c) : n;
}
static node *parse_not(parser *P) {
    if (!is_name(cur(P), "not")) return parse_compare(P);
    node *n = mk(P, E_NOT, cur(P)->line);
    P->i++;
    rec_enter(P);
    n->a = parse_not(P);
    P->rec--;
    return fin(P, n);
}
// A left-associative chain of sub-expressions joined by keyword kw into nodes of kind (and, or).
static node *parse_chain(parser *P, node *(*sub)(parser *), const char *kw, int kind) {
    node *n = sub(P);
    while (is_name(cur(P), kw)) {
        node *x = mk(P, kind, cur(P)->line);
        P->i++;
        x->a = n, x->b = sub(P);
        n = fin(P, x);
    }
    return n;
}
static node *parse_and(parser *P) { return parse_chain(P, parse_not, "and", E_AND); }
static node *parse_or(parser *P) { return parse_chain(P, parse_and, "or", E_OR); }
static node *parse_expr(parser *P, int condexpr) {
    rec_enter(P);
    node *n = parse_or(P);
    while (condexpr && is_name(cur(P), "if")) {
        node *x = mk(P, E_COND, cur(P)->line);
        P->i++;
        x->b = n, x->a = parse_or(P);
        if (is_name(cur(P), "else")) { P->i++; x->c = parse_or(P); }
        n = fin(P, x);
    }
    P->rec--;
    return n;
}
// expr [, expr ...] as a tuple when there is a comma.
static node *parse_tuple(parser *P, int condexpr) {
    int line = cur(P)->line;
    node *n = parse_expr(P, condexpr);
    if (!is_op(cur(P), ",")) return n;
    node *t = mk(P, E_TUPLE, line);
    size_t cap = 0;
    add_kid(P, t, n, &cap);
    while (is_op(cur(P), ",")) {
        P->i++;
        if (cur(P)->type == TK_BEND || cur(P)->type == TK_VEND || is_op(cur(P), "=") || is_name(cur(P), "in")) break;
        add_kid(P, t, parse_expr(P, condexpr), &cap);
    }
    return fin(P, t);
}
// Assignment target: name, name.attr, or names separated by commas.
static node *parse_target(parser *P, int allow_attr) {
    int line = cur(P)->line;
    node *n = mk(P, E_NAME, line);
    n->name = expect_name(P);
    if (allow_attr && is_op(cur(P), ".")) {
        P->i++;
        node *x = mk(P, E_ATTR, line);
        x->a = n, x->name = expect_name(P);
        return fin(P, x);
    }
    if (!is_op(cur(P), ",")) return n;
    node *t = mk(P, E_TUPLE, line);
    size_t cap = 0;
    add_kid(P, t, n, &cap);
    while (is_op(cur(P), ",")) {
        P->i++;
        node *m = mk(P, E_NAME, cur(P)->line);
        m->name = expect_name(P);
        add_kid(P, t, m, &cap);
    }
    return fin(P, t);
}
static void expect_bend(parser *P) {
    if (cur(P)->type != TK_BEND) unexpected(P, "end of statement block '%}'");
    P->i++;
}

static node *parse_body(parser *P, const char *const *ends, int open_line, const char *opener);

static int is_end_tag(const tok *t) {
    static const char *e[] = {"endfor", "endif", "elif", "else", "endset", "endgeneration", "endraw", "endmacro", "endcall", "endfilter", "endblock", "endwith"};
    for (size_t i = 0; i < sizeof e / sizeof *e; i++)
        if (is_name(t, e[i])) return 1;
    return 0;
}

static node *parse_stmt(parser *P) {
    const tok *t = cur(P);   // the name after {%
    int line = t->line;
    if (t->type != TK_NAME) unexpected(P, "a statement name");
    P->i++;
    if (is_name(t, "for")) {
        node *n = mk(P, S_FOR, line);
        n->a = parse_target(P, 0);
        if (!is_name(cur(P), "in")) unexpected(P, "'in'");
        P->i++;
        n->b = parse_tuple(P, 0);
        if (is_name(cur(P), "if")) { P->i++; n->e = parse_expr(P, 1); }
        if (is_name(cur(P), "recursive")) jfail(P->err, cur(P)->line, "recursive loops are not supported");
        expect_bend(P);
        static const char *const ends[] = {"endfor", "else", NULL};
        P->loops++;
        n->c = parse_body(P, ends, line, "for");
        P->loops--;
        if (is_name(cur(P), "else")) {
            P->i++;
            expect_bend(P);
            static const char *const ends2[] = {"endfor", NULL};
            n->d = parse_body(P, ends2, line, "for");
        }
        P->i++;   // endfor
        expect_bend(P);
        return fin(P, n);
    }
    if (is_name(t, "if") || is_name(t, "elif")) {
        node *n = mk(P, S_IF, line);
        n->a = parse_tuple(P, 0);   // as Jinja: no inline if in an if test
        expect_bend(P);
        static const char *const ends[] = {"endif", "elif", "else", NULL};
        n->b = parse_body(P, ends, line, "if");
        if (is_name(cur(P), "elif")) {   // an elif chain nests like blocks
            if (++P->nest > J_MAX_NEST) jfail(P->err, cur(P)->line, "blocks nested too deeply (over %d)", J_MAX_NEST);
            n->c = parse_stmt(P);   // consumes through endif
            P->nest--;
            return fin(P, n);
        }
        if (is_name(cur(P), "else")) {
            P->i++;
            expect_bend(P);
            static const char *const ends2[] = {"endif", NULL};
            n->c = parse_body(P, ends2, line, "if");
        }
        P->i++;   // endif
        expect_bend(P);
        return fin(P, n);
    }
    if (is_name(t, "set")) {
        node *tg = parse_target(P, 1);
        if (is_op(cur(P), "=")) {
            P->i++;
            node *n = mk(P, S_SET, line);
            n->a = tg, n->b = parse_tuple(P, 1);
            expect_bend(P);
            return fin(P, n);
        }
        if (tg->k != E_NAME) unexpected(P, "'='");
        if (is_op(cur(P), "|")) jfail(P->err, cur(P)->line, "filters on a block set are not supported");
        expect_bend(P);
        node *n = mk(P, S_SETBLOCK, line);
        static const char *const ends[] = {"endset", NULL};
        n->a = tg, n->b = parse_body(P, ends, line, "set");
        P->i++;
        expect_bend(P);
        return fin(P, n);
    }
    if (is_name(t, "break") || is_name(t, "continue")) {
        if (!P->loops) jfail(P->err, line, "'%.*s' outside a loop", (int)t->n, t->s);
        expect_bend(P);
        return mk(P, is_name(t, "break") ? S_BREAK : S_CONT, line);
    }
    if (is_name(t, "generation")) {   // transformers' assistant-mask marker: rendered as its body
        expect_bend(P);
        static const char *const ends[] = {"endgeneration", NULL};
        node *n = parse_body(P, ends, line, "generation");
        P->i++;
        expect_bend(P);
        return n;
    }
    static const char *unsup[] = {"macro", "call", "filter", "block", "extends", "include", "import", "from", "with", "do", "autoescape"};
    for (size_t i = 0; i < sizeof unsup / sizeof *unsup; i++)
        if (is_name(t, unsup[i])) jfail(P->err, line, "'%s' is not supported", unsup[i]);
    if (is_end_tag(t)) jfail(P->err, line, "unexpected '%.*s'", (int)t->n, t->s);
    jfail(P->err, line, "unknown tag '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
}

// Statements up to a {% NAME %} with NAME in `ends` (left at that name) or, when ends is NULL, the end.
static node *parse_body(parser *P, const char *const *ends, int open_line, const char *opener) {
    if (++P->nest > J_MAX_NEST) jfail(P->err, open_line, "blocks nested too deeply (over %d)", J_MAX_NEST);
    node *body = mk(P, S_BODY, cur(P)->line);
    size_t cap = 0;
    for (;;) {
        const tok *t = cur(P);
        if (t->type == TK_EOF) {
            if (ends) jfail(P->err, open_line, "'%s' is never closed (expected '%s' before the end of the template)", opener, ends[0]);
            break;
        }
        if (t->type == TK_TEXT) {
            node *n = mk(P, S_TEXT, t->line);
            n->val = mk_str(t->s, t->n);
            add_kid(P, body, n, &cap);
            P->i++;
        } else if (t->type == TK_VBEGIN) {
            P->i++;
            node *n = mk(P, S_OUT, t->line);
            n->a = parse_tuple(P, 1);
            if (cur(P)->type != TK_VEND) unexpected(P, "end of print statement '}}'");
            P->i++;
            add_kid(P, body, fin(P, n), &cap);
        } else if (t->type == TK_BBEGIN) {
            P->i++;
            int hit = 0;
            for (int k = 0; ends && ends[k]; k++)
                if (is_name(cur(P), ends[k])) hit = 1;
            if (hit) break;
            if (!ends && is_end_tag(cur(P))) jfail(P->err, cur(P)->line, "unexpected '%.*s' (no block is open)", (int)cur(P)->n, cur(P)->s);
            if (ends && is_end_tag(cur(P)))
                jfail(P->err, cur(P)->line, "unexpected '%.*s' inside '%s' opened on line %d (expected '%s')", (int)cur(P)->n, cur(P)->s, opener, open_line, ends[0]);
            add_kid(P, body, parse_stmt(P), &cap);
        } else unexpected(P, NULL);
    }
    P->nest--;
    return fin(P, body);
}

// Unknown filters and tests are syntax errors, except inside an if statement or an inline if, where Jinja only
// fails when they are reached (its "soft" frames; a for or set block inside starts a hard one again).
static void check_names(parser *P, const node *n, int soft) {
    if (!n) return;
    if ((n->k == E_FILTER || n->k == E_TEST) && n->id < 0 && !soft)
        jfail(P->err, n->line, "unknown %s '%s'", n->k == E_FILTER ? "filter" : "test", n->name);
    int s = n->k == S_IF || n->k == E_COND ? 1 : soft;
    if (n->k == S_FOR) {
        check_names(P, n->a, soft), check_names(P, n->b, soft);
        check_names(P, n->c, 0), check_names(P, n->d, 0), check_names(P, n->e, 0);
        return;
    }
    if (n->k == S_SETBLOCK) s = 0;
    const node *ch[5] = {n->a, n->b, n->c, n->d, n->e};
    for (int i = 0; i < 5; i++) check_names(P, ch[i], s);
    for (size_t i = 0; i < n->nkid; i++) check_names(P, n->kid[i], s);
}

// ---------------------------------------------------------------- renderer state

struct jinja_template { arena ar; node *root; char *where; };

typedef struct frame { struct frame *up; size_t n, cap; const char **names; jv *vals; } frame;

typedef struct {
    arena ar;
    jerr err;
    sbuf out;
    frame root, *top;
    const jdict *vars;
    long iters, work;
} rctx;

enum { FN_RANGE, FN_NAMESPACE, FN_DICT, FN_RAISE, FN_STRFTIME, FN_CYCLE,
       M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_STARTSWITH, M_ENDSWITH, M_UPPER, M_LOWER, M_TITLE, M_CAPITALIZE,
       M_REPLACE, M_FIND, M_COUNT, M_JOIN, M_SPLITLINES, M_ITEMS, M_KEYS, M_VALUES, M_GET };
static const struct { const char *name; int id; } str_methods[] = {
    {"strip", M_STRIP}, {"lstrip", M_LSTRIP}, {"rstrip", M_RSTRIP}, {"split", M_SPLIT}, {"startswith", M_STARTSWITH},
    {"endswith", M_ENDSWITH}, {"upper", M_UPPER}, {"lower", M_LOWER}, {"title", M_TITLE},
    {"capitalize", M_CAPITALIZE}, {"replace", M_REPLACE}, {"find", M_FIND}, {"count", M_COUNT}, {"join", M_JOIN},
    {"splitlines", M_SPLITLINES},
};
static const struct { const char *name; int id; } globals_fn[] = {
    {"range", FN_RANGE}, {"namespace", FN_NAMESPACE}, {"dict", FN_DICT}, {"raise_exception", FN_RAISE},
    {"strftime_now", FN_STRFTIME},
};

static jv mk_fn(rctx *c, int id, jv self) {
    jv v = {.t = V_FUNC};
    v.u.fn = ar_alloc(&c->ar, sizeof(jfn));
    v.u.fn->id = id, v.u.fn->self = self;
    return v;
}
// An undefined value that carries a whole message ("'dict object' has no attribute 'x'").
static __attribute__((format(printf, 2, 3))) jv undef_msg(rctx *c, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    jv v = mk_undef(ar_strndup(&c->ar, buf, strlen(buf)));
    v.tup = 1;
    return v;
}
static _Noreturn void fail_undef(rctx *c, const jv *v, int line) {
    if (v->tup) jfail(&c->err, line, "%s", v->u.s);
    if (v->u.s) jfail(&c->err, line, "'%s' is undefined", v->u.s);
    jfail(&c->err, line, "undefined value");
}
static void work(rctx *c, size_t n) {
    c->work += (long)(n < (size_t)J_MAX_WORK ? n : (size_t)J_MAX_WORK);
    if (c->work > J_MAX_WORK) jfail(&c->err, c->err.line, "template takes too long to render (over %ld steps)", J_MAX_WORK);
}

static void frame_set(rctx *c, frame *f, const char *name, jv v) {
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) { f->vals[i] = v; return; }
    size_t cap = f->cap;
    f->names = ar_grow(&c->ar, f->names, &cap, f->n + 1, sizeof(char *));
    f->vals = ar_grow(&c->ar, f->vals, &f->cap, f->n + 1, sizeof(jv));
    f->names[f->n] = name, f->vals[f->n] = v, f->n++;
}
static jv lookup(rctx *c, const char *name) {
    for (frame *f = c->top; f; f = f->up)
        for (size_t i = f->n; i-- > 0;)
            if (!strcmp(f->names[i], name)) return f->vals[i];
    if (c->vars) {
        jv *v = dict_get(c->vars, name, strlen(name));
        if (v) return *v;
    }
    for (size_t i = 0; i < sizeof globals_fn / sizeof *globals_fn; i++)
        if (!strcmp(globals_fn[i].name, name)) return mk_fn(c, globals_fn[i].id, mk_none());
    return mk_undef(name);
}

// ---------------------------------------------------------------- printing

static void put_repr(rctx *c, sbuf *b, const jv *v, int depth);

// Python str(v).
static void put_str(rctx *c, sbuf *b, const jv *v) {
    char buf[48];
    switch (v->t) {
    case V_UNDEF: return;
    case V_NONE: sb_puts(b, "None"); return;
    case V_BOOL: sb_puts(b, v->u.i ? "True" : "False"); return;
    case V_INT: snprintf(buf, sizeof buf, "%lld", (long long)v->u.i); sb_puts(b, buf); return;
    case V_FLOAT: fmt_float(v->u.f, buf, sizeof buf); sb_puts(b, buf); return;
    case V_STR: sb_add(b, v->u.s, v->n); return;
    default: put_repr(c, b, v, 0);
    }
}
static void put_pystr(sbuf *b, const char *s, size_t n) {
    int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    sb_putc(b, q);
    for (size_t i = 0, len; i < n; i += len) {
        unsigned cp = utf8_dec((const unsigned char *)s + i, n - i, &len);
        char e[12];
        if (cp == (unsigned char)q || cp == '\\') { sb_putc(b, '\\'); sb_putc(b, (char)cp); }
        else if (cp == '\n') sb_puts(b, "\\n");
        else if (cp == '\r') sb_puts(b, "\\r");
        else if (cp == '\t') sb_puts(b, "\\t");
        else if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || (len == 1 && cp >= 0x80)) { snprintf(e, sizeof e, "\\x%02x", cp & 0xFF); sb_puts(b, e); }
        else sb_add(b, s + i, len);
    }
    sb_putc(b, q);
}
static void put_repr(rctx *c, sbuf *b, const jv *v, int depth) {
    if (depth > J_MAX_VDEPTH) jfail(&c->err, c->err.line, "value nested too deeply to print");
    work(c, 1);
    switch (v->t) {
    case V_UNDEF: sb_puts(b, "Undefined"); return;
    case V_STR: put_pystr(b, v->u.s, v->n); return;
    case V_LIST:
        sb_putc(b, v->tup ? '(' : '[');
        for (size_t i = 0; i < v->n; i++) {
            if (i) sb_puts(b, ", ");
            put_repr(c, b, &v->u.a[i], depth + 1);
        }
        if (v->tup && v->n == 1) sb_putc(b, ',');
        sb_putc(b, v->tup ? ')' : ']');
        return;
    case V_DICT:
        if (v->tup) sb_puts(b, "<Namespace ");
        sb_putc(b, '{');
        for (size_t i = 0; i < v->u.d->n; i++) {
            if (i) sb_puts(b, ", ");
            put_repr(c, b, &v->u.d->k[i], depth + 1);
            sb_puts(b, ": ");
            put_repr(c, b, &v->u.d->v[i], depth + 1);
        }
        sb_putc(b, '}');
        if (v->tup) sb_putc(b, '>');
        return;
    case V_FUNC: sb_puts(b, "<function>"); return;
    case V_LOOP: sb_puts(b, "<LoopContext>"); return;
    default: put_str(c, b, v);
    }
}
static jv to_str(rctx *c, const jv *v) {
    if (v->t == V_STR) return *v;
    sbuf b = {.ar = &c->ar};
    sb_add(&b, "", 0);
    put_str(c, &b, v);
    return mk_str(b.p, b.n);
}

typedef struct { const char *indent; int ascii, sort; const char *isep, *ksep; } jsonopt;

static void put_json_str(sbuf *b, const char *s, size_t n, int ascii) {
    sb_putc(b, '"');
    for (size_t i = 0, len; i < n; i += len) {
        unsigned cp = utf8_dec((const unsigned char *)s + i, n - i, &len);
        char e[16];
        switch (cp) {
        case '"': sb_puts(b, "\\\""); continue;
        case '\\': sb_puts(b, "\\\\"); continue;
        case '\n': sb_puts(b, "\\n"); continue;
        case '\r': sb_puts(b, "\\r"); continue;
        case '\t': sb_puts(b, "\\t"); continue;
        case '\b': sb_puts(b, "\\b"); continue;
        case '\f': sb_puts(b, "\\f"); continue;
        }
        if (cp < 0x20 || (ascii && cp > 0x7E && cp != 0x7F)) {
            if (cp >= 0x10000) {
                unsigned h = 0xD800 + ((cp - 0x10000) >> 10), l = 0xDC00 + ((cp - 0x10000) & 0x3FF);
                snprintf(e, sizeof e, "\\u%04x\\u%04x", h, l);
            } else snprintf(e, sizeof e, "\\u%04x", cp);
            sb_puts(b, e);
        } else sb_add(b, s + i, len);
    }
    sb_putc(b, '"');
}
static void json_nl(sbuf *b, const jsonopt *o, int level) {
    sb_putc(b, '\n');
    for (int i = 0; i < level; i++) sb_puts(b, o->indent);
}
static int key_cmp(const void *x, const void *y);
// json.dumps(v, ...) as transformers' tojson calls it.
static void put_json(rctx *c, sbuf *b, const jv *v, const jsonopt *o, int level) {
    if (level > J_MAX_VDEPTH) jfail(&c->err, c->err.line, "value nested too deeply for tojson");
    work(c, 1);
    char buf[48];
    switch (v->t) {
    case V_NONE: sb_puts(b, "null"); return;
    case V_BOOL: sb_puts(b, v->u.i ? "true" : "false"); return;
    case V_INT: put_str(c, b, v); return;
    case V_FLOAT:
        if (isnan(v->u.f)) sb_puts(b, "NaN");
        else if (isinf(v->u.f)) sb_puts(b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else { fmt_float(v->u.f, buf, sizeof buf); sb_puts(b, buf); }
        return;
    case V_STR: put_json_str(b, v->u.s, v->n, o->ascii); return;
    case V_LIST:
        if (!v->n) { sb_puts(b, "[]"); return; }
        sb_putc(b, '[');
        for (size_t i = 0; i < v->n; i++) {
            if (i) sb_puts(b, o->isep);
            if (o->indent) json_nl(b, o, level + 1);
            put_json(c, b, &v->u.a[i], o, level + 1);
        }
        if (o->indent) json_nl(b, o, level);
        sb_putc(b, ']');
        return;
    case V_DICT: {
        if (v->tup) break;
        const jdict *d = v->u.d;
        if (!d->n) { sb_puts(b, "{}"); return; }
        // keys as json.dumps writes them: strings, or numbers/bools/None converted
        jv *keys = ar_alloc(&c->ar, d->n * sizeof(jv) * 2);
        for (size_t i = 0; i < d->n; i++) {
            const jv *k = &d->k[i];
            if (k->t == V_STR) keys[2 * i] = *k;
            else if (k->t == V_NONE) keys[2 * i] = mk_cstr("null");
            else if (k->t == V_BOOL) keys[2 * i] = mk_cstr(k->u.i ? "true" : "false");
            else if (k->t == V_INT || k->t == V_FLOAT) keys[2 * i] = to_str(c, k);
            else jfail(&c->err, c->err.line, "tojson: keys must be str, int, float, bool or None, not %s", type_name(k));
            keys[2 * i + 1] = mk_int((int64_t)i);
        }
        if (o->sort) qsort(keys, d->n, 2 * sizeof(jv), key_cmp);
        sb_putc(b, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i) sb_puts(b, o->isep);
            if (o->indent) json_nl(b, o, level + 1);
            put_json_str(b, keys[2 * i].u.s, keys[2 * i].n, o->ascii);
            sb_puts(b, o->ksep);
            put_json(c, b, &d->v[keys[2 * i + 1].u.i], o, level + 1);
        }
        if (o->indent) json_nl(b, o, level);
        sb_putc(b, '}');
        return;
    }
    default: break;
    }
    jfail(&c->err, c->err.line, "tojson: object of type %s is not JSON serializable", type_name(v));
}
static int key_cmp(const void *x, const void *y) {
    const jv *a = x, *b = y;
    size_t n = a->n < b->n ? a->n : b->n;
    int r = memcmp(a->u.s, b->u.s, n);
    if (r) return r;
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    return a[1].u.i < b[1].u.i ? -1 : 1;   // stable
}

// ---------------------------------------------------------------- operations

// Python <, as -1/0/1; TypeError for unordered types.
static int jv_cmp(rctx *c, const jv *a, const jv *b, int line, int depth) {
    if (a->t == V_UNDEF) fail_undef(c, a, line);
    if (b->t == V_UNDEF) fail_undef(c, b, line);
    if (depth > J_MAX_VDEPTH) jfail(&c->err, line, "value nested too deeply to compare");
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return a->u.i < b->u.i ? -1 : a->u.i > b->u.i;
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = a->n < b->n ? a->n : b->n;
        int r = memcmp(a->u.s, b->u.s, n);
        if (r) return r < 0 ? -1 : 1;
        return a->n < b->n ? -1 : a->n > b->n;
    }
    if (a->t == V_LIST && b->t == V_LIST && a->tup == b->tup) {
        work(c, a->n);
        for (size_t i = 0; i < a->n && i < b->n; i++) {
            if (jv_eq(&a->u.a[i], &b->u.a[i], 0)) continue;
            return jv_cmp(c, &a->u.a[i], &b->u.a[i], line, depth + 1);
        }
        return a->n < b->n ? -1 : a->n > b->n;
    }
    jfail(&c->err, line, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
}

static int contains(rctx *c, const jv *hay, const jv *x, int line) {
    switch (hay->t) {
    case V_STR:
        if (x->t != V_STR) jfail(&c->err, line, "'in <string>' requires string as left operand, not %s", type_name(x));
        work(c, hay->n);
        if (!x->n) return 1;
        for (size_t i = 0; i + x->n <= hay->n; i++)
            if (!memcmp(hay->u.s + i, x->u.s, x->n)) return 1;
        return 0;
    case V_LIST:
        work(c, hay->n);
        for (size_t i = 0; i < hay->n; i++)
            if (jv_eq(&hay->u.a[i], x, 0)) return 1;
        return 0;
    case V_DICT:
        if (hay->tup) break;
        work(c, hay->u.d->n);
        return dict_find(hay->u.d, x) != NULL;
    case V_UNDEF: return 0;
    }
    jfail(&c->err, line, "argument of type '%s' is not iterable", type_name(hay));
}

// The items a for loop (or a filter) walks over.
static const jv *iterate(rctx *c, const jv *v, size_t *n, int line) {
    switch (v->t) {
    case V_LIST: *n = v->n; return v->u.a;
    case V_DICT:
        if (v->tup) break;
        *n = v->u.d->n;
        return v->u.d->k;
    case V_UNDEF: *n = 0; return NULL;
    case V_STR: {
        size_t k = utf8_count(v->u.s, v->n), j = 0;
        jv *a = ar_alloc(&c->ar, (k ? k : 1) * sizeof(jv));
        for (size_t i = 0, len; i < v->n; i += len) {
            utf8_dec((const unsigned char *)v->u.s + i, v->n - i, &len);
            a[j++] = mk_str(v->u.s + i, len);
        }
        *n = k;
        work(c, k);
        return a;
    }
    }
    jfail(&c->err, line, "'%s' object is not iterable", type_name(v));
}

static int64_t to_i64(rctx *c, const jv *v, const char *what, int line) {
    if (v->t == V_INT || v->t == V_BOOL) return v->u.i;
    if (v->t == V_UNDEF) fail_undef(c, v, line);
    jfail(&c->err, line, "%s must be an integer, not %s", what, type_name(v));
}

static jv arith(rctx *c, int op, const jv *a, const jv *b, int line) {
    if (a->t == V_UNDEF) fail_undef(c, a, line);
    if (b->t == V_UNDEF) fail_undef(c, b, line);
    static const char *sym[] = {"", "+", "-", "*", "/", "//", "%", "**"};
    if (is_num(a) && is_num(b)) {
        int ints = a->t != V_FLOAT && b->t != V_FLOAT;
        int64_t x = a->u.i, y = b->u.i, r;
        double f = num_f(a), g = num_f(b);
        switch (op) {
        case OP_ADD: if (ints) { if (__builtin_add_overflow(x, y, &r)) break; return mk_int(r); } return mk_float(f + g);
        case OP_SUB: if (ints) { if (__builtin_sub_overflow(x, y, &r)) break; return mk_int(r); } return mk_float(f - g);
        case OP_MUL: if (ints) { if (__builtin_mul_overflow(x, y, &r)) break; return mk_int(r); } return mk_float(f * g);
        case OP_DIV:
            if (g == 0) jfail(&c->err, line, "division by zero");
            return mk_float(f / g);
        case OP_FDIV: case OP_MOD:
            if (ints) {
                if (y == 0) jfail(&c->err, line, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) break;
                int64_t q = x / y, m = x % y;
                if (m && ((m < 0) != (y < 0))) q--, m += y;
                return mk_int(op == OP_FDIV ? q : m);
            } else {
                if (g == 0) jfail(&c->err, line, "float division by zero");
                double m = fmod(f, g);
                if (m && ((m < 0) != (g < 0))) m += g;
                return mk_float(op == OP_FDIV ? floor(f / g) : m);
            }
        case OP_POW:
            if (ints && y >= 0) {
                int64_t p = 1;
                for (int64_t k = 0; k < y; k++) {
                    if (__builtin_mul_overflow(p, x, &p)) jfail(&c->err, line, "integer overflow in **");
                    if (p == 0 || p == 1) break;
                    if (p == -1) { p = (y - k - 1) % 2 ? -p : p; break; }
                }
                return mk_int(p);
            }
            return mk_float(pow(f, g));
        }
        jfail(&c->err, line, "integer overflow in %s", sym[op]);
    }
    if (op == OP_ADD && a->t == V_STR && b->t == V_STR) {
        char *s = ar_alloc(&c->ar, a->n + b->n + 1);
        memcpy(s, a->u.s, a->n), memcpy(s + a->n, b->u.s, b->n), s[a->n + b->n] = 0;
        work(c, (a->n + b->n) / 64);
        return mk_str(s, a->n + b->n);
    }
    if (op == OP_ADD && a->t == V_LIST && b->t == V_LIST && a->tup == b->tup) {
        jv *x = ar_alloc(&c->ar, (a->n + b->n + 1) * sizeof(jv));
        memcpy(x, a->u.a, a->n * sizeof(jv)), memcpy(x + a->n, b->u.a, b->n * sizeof(jv));
        work(c, a->n + b->n);
        jv r = mk_list(x, a->n + b->n);
        r.tup = a->tup;
        return r;
    }
    if (op == OP_MUL && (((a->t == V_STR || a->t == V_LIST) && (b->t == V_INT || b->t == V_BOOL)) ||
                         ((b->t == V_STR || b->t == V_LIST) && (a->t == V_INT || a->t == V_BOOL)))) {
        const jv *s = a->t == V_STR || a->t == V_LIST ? a : b;
        int64_t k = (s == a ? b : a)->u.i;
        if (k < 0) k = 0;
        size_t unit = s->t == V_STR ? s->n : s->n * sizeof(jv);
        if (unit && (uint64_t)k > J_MAX_MEM / unit) jfail(&c->err, line, "repeated value too large");
        size_t tot = unit * (size_t)k;
        char *p = ar_alloc(&c->ar, tot + 1);
        for (int64_t i = 0; i < k; i++) memcpy(p + (size_t)i * unit, s->t == V_STR ? (const void *)s->u.s : (const void *)s->u.a, unit);
        work(c, tot / 64);
        if (s->t == V_STR) { p[tot] = 0; return mk_str(p, tot); }
        jv r = mk_list((jv *)p, s->n * (size_t)k);
        r.tup = s->tup;
        return r;
    }
    if (op == OP_MOD && a->t == V_STR) jfail(&c->err, line, "'%%' string formatting is not supported");
    jfail(&c->err, line, "unsupported operand type(s) for %s: '%s' and '%s'", sym[op], type_name(a), type_name(b));
}

static jv loop_attr(rctx *c, const jloop *lp, const char *name) {
    int64_t i = (int64_t)lp->i, n = (int64_t)lp->n;
    if (!strcmp(name, "index")) return mk_int(i + 1);
    if (!strcmp(name, "index0")) return mk_int(i);
    if (!strcmp(name, "first")) return mk_bool(i == 0);
    if (!strcmp(name, "last")) return mk_bool(i == n - 1);
    if (!strcmp(name, "length")) return mk_int(n);
    if (!strcmp(name, "revindex")) return mk_int(n - i);
    if (!strcmp(name, "revindex0")) return mk_int(n - i - 1);
    if (!strcmp(name, "depth")) return mk_int(1);
    if (!strcmp(name, "depth0")) return mk_int(0);
    if (!strcmp(name, "previtem")) return i > 0 ? lp->items[i - 1] : undef_msg(c, "there is no previous item");
    if (!strcmp(name, "nextitem")) return i + 1 < n ? lp->items[i + 1] : undef_msg(c, "there is no next item");
    if (!strcmp(name, "cycle")) { jv self = {.t = V_LOOP}; self.u.lp = (jloop *)lp; return mk_fn(c, FN_CYCLE, self); }
    return undef_msg(c, "'LoopContext object' has no attribute '%s'", name);
}

// Jinja's getattr: Python attributes (methods) first, then the item.
static jv get_attr(rctx *c, const jv *o, const char *name, int line) {
    if (o->t == V_UNDEF) fail_undef(c, o, line);
    if (o->t == V_STR)
        for (size_t i = 0; i < sizeof str_methods / sizeof *str_methods; i++)
            if (!strcmp(str_methods[i].name, name)) return mk_fn(c, str_methods[i].id, *o);
    if (o->t == V_DICT) {
        if (!o->tup) {
            static const struct { const char *n; int id; } dm[] = {{"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES}, {"get", M_GET}};
            for (size_t i = 0; i < 4; i++)
                if (!strcmp(dm[i].n, name)) return mk_fn(c, dm[i].id, *o);
        }
        jv *v = dict_get(o->u.d, name, strlen(name));
        if (v) return *v;
    }
    if (o->t == V_LOOP) return loop_attr(c, o->u.lp, name);
    return undef_msg(c, "'%s object' has no attribute '%s'", type_name(o), name);
}

static jv str_index(rctx *c, const jv *s, int64_t k) {
    int64_t n = (int64_t)utf8_count(s->u.s, s->n);
    work(c, s->n / 16);
    if (k < 0) k += n;
    if (k < 0 || k >= n) return undef_msg(c, "str object has no element %lld", (long long)k);
    size_t i = 0, len = 0;
    for (int64_t j = 0; j <= k; j++) { i += len; utf8_dec((const unsigned char *)s->u.s + i, s->n - i, &len); }
    return mk_str(s->u.s + i, len);
}

// Jinja's getitem: the item first, then a string key as an attribute.
static jv get_item(rctx *c, const jv *o, const jv *k, int line) {
    if (o->t == V_UNDEF) fail_undef(c, o, line);
    if (k->t == V_UNDEF) fail_undef(c, k, line);
    if (o->t == V_DICT && !o->tup) {
        jv *v = dict_find(o->u.d, k);
        if (v) return *v;
    }
    if ((o->t == V_LIST || o->t == V_STR) && (k->t == V_INT || k->t == V_BOOL)) {
        if (o->t == V_STR) return str_index(c, o, k->u.i);
        int64_t i = k->u.i, n = (int64_t)o->n;
        if (i < 0) i += n;
        if (i >= 0 && i < n) return o->u.a[i];
        return undef_msg(c, "%s object has no element %lld", type_name(o), (long long)k->u.i);
    }
    if (k->t == V_STR) {
        char *name = ar_strndup(&c->ar, k->u.s, k->n);
        return get_attr(c, o, name, line);
    }
    sbuf b = {.ar = &c->ar};
    sb_add(&b, "", 0);
    put_repr(c, &b, k, 0);
    return undef_msg(c, "%s object has no element %.100s", type_name(o), b.p);
}

// Python slice bounds for a sequence of n items.
static size_t slice_idx(rctx *c, const jv *v, int64_t n, int64_t step, int is_start, int line) {
    int64_t i;
    if (!v || v->t == V_NONE) i = step > 0 ? (is_start ? 0 : n) : (is_start ? n - 1 : -1);
    else {
        i = to_i64(c, v, "slice index", line);
        if (i < 0) { i += n; if (i < 0) i = step > 0 ? 0 : -1; }
        else if (i >= n) i = step > 0 ? n : n - 1;
    }
    return (size_t)(i + 1);   // +1 so -1 fits in size_t
}
static jv do_slice(rctx *c, const jv *o, const jv *a, const jv *b, const jv *s, int line) {
    if (o->t == V_UNDEF) fail_undef(c, o, line);
    if (o->t != V_LIST && o->t != V_STR) return undef_msg(c, "%s object cannot be sliced", type_name(o));
    int64_t step = s && s->t != V_NONE ? to_i64(c, s, "slice step", line) : 1;
    if (step == 0) jfail(&c->err, line, "slice step cannot be zero");
    const jv *items = o->t == V_LIST ? o->u.a : NULL;
    size_t n;
    if (o->t == V_STR) items = iterate(c, o, &n, line); else n = o->n;
    int64_t i0 = (int64_t)slice_idx(c, a, (int64_t)n, step, 1, line) - 1, i1 = (int64_t)slice_idx(c, b, (int64_t)n, step, 0, line) - 1;
    size_t cnt = 0;
    if (step > 0 && i1 > i0) cnt = (size_t)((i1 - i0 + step - 1) / step);
    if (step < 0 && i0 > i1) cnt = (size_t)((i0 - i1 - step - 1) / -step);
    jv *r = ar_alloc(&c->ar, (cnt + 1) * sizeof(jv));
    for (size_t k = 0; k < cnt; k++) r[k] = items[i0 + (int64_t)k * step];
    work(c, cnt);
    if (o->t == V_LIST) { jv l = mk_list(r, cnt); l.tup = o->tup; return l; }
    sbuf sb = {.ar = &c->ar};
    sb_add(&sb, "", 0);
    for (size_t k = 0; k < cnt; k++) sb_add(&sb, r[k].u.s, r[k].n);
    return mk_str(sb.p, sb.n);
}

// ---------------------------------------------------------------- strings

static jv str_case(rctx *c, const jv *s, int mode) {   // 0 lower, 1 upper, 2 capitalize, 3 str.title, 4 Jinja title
    char *p = ar_alloc(&c->ar, s->n + 1);
    int prev = 0;   // 2,3: previous char was cased; 4: previous char was not a word separator
    for (size_t i = 0; i < s->n; i++) {
        unsigned char ch = (unsigned char)s->u.s[i];
        int up = mode == 1 || (mode == 2 && i == 0) || ((mode == 3 || mode == 4) && !prev);
        int alpha = (ch | 32) >= 'a' && (ch | 32) <= 'z';
        if (alpha) ch = up ? (unsigned char)(ch & ~32) : (unsigned char)(ch | 32);
        p[i] = (char)ch;
        if (mode == 3) prev = alpha || ch >= 0x80;
        if (mode == 4) prev = !(ch == '-' || ch == '(' || ch == '{' || ch == '[' || ch == '<' || py_space(ch));
    }
    p[s->n] = 0;
    work(c, s->n / 64);
    return mk_str(p, s->n);
}

static int in_chars(const jv *chars, const char *s, size_t len) {
    for (size_t i = 0; i + len <= chars->n; i++)
        if (!memcmp(chars->u.s + i, s, len)) return 1;
    return 0;
}
// str.strip/lstrip/rstrip (chars: NULL for whitespace).
static jv str_strip(const jv *s, const jv *chars, int left, int right) {
    size_t a = 0, b = s->n, len;
    if (!chars) {
        if (left) a = ws_lead(s->u.s, s->n);
        if (right && b > a) b = a + ws_trail(s->u.s + a, b - a);
    } else {
        while (left && a < b) {
            utf8_dec((const unsigned char *)s->u.s + a, b - a, &len);
            if (!in_chars(chars, s->u.s + a, len)) break;
            a += len;
        }
        while (right && b > a) {
            size_t k = utf8_back(s->u.s + a, b - a) + a;
            if (!in_chars(chars, s->u.s + k, b - k)) break;
            b = k;
        }
    }
    return mk_str(s->u.s + a, b - a);
}

static jv list_push(rctx *c, jv l, size_t *cap, jv x) {
    l.u.a = ar_grow(&c->ar, l.u.a, cap, l.n + 1, sizeof(jv));
    l.u.a[l.n++] = x;
    return l;
}

// str.split(sep=None, maxsplit=-1)
static jv str_split(rctx *c, const jv *s, const jv *sep, int64_t maxsplit) {
    jv l = mk_list(NULL, 0);
    size_t cap = 0, i = 0, n = s->n;
    const char *p = s->u.s;
    work(c, n);
    if (!sep || sep->t == V_NONE) {
        for (;;) {
            i += ws_lead(p + i, n - i);
            if (i >= n) break;
            if (maxsplit >= 0 && (int64_t)l.n >= maxsplit) { l = list_push(c, l, &cap, mk_str(p + i, ws_trail(p + i, n - i))); break; }
            size_t j = i, len;
            while (j < n && !py_space(utf8_dec((const unsigned char *)p + j, n - j, &len))) j += len;
            l = list_push(c, l, &cap, mk_str(p + i, j - i));
            i = j;
        }
        return l;
    }
    if (sep->t != V_STR) jfail(&c->err, c->err.line, "split: separator must be a string, not %s", type_name(sep));
    if (!sep->n) jfail(&c->err, c->err.line, "split: empty separator");
    for (;;) {
        size_t j = i;
        int found = 0;
        if (maxsplit < 0 || (int64_t)l.n < maxsplit)
            for (; j + sep->n <= n; j++)
                if (!memcmp(p + j, sep->u.s, sep->n)) { found = 1; break; }
        if (!found) { l = list_push(c, l, &cap, mk_str(p + i, n - i)); break; }
        l = list_push(c, l, &cap, mk_str(p + i, j - i));
        i = j + sep->n;
    }
    return l;
}

static jv str_replace(rctx *c, const jv *s, const jv *old, const jv *new, int64_t count) {
    if (s->t != V_STR || old->t != V_STR || new->t != V_STR) jfail(&c->err, c->err.line, "replace: arguments must be strings");
    sbuf b = {.ar = &c->ar};
    sb_add(&b, "", 0);
    size_t i = 0, len;
    int64_t done = 0;
    work(c, s->n);
    if (!old->n) {   // inserts `new` around every character
        for (;;) {
            if (count < 0 || done < count) sb_add(&b, new->u.s, new->n), done++;
            if (i >= s->n) break;
            utf8_dec((const unsigned char *)s->u.s + i, s->n - i, &len);
            sb_add(&b, s->u.s + i, len);
            i += len;
        }
        return mk_str(b.p, b.n);
    }
    while (i < s->n) {
        if ((count < 0 || done < count) && i + old->n <= s->n && !memcmp(s->u.s + i, old->u.s, old->n)) {
            sb_add(&b, new->u.s, new->n);
            i += old->n, done++;
        } else sb_putc(&b, s->u.s[i++]);
    }
    return mk_str(b.p, b.n);
}

static int str_affix(rctx *c, const jv *s, const jv *x, int end) {
    if (x->t == V_LIST && x->tup) {
        for (size_t i = 0; i < x->n; i++)
            if (str_affix(c, s, &x->u.a[i], end)) return 1;
        return 0;
    }
    if (x->t != V_STR) jfail(&c->err, c->err.line, "%s: argument must be str or a tuple of str, not %s", end ? "endswith" : "startswith", type_name(x));
    if (x->n > s->n) return 0;
    return !memcmp(s->u.s + (end ? s->n - x->n : 0), x->u.s, x->n);
}

// ---------------------------------------------------------------- calls, filters and tests

typedef struct { const jv *pos; size_t np; const char **kn; const jv *kv; size_t nk; int line; } args;

static const jv *arg(const args *A, size_t i, const char *name) {
    if (i < A->np) return &A->pos[i];
    for (size_t k = 0; k < A->nk; k++)
        if (!strcmp(A->kn[k], name)) return &A->kv[k];
    return NULL;
}
static const jv *need_str(rctx *c, const jv *v, const char *what, int line) {
    if (v->t == V_UNDEF) fail_undef(c, v, line);
    if (v->t != V_STR) jfail(&c->err, line, "%s: expected a string, got %s", what, type_name(v));
    return v;
}
static const char *cstr(rctx *c, const jv *v) { return ar_strndup(&c->ar, v->u.s, v->n); }

static jv call_fn(rctx *c, const jv *f, const args *A);
static jv apply_filter(rctx *c, int id, const char *name, const jv *v, const args *A);
static int apply_test(rctx *c, int id, const char *name, const jv *v, const args *A);

// Follows "a.b.0" through items (Jinja's attribute= arguments).
static jv attr_path(rctx *c, const jv *v, const jv *path, int line) {
    need_str(c, path, "attribute", line);
    jv cur = *v;
    size_t i = 0;
    while (i <= path->n) {
        size_t j = i;
        while (j < path->n && path->u.s[j] != '.') j++;
        const char *part = path->u.s + i;
        size_t pl = j - i;
        jv key = mk_str(part, pl);
        int digits = pl > 0;
        for (size_t k = 0; k < pl; k++) digits &= is_dig(part[k]);
        if (digits && pl < 18) key = mk_int(strtoll(ar_strndup(&c->ar, part, pl), NULL, 10));
        if (cur.t == V_UNDEF) return cur;
        cur = get_item(c, &cur, &key, line);
        i = j + 1;
    }
    return cur;
}

static jv call_fn(rctx *c, const jv *f, const args *A) {
    int line = A->line;
    if (f->t == V_UNDEF) fail_undef(c, f, line);
    if (f->t != V_FUNC) jfail(&c->err, line, "'%s' object is not callable", type_name(f));
    const jv *self = &f->u.fn->self;
    const jv *a0 = arg(A, 0, "\x01"), *a1 = arg(A, 1, "\x01");
    switch (f->u.fn->id) {
    case FN_RANGE: {
        int64_t lo = 0, hi, st = 1;
        if (!a0 || A->np > 3) jfail(&c->err, line, "range expects 1 to 3 integers");
        if (A->np == 1) hi = to_i64(c, a0, "range()", line);
        else lo = to_i64(c, a0, "range()", line), hi = to_i64(c, a1, "range()", line);
        if (A->np == 3) st = to_i64(c, &A->pos[2], "range()", line);
        if (!st) jfail(&c->err, line, "range() step must not be zero");
        double cnt = st > 0 ? ceil(((double)hi - (double)lo) / (double)st) : ceil(((double)lo - (double)hi) / (double)-st);
        if (cnt < 0) cnt = 0;
        if (cnt > J_MAX_ITERS) jfail(&c->err, line, "range() of %.0f items is too large (the limit is %ld)", cnt, J_MAX_ITERS);
        jv *a = ar_alloc(&c->ar, ((size_t)cnt + 1) * sizeof(jv));
        for (size_t i = 0; i < (size_t)cnt; i++) a[i] = mk_int(lo + (int64_t)i * st);
        work(c, (size_t)cnt);
        return mk_list(a, (size_t)cnt);
    }
    case FN_NAMESPACE: case FN_DICT: {
        jv d = mk_dict(&c->ar, f->u.fn->id == FN_NAMESPACE);
        for (size_t i = 0; i < A->np; i++) {
            if (A->pos[i].t != V_DICT || A->pos[i].tup) jfail(&c->err, line, "%s() takes keyword arguments or a dict", f->u.fn->id == FN_DICT ? "dict" : "namespace");
            for (size_t k = 0; k < A->pos[i].u.d->n; k++) dict_set(&c->ar, d.u.d, A->pos[i].u.d->k[k], A->pos[i].u.d->v[k]);
        }
        for (size_t k = 0; k < A->nk; k++) dict_set(&c->ar, d.u.d, mk_cstr(A->kn[k]), A->kv[k]);
        return d;
    }
    case FN_RAISE: {
        jv m = a0 ? to_str(c, a0) : mk_cstr("");
        jfail(&c->err, line, "raise_exception: %.*s", (int)(m.n > 1500 ? 1500 : m.n), m.u.s);
    }
    case FN_STRFTIME: {
        const jv *fmt = need_str(c, a0 ? a0 : &(jv){.t = V_NONE}, "strftime_now", line);
        if (fmt->n > 256) jfail(&c->err, line, "strftime_now: format too long");
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        char buf[2048];
        size_t n = strftime(buf, sizeof buf, cstr(c, fmt), &tm);
        return mk_str(ar_strndup(&c->ar, buf, n), n);
    }
    case FN_CYCLE:
        if (!A->np) jfail(&c->err, line, "loop.cycle() needs at least one argument");
        return A->pos[self->u.lp->i % A->np];
    case M_STRIP: case M_LSTRIP: case M_RSTRIP: {
        int id = f->u.fn->id;
        const jv *ch = a0 && a0->t != V_NONE ? need_str(c, a0, "strip", line) : NULL;
        return str_strip(self, ch, id != M_RSTRIP, id != M_LSTRIP);
    }
    case M_SPLIT: {
        const jv *ms = arg(A, 1, "maxsplit");
        return str_split(c, self, arg(A, 0, "sep"), ms ? to_i64(c, ms, "maxsplit", line) : -1);
    }
    case M_SPLITLINES: {
        jv l = mk_list(NULL, 0);
        size_t cap = 0, i = 0;
        while (i < self->n) {
            size_t j = i;
            while (j < self->n && self->u.s[j] != '\n' && self->u.s[j] != '\r') j++;
            l = list_push(c, l, &cap, mk_str(self->u.s + i, j - i));
            if (j < self->n && self->u.s[j] == '\r' && j + 1 < self->n && self->u.s[j + 1] == '\n') j++;
            i = j + 1;
        }
        work(c, self->n);
        return l;
    }
    case M_STARTSWITH: case M_ENDSWITH:
        if (!a0) jfail(&c->err, line, "startswith/endswith need an argument");
        return mk_bool(str_affix(c, self, a0, f->u.fn->id == M_ENDSWITH));
    case M_UPPER: return str_case(c, self, 1);
    case M_LOWER: return str_case(c, self, 0);
    case M_TITLE: return str_case(c, self, 3);
    case M_CAPITALIZE: { jv l = str_case(c, self, 0); return str_case(c, &l, 2); }
    case M_REPLACE:
        if (!a0 || !a1) jfail(&c->err, line, "replace needs two arguments");
        return str_replace(c, self, a0, a1, A->np > 2 ? to_i64(c, &A->pos[2], "count", line) : -1);
    case M_FIND: case M_COUNT: {
        need_str(c, a0 ? a0 : &(jv){.t = V_NONE}, f->u.fn->id == M_FIND ? "find" : "count", line);
        int64_t cnt = 0;
        work(c, self->n);
        for (size_t i = 0; i + a0->n <= self->n;) {
            if (!memcmp(self->u.s + i, a0->u.s, a0->n)) {
                if (f->u.fn->id == M_FIND) return mk_int((int64_t)utf8_count(self->u.s, i));
                cnt++;
                i += a0->n ? a0->n : 1;
                if (!a0->n && i > self->n) break;
            } else i++;
        }
        if (f->u.fn->id == M_COUNT && !a0->n) cnt = (int64_t)utf8_count(self->u.s, self->n) + 1;
        return mk_int(f->u.fn->id == M_FIND ? -1 : cnt);
    }
    case M_JOIN: {
        size_t n;
        const jv *it = iterate(c, a0 ? a0 : &(jv){.t = V_NONE}, &n, line);
        sbuf b = {.ar = &c->ar};
        sb_add(&b, "", 0);
        for (size_t i = 0; i < n; i++) {
            if (i) sb_add(&b, self->u.s, self->n);
            sb_add(&b, need_str(c, &it[i], "join", line)->u.s, it[i].n);
        }
        return mk_str(b.p, b.n);
    }
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        const jdict *d = self->u.d;
        jv *a = ar_alloc(&c->ar, (d->n + 1) * sizeof(jv));
        for (size_t i = 0; i < d->n; i++) {
            if (f->u.fn->id == M_KEYS) a[i] = d->k[i];
            else if (f->u.fn->id == M_VALUES) a[i] = d->v[i];
            else {
                jv *p = ar_alloc(&c->ar, 2 * sizeof(jv));
                p[0] = d->k[i], p[1] = d->v[i];
                a[i] = mk_list(p, 2), a[i].tup = 1;
            }
        }
        work(c, d->n);
        return mk_list(a, d->n);
    }
    case M_GET: {
        if (!a0) jfail(&c->err, line, "get needs a key");
        jv *v = dict_find(self->u.d, a0);
        return v ? *v : a1 ? *a1 : mk_none();
    }
    }
    jfail(&c->err, line, "internal: unknown function");
}

static size_t jv_len(rctx *c, const jv *v, int line) {
    switch (v->t) {
    case V_STR: return utf8_count(v->u.s, v->n);
    case V_LIST: return v->n;
    case V_DICT: if (!v->tup) return v->u.d->n; break;
    case V_UNDEF: return 0;
    }
    jfail(&c->err, line, "object of type '%s' has no len()", type_name(v));
}

// Sort key for sort/unique/min/max: strings lower-cased unless case_sensitive; an attribute when given.
static jv sort_key(rctx *c, const jv *v, const jv *attr, int cs, int line) {
    jv k = attr && attr->t != V_NONE ? attr_path(c, v, attr, line) : *v;
    return k.t == V_STR && !cs ? str_case(c, &k, 0) : k;
}
static void merge_sort(rctx *c, jv *v, jv *key, jv *tv, jv *tk, size_t n, int rev, int line) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort(c, v, key, tv, tk, h, rev, line);
    merge_sort(c, v + h, key + h, tv, tk, n - h, rev, line);
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        int r = jv_cmp(c, &key[j], &key[i], line, 0);
        if (rev ? r > 0 : r < 0) tv[o] = v[j], tk[o++] = key[j++];
        else tv[o] = v[i], tk[o++] = key[i++];
    }
    while (i < h) tv[o] = v[i], tk[o++] = key[i++];
    while (j < n) tv[o] = v[j], tk[o++] = key[j++];
    memcpy(v, tv, n * sizeof(jv)), memcpy(key, tk, n * sizeof(jv));
    work(c, n);
}

static jv apply_filter(rctx *c, int id, const char *name, const jv *v, const args *A) {
    int line = A->line;
    if (id < 0) jfail(&c->err, line, "unknown filter '%s'", name);
    const jv *a0 = arg(A, 0, "\x01");
    size_t n;
    const jv *it;
    switch (id) {
    case F_ABS:
        if (v->t == V_INT || v->t == V_BOOL) { if (v->u.i == INT64_MIN) break; return mk_int(v->u.i < 0 ? -v->u.i : v->u.i); }
        if (v->t == V_FLOAT) return mk_float(fabs(v->u.f));
        break;
    case F_CAPITALIZE: { jv s = to_str(c, v); s = str_case(c, &s, 0); return str_case(c, &s, 2); }
    case F_COUNT: case F_LENGTH: return mk_int((int64_t)jv_len(c, v, line));
    case F_DEFAULT: {
        const jv *d = arg(A, 0, "default_value"), *b = arg(A, 1, "boolean");
        if (v->t == V_UNDEF || (b && truthy(b) && !truthy(v))) return d ? *d : mk_cstr("");
        return *v;
    }
    case F_DICTSORT: {   // dictsort(case_sensitive=False, by='key', reverse=False): (key, value) pairs sorted
        const jv *cs = arg(A, 0, "case_sensitive"), *by = arg(A, 1, "by"), *rev = arg(A, 2, "reverse");
        if (v->t != V_DICT || v->tup) jfail(&c->err, line, "dictsort: expected a dict, got %s", type_name(v));
        int byval = by && by->t == V_STR && by->n == 5 && !memcmp(by->u.s, "value", 5);
        if (by && !byval && !(by->t == V_STR && by->n == 3 && !memcmp(by->u.s, "key", 3))) jfail(&c->err, line, "dictsort: by must be 'key' or 'value'");
        n = v->u.d->n;
        jv *a = ar_alloc(&c->ar, (n + 1) * sizeof(jv)), *k = ar_alloc(&c->ar, (n + 1) * sizeof(jv));
        for (size_t i = 0; i < n; i++) {
            jv *p = ar_alloc(&c->ar, 2 * sizeof(jv));
            p[0] = v->u.d->k[i], p[1] = v->u.d->v[i];
            a[i] = mk_list(p, 2), a[i].tup = 1;
            k[i] = sort_key(c, &p[byval], NULL, cs && truthy(cs), line);
        }
        jv *tv = ar_alloc(&c->ar, (n + 1) * sizeof(jv)), *tk = ar_alloc(&c->ar, (n + 1) * sizeof(jv));
        merge_sort(c, a, k, tv, tk, n, rev && truthy(rev), line);
        return mk_list(a, n);
    }
    case F_FIRST: case F_LAST:
        if (v->t == V_STR && v->n) {
            if (id == F_FIRST) return str_index(c, v, 0);
            size_t b = utf8_back(v->u.s, v->n);
            return mk_str(v->u.s + b, v->n - b);
        }
        it = iterate(c, v, &n, line);
        if (!n) return undef_msg(c, "No %s item, sequence was empty.", id == F_FIRST ? "first" : "last");
        return it[id == F_FIRST ? 0 : n - 1];
    case F_FLOAT: {
        const jv *d = arg(A, 0, "default");
        if (v->t == V_FLOAT) return *v;
        if (v->t == V_INT || v->t == V_BOOL) return mk_float((double)v->u.i);
        if (v->t == V_STR) {
            jv s = str_strip(v, NULL, 1, 1);
            char *z = (char *)cstr(c, &s), *end;
            double x = strtod(z, &end);
            if (s.n && !*end && !memchr(z, 'x', s.n) && !memchr(z, 'X', s.n)) return mk_float(x);
        }
        return d ? *d : mk_float(0);
    }
    case F_INT: {
        const jv *d = arg(A, 0, "default"), *base = arg(A, 1, "base");
        if (v->t == V_INT) return *v;
        if (v->t == V_BOOL) return mk_int(v->u.i);
        if (v->t == V_FLOAT && isfinite(v->u.f) && fabs(v->u.f) < 9.2e18) return mk_int((int64_t)v->u.f);
        if (v->t == V_STR) {
            jv s = str_strip(v, NULL, 1, 1);
            char *z = (char *)cstr(c, &s), *end;
            int b = base ? (int)to_i64(c, base, "base", line) : 10;
            if (b < 2 || b > 36) b = 10;
            long long x = strtoll(z, &end, b);
            if (s.n && !*end) return mk_int(x);
            double f = strtod(z, &end);
            if (s.n && !*end && isfinite(f) && fabs(f) < 9.2e18 && !memchr(z, 'x', s.n)) return mk_int((int64_t)f);
        }
        return d ? *d : mk_int(0);
    }
    case F_ITEMS:
        if (v->t == V_UNDEF) return mk_list(NULL, 0);
        if (v->t != V_DICT || v->tup) jfail(&c->err, line, "items: can only get item pairs from a mapping, not %s", type_name(v));
        return call_fn(c, &(jv){.t = V_FUNC, .u.fn = &(jfn){.id = M_ITEMS, .self = *v}}, A);
    case F_JOIN: {
        const jv *sep = arg(A, 0, "d"), *attr = arg(A, 1, "attribute");
        jv s = sep ? to_str(c, sep) : mk_cstr("");
        it = iterate(c, v, &n, line);
        sbuf b = {.ar = &c->ar};
        sb_add(&b, "", 0);
        for (size_t i = 0; i < n; i++) {
            if (i) sb_add(&b, s.u.s, s.n);
            jv x = attr ? attr_path(c, &it[i], attr, line) : it[i];
            put_str(c, &b, &x);
        }
        return mk_str(b.p, b.n);
    }
    case F_LIST: case F_REVERSE: {
        if (id == F_REVERSE && v->t == V_STR) {
            it = iterate(c, v, &n, line);
            sbuf b = {.ar = &c->ar};
            sb_add(&b, "", 0);
            for (size_t i = n; i-- > 0;) sb_add(&b, it[i].u.s, it[i].n);
            return mk_str(b.p, b.n);
        }
        it = iterate(c, v, &n, line);
        jv *a = ar_alloc(&c->ar, (n + 1) * sizeof(jv));
        for (size_t i = 0; i < n; i++) a[i] = it[id == F_REVERSE ? n - 1 - i : i];
        work(c, n);
        return mk_list(a, n);
    }
    case F_LOWER: case F_UPPER: { jv s = to_str(c, v); return str_case(c, &s, id == F_UPPER); }
    case F_TITLE: { jv s = to_str(c, v); return str_case(c, &s, 4); }
    case F_MAP: {
        it = iterate(c, v, &n, line);
        jv *a = ar_alloc(&c->ar, (n + 1) * sizeof(jv));
        const jv *attr = arg(A, A->np, "attribute"), *dflt = arg(A, A->np, "default");
        int fid = -1;
        const char *fname = NULL;
        if (!attr) {
            if (!a0) jfail(&c->err, line, "map: needs a filter name or attribute=");
            fname = cstr(c, need_str(c, a0, "map", line));
            if ((fid = filter_id(fname)) < 0) jfail(&c->err, line, "map: unknown filter '%s'", fname);
        }
        args sub = {A->np ? A->pos + 1 : NULL, A->np ? A->np - 1 : 0, A->kn, A->kv, A->nk, line};
        for (size_t i = 0; i < n; i++) {
            if (attr) {
                a[i] = attr_path(c, &it[i], attr, line);
                if (a[i].t == V_UNDEF && dflt) a[i] = *dflt;
            } else a[i] = apply_filter(c, fid, fname, &it[i], &sub);
        }
        return mk_list(a, n);
    }
    case F_MAX: case F_MIN: {
        const jv *cs = arg(A, 0, "case_sensitive"), *attr = arg(A, 1, "attribute");
        it = iterate(c, v, &n, line);
        if (!n) return undef_msg(c, "No aggregated item, sequence was empty.");
        size_t best = 0;
        jv bk = sort_key(c, &it[0], attr, cs && truthy(cs), line);
        for (size_t i = 1; i < n; i++) {
            jv k = sort_key(c, &it[i], attr, cs && truthy(cs), line);
            int r = jv_cmp(c, &k, &bk, line, 0);
            if (id == F_MAX ? r > 0 : r < 0) best = i, bk = k;
        }
        return it[best];
    }
    case F_SELECT: case F_REJECT: case F_SELECTATTR: case F_REJECTATTR: {
        int byattr = id == F_SELECTATTR || id == F_REJECTATTR, want = id == F_SELECT || id == F_SELECTATTR;
        size_t first = byattr ? 1 : 0;
        if (byattr && !a0) jfail(&c->err, line, "%s: needs an attribute name", name);
        const jv *tn = A->np > first ? &A->pos[first] : NULL;
        int tid = -1;
        if (tn) {
            const char *tname = cstr(c, need_str(c, tn, name, line));
            if ((tid = test_id(tname)) < 0) jfail(&c->err, line, "%s: unknown test '%s'", name, tname);
        }
        args sub = {tn ? tn + 1 : NULL, tn ? A->np - first - 1 : 0, A->kn, A->kv, A->nk, line};
        it = iterate(c, v, &n, line);
        jv l = mk_list(NULL, 0);
        size_t cap = 0;
        for (size_t i = 0; i < n; i++) {
            jv x = byattr ? attr_path(c, &it[i], a0, line) : it[i];
            int ok = tid >= 0 ? apply_test(c, tid, name, &x, &sub) : truthy(&x);
            if (ok == want) l = list_push(c, l, &cap, it[i]);
        }
        return l;
    }
    case F_REPLACE: {
        const jv *cnt = arg(A, 2, "count");
        if (!a0 || !arg(A, 1, "new")) jfail(&c->err, line, "replace needs two arguments");
        jv s = to_str(c, v), o = to_str(c, a0), nw = to_str(c, arg(A, 1, "new"));
        return str_replace(c, &s, &o, &nw, cnt && cnt->t != V_NONE ? to_i64(c, cnt, "count", line) : -1);
    }
    case F_SAFE: return *v;
    case F_SORT: case F_UNIQUE: {
        const jv *rev = id == F_SORT ? arg(A, 0, "reverse") : NULL, *cs = arg(A, id == F_SORT ? 1 : 0, "case_sensitive"),
                 *attr = arg(A, id == F_SORT ? 2 : 1, "attribute");
        it = iterate(c, v, &n, line);
        jv *a = ar_alloc(&c->ar, (n + 1) * sizeof(jv)), *k = ar_alloc(&c->ar, (n + 1) * sizeof(jv));
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            jv key = sort_key(c, &it[i], attr, cs && truthy(cs), line);
            int dup = 0;
            if (id == F_UNIQUE) {
                work(c, m);
                for (size_t j = 0; j < m && !dup; j++) dup = jv_eq(&k[j], &key, 0);
            }
            if (!dup) a[m] = it[i], k[m++] = key;
        }
        if (id == F_SORT) {
            jv *tv = ar_alloc(&c->ar, (n + 1) * sizeof(jv)), *tk = ar_alloc(&c->ar, (n + 1) * sizeof(jv));
            merge_sort(c, a, k, tv, tk, m, rev && truthy(rev), line);
        }
        return mk_list(a, m);
    }
    case F_STRING: return to_str(c, v);
    case F_SUM: {
        const jv *attr = arg(A, 0, "attribute"), *start = arg(A, 1, "start");
        jv acc = start ? *start : mk_int(0);
        it = iterate(c, v, &n, line);
        for (size_t i = 0; i < n; i++) {
            jv x = attr && attr->t != V_NONE ? attr_path(c, &it[i], attr, line) : it[i];
            acc = arith(c, OP_ADD, &acc, &x, line);
        }
        return acc;
    }
    case F_TOJSON: {
        // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
        const jv *asc = arg(A, 0, "ensure_ascii"), *ind = arg(A, 1, "indent"), *sep = arg(A, 2, "separators"),
                 *srt = arg(A, 3, "sort_keys");
        jsonopt o = {NULL, asc && truthy(asc), srt && truthy(srt), ", ", ": "};
        if (ind && ind->t != V_NONE) {
            if (ind->t == V_STR) o.indent = cstr(c, ind);
            else {
                int64_t k = to_i64(c, ind, "tojson indent", line);
                if (k > 64) k = 64;
                char *sp = ar_alloc(&c->ar, (size_t)(k > 0 ? k : 0) + 1);
                memset(sp, ' ', (size_t)(k > 0 ? k : 0));
                sp[k > 0 ? k : 0] = 0;
                o.indent = sp;
            }
            o.isep = ",";
        }
        if (sep && sep->t != V_NONE) {
            if (sep->t != V_LIST || sep->n != 2 || sep->u.a[0].t != V_STR || sep->u.a[1].t != V_STR)
                jfail(&c->err, line, "tojson: separators must be a pair of strings");
            o.isep = cstr(c, &sep->u.a[0]), o.ksep = cstr(c, &sep->u.a[1]);
        }
        sbuf b = {.ar = &c->ar};
        sb_add(&b, "", 0);
        put_json(c, &b, v, &o, 0);
        return mk_str(b.p, b.n);
    }
    case F_TRIM: {
        jv s = to_str(c, v);
        const jv *ch = a0 && a0->t != V_NONE ? need_str(c, a0, "trim", line) : NULL;
        return str_strip(&s, ch, 1, 1);
    }
    case F_WORDCOUNT: {
        jv s = to_str(c, v);
        int64_t k = 0, in = 0;
        for (size_t i = 0; i < s.n; i++) {
            unsigned char ch = (unsigned char)s.u.s[i];
            int w = ch >= 0x80 || ch == '_' || is_dig(ch) || ((ch | 32) >= 'a' && (ch | 32) <= 'z');
            if (w && !in) k++;
            in = w;
        }
        return mk_int(k);
    }
    }
    if (v->t == V_UNDEF) fail_undef(c, v, line);
    jfail(&c->err, line, "filter '%s' cannot be applied to %s", name, type_name(v));
}

static int apply_test(rctx *c, int id, const char *name, const jv *v, const args *A) {
    int line = A->line;
    if (id < 0) jfail(&c->err, line, "unknown test '%s'", name);
    if ((id < T_EQ || id == T_ODD || id == T_EVEN || id == T_LOWER || id == T_UPPER) && (A->np || A->nk))
        jfail(&c->err, line, "test '%s' takes no arguments", name);
    const jv *a0 = arg(A, 0, "\x01");
    if (id >= T_EQ && id <= T_IN && !a0) jfail(&c->err, line, "test '%s' needs an argument", name);
    switch (id) {
    case T_DEFINED: return v->t != V_UNDEF;
    case T_UNDEFINED: return v->t == V_UNDEF;
    case T_NONE: return v->t == V_NONE;
    case T_STRING: return v->t == V_STR;
    case T_NUMBER: return is_num(v);
    case T_INTEGER: return v->t == V_INT;
    case T_FLOAT: return v->t == V_FLOAT;
    case T_BOOLEAN: return v->t == V_BOOL;
    case T_TRUE: return v->t == V_BOOL && v->u.i;
    case T_FALSE: return v->t == V_BOOL && !v->u.i;
    case T_MAPPING: return v->t == V_DICT && !v->tup;
    case T_ITERABLE: case T_SEQUENCE: return v->t == V_STR || v->t == V_LIST || (v->t == V_DICT && !v->tup) || v->t == V_UNDEF;
    case T_CALLABLE: return v->t == V_FUNC;
    case T_EQ: return jv_eq(v, a0, 0);
    case T_NE: return !jv_eq(v, a0, 0);
    case T_LT: return jv_cmp(c, v, a0, line, 0) < 0;
    case T_LE: return jv_cmp(c, v, a0, line, 0) <= 0;
    case T_GT: return jv_cmp(c, v, a0, line, 0) > 0;
    case T_GE: return jv_cmp(c, v, a0, line, 0) >= 0;
    case T_IN: return contains(c, a0, v, line);
    case T_ODD: return to_i64(c, v, "odd", line) % 2 != 0;
    case T_EVEN: return to_i64(c, v, "even", line) % 2 == 0;
    case T_DIVISIBLEBY: {
        int64_t d = to_i64(c, a0 ? a0 : &(jv){.t = V_NONE}, "divisibleby", line);
        if (!d) jfail(&c->err, line, "divisibleby(0)");
        return d == -1 || to_i64(c, v, "divisibleby", line) % d == 0;
    }
    case T_SAMEAS:
        if (!a0 || v->t != a0->t) return 0;
        if (v->t == V_NONE || v->t == V_UNDEF) return 1;
        if (v->t == V_BOOL || v->t == V_INT) return v->u.i == a0->u.i;
        return v->n == a0->n && v->u.s == a0->u.s;
    case T_LOWER: case T_UPPER: {
        jv s = to_str(c, v);
        int cased = 0;
        for (size_t i = 0; i < s.n; i++) {
            unsigned char ch = (unsigned char)s.u.s[i];
            if (ch >= 'a' && ch <= 'z') { if (id == T_UPPER) return 0; cased = 1; }
            if (ch >= 'A' && ch <= 'Z') { if (id == T_LOWER) return 0; cased = 1; }
        }
        return cased;
    }
    }
    return 0;
}

// ---------------------------------------------------------------- evaluation

static jv eval(rctx *c, const node *n);

static void eval_args(rctx *c, const node *n, args *A, size_t skip) {
    size_t k = n->nkid;
    jv *pos = ar_alloc(&c->ar, (k + 1) * sizeof(jv)), *kv = ar_alloc(&c->ar, (k + 1) * sizeof(jv));
    const char **kn = ar_alloc(&c->ar, (k + 1) * sizeof(char *));
    *A = (args){pos, 0, kn, kv, 0, n->line};
    for (size_t i = skip; i < k; i++) {
        const node *x = n->kid[i];
        if (x->k == E_KWARG) kn[A->nk] = x->name, kv[A->nk++] = eval(c, x->a);
        else {
            if (A->nk) jfail(&c->err, x->line, "positional argument after a keyword argument");
            pos[A->np++] = eval(c, x);
        }
    }
}

static jv eval(rctx *c, const node *n) {
    work(c, 1);
    c->err.line = n->line;
    switch (n->k) {
    case E_CONST: return n->val;
    case E_NAME: return lookup(c, n->name);
    case E_ATTR: { jv o = eval(c, n->a); return get_attr(c, &o, n->name, n->line); }
    case E_INDEX: { jv o = eval(c, n->a), k = eval(c, n->b); return get_item(c, &o, &k, n->line); }
    case E_SLICE: {
        jv o = eval(c, n->a), a, b, s;
        if (n->b) a = eval(c, n->b);
        if (n->c) b = eval(c, n->c);
        if (n->d) s = eval(c, n->d);
        return do_slice(c, &o, n->b ? &a : NULL, n->c ? &b : NULL, n->d ? &s : NULL, n->line);
    }
    case E_CALL: {
        jv f = eval(c, n->a);
        if (f.t == V_UNDEF) fail_undef(c, &f, n->line);
        args A;
        eval_args(c, n, &A, 0);
        return call_fn(c, &f, &A);
    }
    case E_FILTER: {
        jv v = eval(c, n->a);
        args A;
        eval_args(c, n, &A, 0);
        return apply_filter(c, n->id, n->name, &v, &A);
    }
    case E_TEST: {
        jv v = eval(c, n->a);
        args A;
        eval_args(c, n, &A, 0);
        return mk_bool(apply_test(c, n->id, n->name, &v, &A) != n->op);
    }
    case E_BIN: {
        jv a = eval(c, n->a), b = eval(c, n->b);
        return arith(c, n->op, &a, &b, n->line);
    }
    case E_CMP: {
        jv a = eval(c, n->a);
        for (size_t i = 0; i < n->nkid; i++) {
            const node *o = n->kid[i];
            jv b = eval(c, o->a);
            int r;
            switch (o->op) {
            case OP_EQ: r = jv_eq(&a, &b, 0); break;
            case OP_NE: r = !jv_eq(&a, &b, 0); break;
            case OP_LT: r = jv_cmp(c, &a, &b, o->line, 0) < 0; break;
            case OP_LE: r = jv_cmp(c, &a, &b, o->line, 0) <= 0; break;
            case OP_GT: r = jv_cmp(c, &a, &b, o->line, 0) > 0; break;
            case OP_GE: r = jv_cmp(c, &a, &b, o->line, 0) >= 0; break;
            case OP_IN: r = contains(c, &b, &a, o->line); break;
            default: r = !contains(c, &b, &a, o->line); break;
            }
            if (!r) return mk_bool(0);
            a = b;
        }
        return mk_bool(1);
    }
    case E_NEG: case E_POS: {
        jv a = eval(c, n->a);
        if (a.t == V_UNDEF) fail_undef(c, &a, n->line);
        if (!is_num(&a)) jfail(&c->err, n->line, "bad operand type for unary %c: '%s'", n->k == E_NEG ? '-' : '+', type_name(&a));
        if (n->k == E_POS) return a.t == V_BOOL ? mk_int(a.u.i) : a;
        if (a.t == V_FLOAT) return mk_float(-a.u.f);
        if (a.u.i == INT64_MIN) jfail(&c->err, n->line, "integer overflow in unary -");
        return mk_int(-a.u.i);
    }
    case E_NOT: { jv a = eval(c, n->a); return mk_bool(!truthy(&a)); }
    case E_AND: { jv a = eval(c, n->a); return truthy(&a) ? eval(c, n->b) : a; }
    case E_OR: { jv a = eval(c, n->a); return truthy(&a) ? a : eval(c, n->b); }
    case E_COND: {
        jv a = eval(c, n->a);
        if (truthy(&a)) return eval(c, n->b);
        if (n->c) return eval(c, n->c);
        return undef_msg(c, "the inline if-expression on line %d evaluated to false and no else section was defined", n->line);
    }
    case E_LIST: case E_TUPLE: {
        jv *a = ar_alloc(&c->ar, (n->nkid + 1) * sizeof(jv));
        for (size_t i = 0; i < n->nkid; i++) a[i] = eval(c, n->kid[i]);
        jv l = mk_list(a, n->nkid);
        l.tup = n->k == E_TUPLE;
        return l;
    }
    case E_DICT: {
        jv d = mk_dict(&c->ar, 0);
        for (size_t i = 0; i + 1 < n->nkid; i += 2) {
            jv k = eval(c, n->kid[i]), v = eval(c, n->kid[i + 1]);
            if (k.t == V_UNDEF) fail_undef(c, &k, n->line);
            if (k.t == V_LIST && !k.tup) jfail(&c->err, n->line, "unhashable type: 'list'");
            if (k.t == V_DICT) jfail(&c->err, n->line, "unhashable type: 'dict'");
            dict_set(&c->ar, d.u.d, k, v);
        }
        return d;
    }
    case E_CONCAT: {
        sbuf b = {.ar = &c->ar};
        sb_add(&b, "", 0);
        for (size_t i = 0; i < n->nkid; i++) {
            jv v = eval(c, n->kid[i]);
            put_str(c, &b, &v);
        }
        return mk_str(b.p, b.n);
    }
    }
    jfail(&c->err, n->line, "internal: bad expression node %d", n->k);
}

// ---------------------------------------------------------------- statements

enum { X_OK, X_BREAK, X_CONT };

static void assign(rctx *c, const node *tg, jv v, int line) {
    if (tg->k == E_NAME) { frame_set(c, c->top, tg->name, v); return; }
    if (tg->k == E_ATTR) {
        jv ns = lookup(c, tg->a->name);
        if (ns.t != V_DICT || !ns.tup) jfail(&c->err, line, "cannot assign attribute '%s' on '%s', which is not a namespace", tg->name, tg->a->name);
        dict_set(&c->ar, ns.u.d, mk_cstr(tg->name), v);
        return;
    }
    if (v.t != V_LIST) jfail(&c->err, line, "cannot unpack %s into %zu names", type_name(&v), tg->nkid);
    if (v.n != tg->nkid) jfail(&c->err, line, "%s values to unpack (expected %zu, got %zu)", v.n > tg->nkid ? "too many" : "not enough", tg->nkid, v.n);
    for (size_t i = 0; i < tg->nkid; i++) frame_set(c, c->top, tg->kid[i]->name, v.u.a[i]);
}

static void out_check(rctx *c, int line) {
    if (c->out.n > J_MAX_OUT) jfail(&c->err, line, "rendered text longer than %zu MiB", J_MAX_OUT >> 20);
}

static int exec(rctx *c, const node *n);
static int exec_body(rctx *c, const node *b) {
    for (size_t i = 0; i < b->nkid; i++) {
        int r = exec(c, b->kid[i]);
        if (r != X_OK) return r;
    }
    return X_OK;
}

static int exec(rctx *c, const node *n) {
    work(c, 1);
    c->err.line = n->line;
    switch (n->k) {
    case S_BODY: return exec_body(c, n);
    case S_TEXT: sb_add(&c->out, n->val.u.s, n->val.n); out_check(c, n->line); return X_OK;
    case S_OUT: {
        jv v = eval(c, n->a);
        put_str(c, &c->out, &v);
        out_check(c, n->line);
        return X_OK;
    }
    case S_IF: {
        jv v = eval(c, n->a);
        if (truthy(&v)) return exec(c, n->b);
        return n->c ? exec(c, n->c) : X_OK;
    }
    case S_FOR: {
        jv seq = eval(c, n->b);
        size_t cnt;
        const jv *items = iterate(c, &seq, &cnt, n->line);
        frame f = {.up = c->top};
        c->top = &f;
        if (n->e) {   // for x in xs if cond: filter first, so loop.length counts what remains
            jv *kept = ar_alloc(&c->ar, (cnt + 1) * sizeof(jv));
            size_t m = 0;
            for (size_t i = 0; i < cnt; i++) {
                if (++c->iters > J_MAX_ITERS) jfail(&c->err, n->line, "more than %ld loop iterations", J_MAX_ITERS);
                f.n = 0;
                assign(c, n->a, items[i], n->line);
                jv ok = eval(c, n->e);
                if (truthy(&ok)) kept[m++] = items[i];
            }
            items = kept, cnt = m;
        }
        jloop *lp = ar_zalloc(&c->ar, sizeof(jloop));
        lp->items = items, lp->n = cnt;
        jv loopv = {.t = V_LOOP};
        loopv.u.lp = lp;
        for (size_t i = 0; i < cnt; i++) {
            if (++c->iters > J_MAX_ITERS) jfail(&c->err, n->line, "more than %ld loop iterations", J_MAX_ITERS);
            lp->i = i;
            f.n = 0;   // each iteration starts with a fresh scope, as in Jinja
            frame_set(c, &f, "loop", loopv);
            assign(c, n->a, items[i], n->line);
            if (exec(c, n->c) == X_BREAK) break;
        }
        c->top = f.up;
        if (!cnt && n->d) return exec(c, n->d);
        return X_OK;
    }
    case S_SET: assign(c, n->a, eval(c, n->b), n->line); return X_OK;
    case S_SETBLOCK: {
        size_t mark = c->out.n;
        int r = exec(c, n->b);
        jv s = mk_str(ar_strndup(&c->ar, c->out.p + mark, c->out.n - mark), c->out.n - mark);
        c->out.n = mark;
        c->out.p[mark] = 0;
        assign(c, n->a, s, n->line);
        return r;
    }
    case S_BREAK: return X_BREAK;
    case S_CONT: return X_CONT;
    }
    jfail(&c->err, n->line, "internal: bad statement node %d", n->k);
}

// ---------------------------------------------------------------- API

// cJSON -> values; JSON strings are not copied (vars outlive the render).
static jv from_json(rctx *c, const cJSON *j, int depth) {
    if (depth > J_MAX_VDEPTH) jfail(&c->err, 0, "input nested too deeply");
    if (cJSON_IsNull(j)) return mk_none();
    if (cJSON_IsBool(j)) return mk_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double x = j->valuedouble;
        if (x == floor(x) && fabs(x) <= 9007199254740992.0) return mk_int((int64_t)x);
        return mk_float(x);
    }
    if (cJSON_IsString(j)) return mk_cstr(j->valuestring ? j->valuestring : "");
    if (cJSON_IsArray(j)) {
        size_t n = (size_t)cJSON_GetArraySize(j), i = 0;
        jv *a = ar_alloc(&c->ar, (n + 1) * sizeof(jv));
        for (const cJSON *e = j->child; e && i < n; e = e->next) a[i++] = from_json(c, e, depth + 1);
        return mk_list(a, i);
    }
    if (cJSON_IsObject(j)) {
        jv d = mk_dict(&c->ar, 0);
        for (const cJSON *e = j->child; e; e = e->next)
            if (e->string) dict_set(&c->ar, d.u.d, mk_cstr(e->string), from_json(c, e, depth + 1));
        return d;
    }
    return mk_none();
}

int jinja_parse(const char *src, const char *where, jinja_template **out) {
    *out = NULL;
    if (!where) where = "template";
    if (!src) return halo_fail("%s: no template text", where);
    jinja_template *t = xcalloc(1, sizeof *t);
    t->where = xstrdup(where);
    jerr *err = xcalloc(1, sizeof *err);
    err->where = t->where;
    arena tmp = {.err = err};
    t->ar.err = err;
    if (setjmp(err->jb)) {
        halo_fail("%s", err->msg);
        ar_free(&tmp);
        jinja_free(t);
        free(err);
        return HALO_ERR;
    }
    // Jinja's lexer: newlines normalized to \n, and one trailing newline dropped (keep_trailing_newline=False)
    size_t n = strlen(src), k = 0;
    char *s = ar_alloc(&tmp, n + 1);
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '\r') { s[k++] = '\n'; if (i + 1 < n && src[i + 1] == '\n') i++; }
        else s[k++] = src[i];
    }
    if (k && s[k - 1] == '\n') k--;
    s[k] = 0;
    lexer L = {.ar = &tmp, .err = err, .src = s, .len = k, .line = 1};
    lex(&L);
    // text tokens point into the normalized source: copy them into the template's arena
    for (size_t i = 0; i < L.nt; i++)
        if (L.t[i].type == TK_TEXT || L.t[i].type == TK_STR) L.t[i].s = ar_strndup(&t->ar, L.t[i].s, L.t[i].n);
    parser P = {.ar = &t->ar, .err = err, .t = L.t};
    t->root = parse_body(&P, NULL, 1, NULL);
    check_names(&P, t->root, 0);
    ar_free(&tmp);
    free(err);
    t->ar.err = NULL;   // the template's arena is never allocated from again
    *out = t;
    return HALO_OK;
}

int jinja_render(const jinja_template *t, const cJSON *vars, char **out) {
    *out = NULL;
    if (!t) return halo_fail("jinja_render: no template");
    rctx *c = xcalloc(1, sizeof *c);
    c->err.where = t->where;
    c->ar.err = &c->err;
    c->out.ar = &c->ar;
    c->top = &c->root;
    if (setjmp(c->err.jb)) {
        halo_fail("%s", c->err.msg);
        ar_free(&c->ar);
        free(c);
        return HALO_ERR;
    }
    if (vars && !cJSON_IsObject(vars)) jfail(&c->err, 0, "render variables must be a JSON object");
    if (vars) {
        jv v = from_json(c, vars, 0);
        c->vars = v.u.d;
    }
    sb_add(&c->out, "", 0);
    exec(c, t->root);
    char *r = xmalloc(c->out.n + 1);
    memcpy(r, c->out.p, c->out.n);
    r[c->out.n] = 0;
    ar_free(&c->ar);
    free(c);
    *out = r;
    return HALO_OK;
}

void jinja_free(jinja_template *t) {
    if (!t) return;
    ar_free(&t->ar);
    free(t->where);
    free(t);
}
