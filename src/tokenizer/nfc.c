// NFC (nfc.h): decode UTF-8 to code points, decompose each fully (table, Hangul by formula), sort each run of
// non-starters by combining class (stable), then compose each character with the last starter when no character
// of the same or a higher class sits between them (Unicode's canonical composition algorithm, UAX #15).
#include "tokenizer/nfc.h"
#include "tokenizer/tok_internal.h"
#include <stdlib.h>
#include <string.h>

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28,
       NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };
#define RAW_BYTE 0x80000000u   // an invalid UTF-8 byte, carried through as itself (a starter that composes with nothing)

static int ccc_of(uint32_t cp) {
    int lo = 0, hi = nfc_ccc_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (nfc_ccc[mid].cp == cp) return nfc_ccc[mid].ccc;
        if (nfc_ccc[mid].cp < cp) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}

static const nfc_decomp_entry *decomp_of(uint32_t cp) {
    int lo = 0, hi = nfc_decomp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (nfc_decomp[mid].cp == cp) return &nfc_decomp[mid];
        if (nfc_decomp[mid].cp < cp) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

// The primary composite of (a, b), or 0.
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)   // Hangul L + V
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)   // LV + T
        return a + (b - TBASE);
    int lo = 0, hi = nfc_comp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const nfc_comp_entry *e = &nfc_comp[mid];
        if (e->first == a && e->second == b) return e->composite;
        if (e->first < a || (e->first == a && e->second < b)) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}

// One code point from s[*i..n) (advancing *i), or RAW_BYTE | byte for an invalid sequence (one byte consumed).
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *i) {
    uint32_t cp;
    const int k = tok_utf8_next(s + *i, n - *i, &cp);
    if (cp == TOK_BAD_CP) cp = RAW_BYTE | s[*i];
    *i += (size_t)k;
    return cp;
}

static size_t utf8_put(char *o, uint32_t cp) {
    if (cp & RAW_BYTE) { o[0] = (char)(cp & 0xFF); return 1; }
    return (size_t)tok_utf8_put(cp, o);
}

int nfc_may_change(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++)   // U+0300 and up take two bytes led by 0xCC or more, or three or four
        if (u[i] >= 0xCC) return 1;
    return 0;
}

int nfc_normalize(const char *s, size_t n, char **out, size_t *out_len) {
    // a code point decomposes into at most 18 (U+FDFA is compatibility-only; canonical ones are far shorter)
    size_t cap = n * 4 + 8, m = 0;
    uint32_t *cps = malloc(cap * sizeof *cps);
    if (!cps) return -1;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp = utf8_next(u, n, &i);
        if (m + 32 > cap) {
            cap *= 2;
            uint32_t *p = realloc(cps, cap * sizeof *cps);
            if (!p) { free(cps); return -1; }
            cps = p;
        }
        if (cp >= SBASE && cp < SBASE + SCOUNT) {   // Hangul syllable: L V (T)
            uint32_t si = cp - SBASE;
            cps[m++] = LBASE + si / NCOUNT;
            cps[m++] = VBASE + si % NCOUNT / TCOUNT;
            if (si % TCOUNT) cps[m++] = TBASE + si % TCOUNT;
            continue;
        }
        const nfc_decomp_entry *d = cp & RAW_BYTE ? NULL : decomp_of(cp);
        if (d) { memcpy(cps + m, nfc_decomp_pool + d->off, d->len * sizeof *cps); m += d->len; }
        else cps[m++] = cp;
    }
    // canonical ordering: insertion sort of each run of non-starters by class (stable)
    for (size_t i = 1; i < m; i++) {
        const int ci = cps[i] & RAW_BYTE ? 0 : ccc_of(cps[i]);
        if (!ci) continue;
        uint32_t x = cps[i];
        size_t j = i;
        while (j > 0 && !(cps[j - 1] & RAW_BYTE) && ccc_of(cps[j - 1]) > ci) { cps[j] = cps[j - 1]; j--; }
        cps[j] = x;
    }
    // canonical composition
    size_t w = 0;
    long starter = -1;   // index in the output of the last starter
    int last_ccc = -1;   // class of the last character written after that starter (-1: none yet)
    for (size_t i = 0; i < m; i++) {
        const uint32_t c = cps[i];
        const int cc = c & RAW_BYTE ? 0 : ccc_of(c);
        if (starter >= 0 && !(c & RAW_BYTE) && !(cps[starter] & RAW_BYTE) && (last_ccc < cc || last_ccc == -1)) {
            // not blocked: nothing between, or everything between of a lower class (and c not a starter after one)
            const uint32_t p = (last_ccc == -1 || cc != 0) ? compose(cps[starter], c) : 0;
            if (p) { cps[starter] = p; continue; }
        }
        if (cc == 0) { starter = (long)w; last_ccc = -1; }
        else last_ccc = cc;
        cps[w++] = c;
    }
    char *o = malloc(w * 4 + 1);
    if (!o) { free(cps); return -1; }
    size_t len = 0;
    for (size_t i = 0; i < w; i++) len += utf8_put(o + len, cps[i]);
    o[len] = 0;
    free(cps);
    *out = o;
    *out_len = len;
    return 0;
}
