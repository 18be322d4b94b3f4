// NFC (src/tokenizer/nfc.c): 1500 seeded strings of composites, their pieces, combining marks in every order and
// Hangul against Python's unicodedata (tests/data/nfc_cases.txt, scripts/gen_unicode_nfc.py); hand cases (ordering,
// blocking, exclusions, singletons, Hangul LV/LVT); invalid UTF-8 passed through; NFC idempotent; and a
// tokenizer.json whose normalizer is NFC encodes a decomposed and a precomposed text to the same ids.
#include <stdint.h>
#include <unistd.h>
#include "test.h"
#include "tokenizer/nfc.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

// "\uXXXX" / "\UXXXXXXXX" escapes to UTF-8 (into out, NUL-terminated); returns the length.
static size_t unescape(const char *s, char *out) {
    size_t n = 0;
    while (*s) {
        if (s[0] != '\\' || (s[1] != 'u' && s[1] != 'U')) { out[n++] = *s++; continue; }
        const int digits = s[1] == 'u' ? 4 : 8;
        char hex[9] = {0};
        memcpy(hex, s + 2, (size_t)digits);
        const uint32_t cp = (uint32_t)strtoul(hex, NULL, 16);
        s += 2 + digits;
        if (cp < 0x80) out[n++] = (char)cp;
        else if (cp < 0x800) { out[n++] = (char)(0xC0 | cp >> 6); out[n++] = (char)(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out[n++] = (char)(0xE0 | cp >> 12); out[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[n++] = (char)(0xF0 | cp >> 18); out[n++] = (char)(0x80 | (cp >> 12 & 0x3F));
            out[n++] = (char)(0x80 | (cp >> 6 & 0x3F)); out[n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[n] = 0;
    return n;
}

// NFC(in) == want (both escaped)?
static int nfc_is(const char *in_esc, const char *want_esc) {
    char in[512], want[512], *got;
    size_t n = unescape(in_esc, in), wn = unescape(want_esc, want), gn;
    if (nfc_normalize(in, n, &got, &gn)) return 0;
    int ok = gn == wn && !memcmp(got, want, wn);
    free(got);
    return ok;
}

static void golden_cases(void) {
    FILE *f = fopen("tests/data/nfc_cases.txt", "r");
    CHECK(f != NULL, "tests/data/nfc_cases.txt (run from the repository root)");
    if (!f) return;
    char line[1024];
    int cases = 0, ok = 0, changed = 0, idem = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char *tab = strchr(line, '\t'), *nl = strchr(line, '\n');
        if (!tab) continue;
        *tab = 0;
        if (nl) *nl = 0;
        cases++;
        int good = nfc_is(line, tab + 1);
        ok += good;
        changed += strcmp(line, tab + 1) != 0;
        if (!good && ok + 5 > cases) fprintf(stderr, "  NFC(%s) != %s\n", line, tab + 1);
        idem += nfc_is(tab + 1, tab + 1);   // NFC of an NFC string is itself
    }
    fclose(f);
    CHECK(cases == 1500 && ok == cases, "NFC equals Python's unicodedata (Unicode %s tables) on %d of %d strings",
          nfc_unicode_version, ok, cases);
    CHECK(idem == cases, "NFC is idempotent on %d of %d results", idem, cases);
    CHECK(changed > 500, "the cases exercise normalization: %d of %d change", changed, cases);
    printf("NFC: %d/%d strings equal to Python's unicodedata (%d of them change), idempotent on all\n", ok, cases, changed);
}

static void hand_cases(void) {
    struct { const char *in, *want, *what; } c[] = {
        {"", "", "empty"},
        {"abc", "abc", "ASCII"},
        {"e\\u0301", "\\u00E9", "e + acute composes"},
        {"\\u00E9", "\\u00E9", "precomposed stays"},
        {"\\u212B", "\\u00C5", "singleton (Angstrom sign) to its canonical equivalent"},
        {"\\u0958", "\\u0915\\u093C", "composition exclusion stays decomposed"},
        {"a\\u0302\\u0323", "\\u1EAD", "marks reordered by class, then composed (a + dot below + circumflex)"},
        {"a\\u0301\\u0301", "\\u00E1\\u0301", "a second mark of the same class is blocked"},
        {"\\u1100\\u1161", "\\uAC00", "Hangul L + V"},
        {"\\u1100\\u1161\\u11A8", "\\uAC01", "Hangul L + V + T"},
        {"\\uAC00\\u11A8", "\\uAC01", "Hangul LV + T"},
        {"\\u0301e", "\\u0301e", "a leading mark composes with nothing"},
        {"\\u0B47\\u0B3E", "\\u0B4B", "two starters compose (Oriya)"},
        {"\\u0B47\\u0301\\u0B3E", "\\u0B47\\u0301\\u0B3E", "a mark between two starters blocks them"},
        {"\\U0001D15E", "\\U0001D157\\U0001D165", "an excluded supplementary composite decomposes"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) CHECK(nfc_is(c[i].in, c[i].want), "NFC hand case: %s", c[i].what);
    // invalid UTF-8 bytes pass through and block composition
    const char bad[] = "e\xFF\xCC\x81 \xC3";
    char *got;
    size_t gn;
    CHECK(nfc_normalize(bad, sizeof bad - 1, &got, &gn) == 0 && gn == sizeof bad - 1 && !memcmp(got, bad, gn),
          "invalid bytes pass through unchanged (and e + 0xFF + acute does not compose)");
    free(got);
    // overlong, surrogate, above U+10FFFF and truncated sequences are invalid bytes too, each passed through
    const char *odd[] = {"\xC0\x80\xCC\x81", "\xED\xA0\x80\xCC\x81", "\xF5\x80\x80\x80", "\xE0\x80\xAF", "a\xF0\x9F\x98"};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        const size_t n = strlen(odd[i]);
        CHECK(nfc_normalize(odd[i], n, &got, &gn) == 0 && gn == n && !memcmp(got, odd[i], n),
              "ill-formed UTF-8 case %zu passes through unchanged", i);
        free(got);
    }
    CHECK(!nfc_may_change("plain ASCII, Latin-1 \xC3\xA9", 24) && nfc_may_change("e\xCC\x81", 3),
          "nfc_may_change: only text with a code point at or above U+0300");
}

// A byte-level BPE tokenizer.json with {"type": "NFC"} as its normalizer (Qwen2's layout, small vocabulary)
static void tokenizer_nfc(void) {
    char dir[] = "/tmp/halo_nfc_XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    // byte-level alphabet: 'c' 'a' 'f' and the two bytes of U+00E9 (C3 A9 map to "Ã" U+00C3 and "©" U+00A9)
    fputs("{\"added_tokens\": [], \"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
          "\"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false}, \"post_processor\": null, "
          "\"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"c\": 0, \"a\": 1, "
          "\"f\": 2, \"\\u00c3\": 3, \"\\u00a9\": 4, \"\\u00c3\\u00a9\": 5, \"\\u00cc\": 6, \"\\u0081\": 7, \"e\": 8}, "
          "\"merges\": [\"\\u00c3 \\u00a9\"]}}", f);
    fclose(f);
    halo_tokenizer *tok;
    int rc = tokenizer_load(path, &tok);
    CHECK(rc == HALO_OK, "tokenizer.json with an NFC normalizer loads: %s", rc ? halo_error() : "");
    if (rc == HALO_OK) {
        int32_t *a, *b;
        size_t na, nb;
        tokenizer_encode(tok, "cafe\xCC\x81", 6, false, &a, &na);   // decomposed
        tokenizer_encode(tok, "caf\xC3\xA9", 5, false, &b, &nb);    // precomposed
        CHECK(na == 4 && nb == 4 && !memcmp(a, b, na * sizeof *a) && a[3] == 5,
              "decomposed and precomposed 'cafe' encode alike through NFC: %zu %zu ids, last %d", na, nb, na ? a[na - 1] : -1);
        char *d = tokenizer_decode(tok, a, na, false);
        CHECK(d && !strcmp(d, "caf\xC3\xA9"), "and decode to the precomposed text: '%s'", d ? d : "");
        free(d); free(a); free(b);
        tokenizer_free(tok);
    }
    remove(path);
    rmdir(dir);
}

int main(void) {
    golden_cases();
    hand_cases();
    tokenizer_nfc();
    TEST_END();
}
