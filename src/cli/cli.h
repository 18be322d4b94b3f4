// Command-line verbs of the `halo` program. Each verb lives in src/cli/cmd_<verb>.c and is listed in main.c.
#ifndef HALO_CLI_H
#define HALO_CLI_H
#include <stdbool.h>

typedef int (*halo_cmd_fn)(int argc, char **argv);   // argv[0] is the verb; returns the process exit status

// Small flag parser shared by the verbs: `--name value` or `--name=value`, and boolean `--flag`.
// Returns the value of `name` or NULL; `*i` is advanced past a consumed value.
const char *cli_flag_value(int argc, char **argv, int *i, const char *name);
bool cli_is_flag(const char *arg, const char *name);
// Parses a number or reports "--flag: 'x' is not a number"; returns 0 on success.
int cli_parse_int(const char *flag, const char *s, long *out);
int cli_parse_float(const char *flag, const char *s, double *out);
// An integer in [lo, hi], or "--flag: 'x' is not an integer from lo to hi".
int cli_parse_range(const char *flag, const char *s, long lo, long hi, long *out);
#endif
