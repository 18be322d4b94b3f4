// Helpers of the tests that run the `halo` binary: a shell command, and the numbers a run left in its metrics file
// or printed into a log.
#ifndef HALO_TEST_CLI_H
#define HALO_TEST_CLI_H
#include <cjson/cJSON.h>
#include "test.h"
#include "util/fileio.h"

// Runs a command; returns its exit status.
static inline int sh(const char *fmt, const char *extra) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, fmt, extra);
    return system(cmd);
}

// Losses by step from a metrics JSONL file (type "train"); returns how many were read.
static inline int read_losses(const char *path, double *loss, int max) {
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        cJSON *t = cJSON_GetObjectItem(o, "type"), *s = cJSON_GetObjectItem(o, "step"), *l = cJSON_GetObjectItem(o, "loss");
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "train") && cJSON_IsNumber(s) && s->valueint <= max) {
            loss[s->valueint - 1] = l->valuedouble;
            if (s->valueint > n) n = s->valueint;
        }
        cJSON_Delete(o);
    }
    if (f) fclose(f);
    return n;
}

// The value of `key` in the last "eval" line of a metrics file (NAN when absent).
static inline double last_eval(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    char line[4096];
    double v = NAN;
    while (f && fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line), *t = cJSON_GetObjectItem(o, "type"), *x = cJSON_GetObjectItem(o, key);
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "eval")) v = cJSON_IsNumber(x) ? x->valuedouble : NAN;
        cJSON_Delete(o);
    }
    if (f) fclose(f);
    return v;
}

// The loss `halo eval --task loss` printed into a log (NAN when none).
static inline double eval_loss(const char *log) {
    char *text = NULL;
    double v = NAN;
    if (halo_read_file(log, &text, NULL) == 0) {
        const char *p = !strncmp(text, "loss ", 5) ? text : strstr(text, "\nloss ");
        if (p) v = atof(p + (*p == '\n') + 5);
    }
    free(text);
    return v;
}

// 1 when the file exists and holds `needle`.
static inline int file_has(const char *path, const char *needle) {
    char *text = NULL;
    int ok = halo_read_file(path, &text, NULL) == 0 && strstr(text, needle);
    free(text);
    return ok;
}
#endif
