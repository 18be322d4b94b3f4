// Flag parsing helpers shared by the command-line verbs.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "util/error.h"

bool cli_is_flag(const char *arg, const char *name) { return strcmp(arg, name) == 0; }

const char *cli_flag_value(int argc, char **argv, int *i, const char *name) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != 0) return NULL;
    if (*i + 1 >= argc) { fprintf(stderr, "halo: %s needs a value\n", name); exit(2); }
    *i += 1;
    return argv[*i];
}

int cli_parse_int(const char *flag, const char *s, long *out) {
    char *end; errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) return halo_fail("%s: '%s' is not an integer", flag, s);
    *out = v;
    return HALO_OK;
}

int cli_parse_range(const char *flag, const char *s, long lo, long hi, long *out) {
    long v = 0;
    if (cli_parse_int(flag, s, &v) || v < lo || v > hi)
        return halo_fail("%s: '%s' is not an integer from %ld to %ld", flag, s, lo, hi);
    *out = v;
    return HALO_OK;
}

int cli_parse_float(const char *flag, const char *s, double *out) {
    char *end; errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) return halo_fail("%s: '%s' is not a number", flag, s);
    *out = v;
    return HALO_OK;
}
