// Checkpoint files (see checkpoint.h): writing through the safetensors writer, reading with every tensor and
// metadata field checked so that a damaged file is refused with its name and the missing or wrong piece.
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "model/lora.h"
#include "train/checkpoint.h"
#include "util/error.h"
#include "util/json.h"

void checkpoint_path(char *buf, size_t cap, const char *dir, int64_t step) {
    snprintf(buf, cap, "%s/step_%08" PRId64 ".safetensors", dir, step);
}

// ---- writing ---------------------------------------------------------------------------------------------------

int checkpoint_save(const char *path, const llama_model *m, const adamw_state *opt, const checkpoint_meta *meta) {
    const llama_trainable tp = llama_trainable_params((llama_model *)m);   // LoRA: the adapters only
    if (opt && opt->n != tp.n) return halo_fail("checkpoint %s: optimizer has %zu values, model %zu", path, opt->n, tp.n);
    st_writer *w = st_writer_new();
    char name[160], buf[64];
    for (int i = 0; i < tp.n_table; i++) {
        const llama_param *p = &tp.table[i];
        st_writer_add(w, p->name, ST_F32, ST_F32, tp.params + p->offset, p->ndim, p->shape);
        if (opt) {
            snprintf(name, sizeof name, "optim.m.%s", p->name);
            st_writer_add(w, name, ST_F32, ST_F32, opt->m + p->offset, p->ndim, p->shape);
            snprintf(name, sizeof name, "optim.v.%s", p->name);
            st_writer_add(w, name, ST_F32, ST_F32, opt->v + p->offset, p->ndim, p->shape);
        }
    }
    st_writer_meta(w, "format", CHECKPOINT_FORMAT);
    char *cfg = llama_config_to_json(&m->cfg, NULL, 0);
    st_writer_meta(w, "config", cfg);
    free(cfg);
    if (llama_get_lora(m)) {
        char *lj = lora_config_to_json(llama_get_lora(m));
        st_writer_meta(w, "lora", lj);
        free(lj);
    }
    snprintf(buf, sizeof buf, "%" PRId64, meta->step);          st_writer_meta(w, "step", buf);
    snprintf(buf, sizeof buf, "%" PRId64, opt ? opt->t : 0);    st_writer_meta(w, "optim_t", buf);
    st_writer_meta(w, "has_optimizer", opt ? "1" : "0");
    // u64 values as decimal strings: JSON numbers (doubles) would lose bits of an RNG state.
    snprintf(buf, sizeof buf, "%" PRIu64, meta->rng);           st_writer_meta(w, "rng", buf);
    snprintf(buf, sizeof buf, "%.17g", meta->elapsed_s);        st_writer_meta(w, "elapsed_s", buf);
    char data[256];
    snprintf(data, sizeof data, "{\"epoch\":%" PRId64 ",\"position\":%" PRId64 ",\"rng\":\"%" PRIu64 "\"}",
             meta->data.epoch, meta->data.position, meta->data.rng);
    st_writer_meta(w, "data", data);
    if (meta->options_json) st_writer_meta(w, "train", meta->options_json);
    if (meta->app_json) st_writer_meta(w, "app", meta->app_json);
    int rc = st_writer_write(w, path);
    st_writer_free(w);
    if (rc) return halo_fail_ctx("writing checkpoint %s: ", path);
    return HALO_OK;
}

// ---- reading ---------------------------------------------------------------------------------------------------

// The __metadata__ object of an opened file (st_open has validated the header's framing). NULL with an error
// naming the file when absent.
static cJSON *read_header_meta(const st_file *f, cJSON **root) {
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)f->map[i] << (8 * i);
    *root = cJSON_ParseWithLength((const char *)f->map + 8, (size_t)hlen);
    cJSON *meta = *root ? cJSON_GetObjectItemCaseSensitive(*root, "__metadata__") : NULL;
    if (!cJSON_IsObject(meta)) {
        halo_fail("checkpoint %s: no __metadata__ in the header (not a halo checkpoint)", f->path);
        return NULL;
    }
    return meta;
}

static const char *meta_str(const cJSON *meta, const char *key, const char *path) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(meta, key);
    if (!cJSON_IsString(it)) { halo_fail("checkpoint %s: metadata key '%s' missing", path, key); return NULL; }
    return it->valuestring;
}

static int parse_i64(const char *s, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno == ERANGE) return HALO_ERR;   // out of range: not clamped to LLONG_MAX
    *out = v;
    return HALO_OK;
}
static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || *s == '-' || errno == ERANGE) return HALO_ERR;
    *out = v;
    return HALO_OK;
}
// A JSON number that is a whole count in [0, 2^53] (doubles hold those exactly).
static int json_count(const cJSON *v, int64_t *out) {
    if (!json_whole(v, 0, 9007199254740992.0)) return HALO_ERR;
    *out = (int64_t)v->valuedouble;
    return HALO_OK;
}

static int parse_meta(const st_file *f, llama_config *cfg, checkpoint_meta *meta) {
    cJSON *root = NULL;
    const char *p = f->path;
    memset(meta, 0, sizeof *meta);
    cJSON *md = read_header_meta(f, &root);
    int rc = HALO_ERR;
    const char *s;
    if (!md) goto out;
    if (!(s = meta_str(md, "format", p))) goto out;
    if (strcmp(s, CHECKPOINT_FORMAT)) { halo_fail("checkpoint %s: format '%s', expected '%s'", p, s, CHECKPOINT_FORMAT); goto out; }
    if (!(s = meta_str(md, "config", p))) goto out;
    char where[1200];
    snprintf(where, sizeof where, "checkpoint %s: metadata 'config'", p);
    if (llama_config_from_json(s, where, cfg)) goto out;
    if (!(s = meta_str(md, "step", p))) goto out;
    if (parse_i64(s, &meta->step) || meta->step < 0) { halo_fail("checkpoint %s: metadata 'step' = '%s' is not a step count", p, s); goto out; }
    if (!(s = meta_str(md, "optim_t", p))) goto out;
    if (parse_i64(s, &meta->optim_t) || meta->optim_t < 0) { halo_fail("checkpoint %s: metadata 'optim_t' = '%s' is not a count", p, s); goto out; }
    if (!(s = meta_str(md, "rng", p))) goto out;
    if (parse_u64(s, &meta->rng)) { halo_fail("checkpoint %s: metadata 'rng' = '%s' is not a u64", p, s); goto out; }
    if (!(s = meta_str(md, "elapsed_s", p))) goto out;
    {
        char *end;
        meta->elapsed_s = strtod(s, &end);
        if (end == s || *end || !isfinite(meta->elapsed_s) || meta->elapsed_s < 0) {
            halo_fail("checkpoint %s: metadata 'elapsed_s' = '%s' is not a number of seconds", p, s);
            goto out;
        }
    }
    if (!(s = meta_str(md, "data", p))) goto out;
    {
        cJSON *d = cJSON_Parse(s);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(d, "epoch"), *q = cJSON_GetObjectItemCaseSensitive(d, "position"),
                    *r = cJSON_GetObjectItemCaseSensitive(d, "rng");
        // epoch and position: whole counts >= 0 (a cast of 1e300 or -1 would hand the data source garbage)
        int ok = !json_count(e, &meta->data.epoch) && !json_count(q, &meta->data.position) && cJSON_IsString(r) &&
                 !parse_u64(r->valuestring, &meta->data.rng);
        cJSON_Delete(d);
        if (!ok) { halo_fail("checkpoint %s: metadata 'data' = '%s' lacks epoch/position (counts >= 0) or rng", p, s); goto out; }
    }
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(md, "train");
    if (cJSON_IsString(it)) meta->options_json = xstrdup(it->valuestring);
    it = cJSON_GetObjectItemCaseSensitive(md, "app");
    if (cJSON_IsString(it)) meta->app_json = xstrdup(it->valuestring);
    it = cJSON_GetObjectItemCaseSensitive(md, "lora");
    if (cJSON_IsString(it)) {
        char where[1200];
        snprintf(where, sizeof where, "checkpoint %s: metadata 'lora'", p);
        lora_config lc;
        if (lora_config_from_json(it->valuestring, where, &lc)) goto out;
        meta->lora_json = xstrdup(it->valuestring);
    }
    rc = HALO_OK;
out:
    cJSON_Delete(root);
    if (rc) checkpoint_meta_free(meta);
    return rc;
}

int checkpoint_read_meta(const char *path, llama_config *cfg, checkpoint_meta *meta) {
    st_file f;
    if (st_open(path, &f)) return halo_fail_ctx("loading checkpoint: ");
    int rc = parse_meta(&f, cfg, meta);
    st_close(&f);
    return rc;
}

// Checks one tensor against the table entry (present, F32, the entry's shape) and its values (finite; >= 0 for
// second moments, whose square root AdamW takes) without copying: a refused file leaves the caller's model as it was.
static int check_tensor(const st_file *f, const char *name, const llama_param *p, int nonneg) {
    const st_tensor *t = st_find(f, name);
    if (!t) return halo_fail("checkpoint %s: tensor '%s' is missing", f->path, name);
    if (t->dtype != ST_F32)
        return halo_fail("checkpoint %s: tensor '%s' is %s, expected F32", f->path, name, st_dtype_name(t->dtype));
    int ok = t->ndim == p->ndim;
    for (int i = 0; ok && i < p->ndim; i++) ok = t->shape[i] == p->shape[i];
    if (!ok) {
        char want[128] = "", got[128] = "";
        for (int i = 0; i < p->ndim; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "", (long long)p->shape[i]);
        for (int i = 0; i < t->ndim; i++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "", (long long)t->shape[i]);
        return halo_fail("checkpoint %s: tensor '%s' has shape [%s], expected [%s]", f->path, name, got, want);
    }
    const uint8_t *src = f->data + t->offset;
    for (size_t i = 0; i < t->numel; i++) {
        float x;
        memcpy(&x, src + 4 * i, 4);
        if (!isfinite(x) || (nonneg && x < 0))
            return halo_fail("checkpoint %s: tensor '%s' holds %g at element %zu", f->path, name, (double)x, i);
    }
    return HALO_OK;
}

int checkpoint_load(const char *path, llama_model *m, adamw_state *opt, checkpoint_meta *meta) {
    st_file f;
    if (st_open(path, &f)) return halo_fail_ctx("loading checkpoint: ");
    llama_config cfg;
    int rc = parse_meta(&f, &cfg, meta);
    if (rc) { st_close(&f); return rc; }
    char *a = llama_config_to_json(&cfg, NULL, 0), *b = llama_config_to_json(&m->cfg, NULL, 0);
    if (strcmp(a, b)) rc = halo_fail("checkpoint %s: model config %s differs from the model being loaded %s", path, a, b);
    free(a); free(b);
    if (!rc && meta->lora_json && !llama_get_lora(m))
        rc = halo_fail("checkpoint %s holds LoRA adapters (%s), and the model being loaded has none", path, meta->lora_json);
    if (!rc && !meta->lora_json && llama_get_lora(m))
        rc = halo_fail("checkpoint %s holds a whole model, not LoRA adapters (resume it without LoRA options)", path);
    if (!rc && meta->lora_json) {
        char *now = lora_config_to_json(llama_get_lora(m));
        if (strcmp(now, meta->lora_json))
            rc = halo_fail("checkpoint %s: its LoRA adapters %s differ from the model's %s", path, meta->lora_json, now);
        free(now);
    }
    const llama_trainable tp = llama_trainable_params(m);
    if (!rc && opt && opt->n != tp.n)
        rc = halo_fail("checkpoint %s: optimizer size %zu != %zu params", path, opt->n, tp.n);
    char name[160];
    // every tensor checked first, then copied: nothing of m or opt changes unless the whole file is good
    for (int i = 0; !rc && i < tp.n_table; i++) {
        const llama_param *p = &tp.table[i];
        rc = check_tensor(&f, p->name, p, 0);
        if (!rc && opt) {
            snprintf(name, sizeof name, "optim.m.%s", p->name);
            rc = check_tensor(&f, name, p, 0);
            if (rc && !st_find(&f, name))
                halo_fail("checkpoint %s: tensor '%s' is missing (a parameters-only file cannot resume training)", path, name);
            if (!rc) {
                snprintf(name, sizeof name, "optim.v.%s", p->name);
                rc = check_tensor(&f, name, p, 1);
            }
        }
    }
    for (int i = 0; !rc && i < tp.n_table; i++) {
        const llama_param *p = &tp.table[i];
        memcpy(tp.params + p->offset, f.data + st_find(&f, p->name)->offset, p->numel * sizeof(float));
        if (opt) {
            snprintf(name, sizeof name, "optim.m.%s", p->name);
            memcpy(opt->m + p->offset, f.data + st_find(&f, name)->offset, p->numel * sizeof(float));
            snprintf(name, sizeof name, "optim.v.%s", p->name);
            memcpy(opt->v + p->offset, f.data + st_find(&f, name)->offset, p->numel * sizeof(float));
        }
    }
    if (!rc && opt) opt->t = meta->optim_t;
    st_close(&f);
    if (rc) checkpoint_meta_free(meta);
    return rc;
}

void checkpoint_meta_free(checkpoint_meta *meta) {
    free(meta->options_json); free(meta->app_json); free(meta->lora_json);
    meta->options_json = meta->app_json = meta->lora_json = NULL;
}

// ---- checkpoint folders ----------------------------------------------------------------------------------------

// Step number of "step_NNNNNNNN.safetensors", or -1 for any other name (temp files included).
static int64_t ckpt_name_step(const char *name) {
    size_t n = strlen(name);
    const char *suf = ".safetensors";
    if (strncmp(name, "step_", 5) || n <= 5 + strlen(suf) || strcmp(name + n - strlen(suf), suf)) return -1;
    int64_t v = 0;
    for (const char *c = name + 5; c < name + n - strlen(suf); c++) {
        if (*c < '0' || *c > '9') return -1;
        v = v * 10 + (*c - '0');
    }
    return v;
}

static int64_t *list_steps(const char *dir, int *count) {
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    int cap = 16;
    int64_t *steps = xmalloc(cap * sizeof *steps);
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = ckpt_name_step(e->d_name);
        if (s < 0) continue;
        if (*count == cap) { cap *= 2; steps = xrealloc(steps, cap * sizeof *steps); }
        steps[(*count)++] = s;
    }
    closedir(d);
    return steps;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t checkpoint_latest_step(const char *dir) {
    int n;
    int64_t *steps = list_steps(dir, &n), best = -1;
    for (int i = 0; i < n; i++) if (steps[i] > best) best = steps[i];
    free(steps);
    return best;
}

int checkpoint_find_latest(const char *dir, char *buf, size_t cap) {
    int64_t best = checkpoint_latest_step(dir);
    if (best < 0) {
        DIR *d = opendir(dir);
        if (!d) return halo_fail("checkpoint folder %s cannot be read", dir);
        closedir(d);
        return halo_fail("checkpoint folder %s holds no step_*.safetensors", dir);
    }
    checkpoint_path(buf, cap, dir, best);
    return HALO_OK;
}

void checkpoint_prune(const char *dir, int keep, int64_t current) {
    if (keep <= 0) return;
    int n;
    int64_t *steps = list_steps(dir, &n);
    if (!steps) return;
    qsort(steps, n, sizeof *steps, cmp_i64);
    while (n > 0 && steps[n - 1] > current) n--;   // an earlier run's later steps stay
    char path[4096];
    for (int i = 0; i + keep < n; i++) {
        checkpoint_path(path, sizeof path, dir, steps[i]);
        unlink(path);
    }
    free(steps);
}
