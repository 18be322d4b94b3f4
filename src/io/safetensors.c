// safetensors reader (mmap, full header validation) and atomic writer.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "util/error.h"
#include "util/numeric.h"

static const char *const DTYPE_NAMES[ST_NDTYPES] = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8",
                                                     "BOOL", "F8_E4M3", "F8_E5M2"};
static const size_t DTYPE_SIZES[ST_NDTYPES] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1, 1, 1};

const char *st_dtype_name(st_dtype t) { return (unsigned)t < ST_NDTYPES ? DTYPE_NAMES[t] : "?"; }
size_t st_dtype_size(st_dtype t) { return (unsigned)t < ST_NDTYPES ? DTYPE_SIZES[t] : 0; }

static int parse_dtype(const char *s, st_dtype *out) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(s, DTYPE_NAMES[i])) { *out = (st_dtype)i; return 1; }
    return 0;
}

static int cmp_offset(const void *a, const void *b) {
    const st_tensor *x = *(st_tensor *const *)a, *y = *(st_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

// Validates one header entry and fills t. Returns HALO_ERR with the file and tensor named.
static int parse_entry(const char *path, const cJSON *e, st_tensor *t, size_t data_size) {
    const char *name = e->string;
    if (!cJSON_IsObject(e)) return halo_fail("%s: tensor '%s': header entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return halo_fail("%s: tensor '%s': missing or non-string 'dtype'", path, name);
    if (!parse_dtype(dt->valuestring, &t->dtype))
        return halo_fail("%s: tensor '%s': unknown dtype '%s'", path, name, dt->valuestring);
    if (!cJSON_IsArray(sh)) return halo_fail("%s: tensor '%s': missing 'shape' array", path, name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > 8) return halo_fail("%s: tensor '%s': %d dimensions (at most 8 supported)", path, name, nd);
    t->ndim = nd;
    size_t numel = 1;
    for (int i = 0; i < nd; i++) {
        const cJSON *d = cJSON_GetArrayItem(sh, i);
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 1e15 ||   // range first: casting 1e300 is UB
            d->valuedouble != (double)(int64_t)d->valuedouble)
            return halo_fail("%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, i);
        t->shape[i] = (int64_t)d->valuedouble;
        if (t->shape[i] && numel > ((size_t)1 << 50) / (size_t)t->shape[i])
            return halo_fail("%s: tensor '%s': shape too large", path, name);
        numel *= (size_t)t->shape[i];
    }
    t->numel = numel;
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2)
        return halo_fail("%s: tensor '%s': 'data_offsets' must be [begin, end]", path, name);
    double b = cJSON_GetArrayItem(of, 0)->valuedouble, en = cJSON_GetArrayItem(of, 1)->valuedouble;
    if (!cJSON_IsNumber(cJSON_GetArrayItem(of, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(of, 1)) || b < 0 ||
        en < b || en > 1e18 || b != (double)(size_t)b || en != (double)(size_t)en)
        return halo_fail("%s: tensor '%s': bad data_offsets [%g, %g]", path, name, b, en);
    t->offset = (size_t)b;
    t->nbytes = (size_t)en - (size_t)b;
    if ((size_t)en > data_size)
        return halo_fail("%s: tensor '%s': data_offsets [%zu, %zu] out of bounds (data section is %zu bytes)", path,
                         name, t->offset, (size_t)en, data_size);
    if (t->nbytes != numel * DTYPE_SIZES[t->dtype])
        return halo_fail("%s: tensor '%s': shape x dtype size = %zu bytes but data_offsets span %zu bytes", path, name,
                         numel * DTYPE_SIZES[t->dtype], t->nbytes);
    t->name = xstrdup(name);
    return HALO_OK;
}

int st_open(const char *path, st_file *f) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return halo_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); return halo_fail("%s: cannot stat: %s", path, strerror(errno)); }
    if (!S_ISREG(sb.st_mode)) { close(fd); return halo_fail("%s: not a regular file", path); }
    size_t size = (size_t)sb.st_size;
    if (size < 8) { close(fd); return halo_fail("%s: file is %zu bytes, too short for a safetensors header", path, size); }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return halo_fail("%s: cannot map: %s", path, strerror(errno));
    f->path = xstrdup(path);
    f->map = map;
    f->map_size = size;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)f->map[i] << (8 * i);
    if (hlen > size - 8 || hlen > (100u << 20)) {
        int r = halo_fail("%s: header length %llu exceeds the file size %zu (truncated or not a safetensors file)",
                          path, (unsigned long long)hlen, size);
        st_close(f);
        return r;
    }
    f->data = f->map + 8 + hlen;
    f->data_size = size - 8 - hlen;
    cJSON *root = cJSON_ParseWithLength((const char *)f->map + 8, hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        st_close(f);
        return halo_fail("%s: header is not a valid JSON object", path);
    }
    int n = 0;
    for (cJSON *e = root->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__")) n++;
    f->tensors = xcalloc((size_t)n, sizeof(st_tensor));
    int rc = HALO_OK;
    for (cJSON *e = root->child; e && rc == HALO_OK; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        rc = parse_entry(path, e, &f->tensors[f->n_tensors], f->data_size);
        if (rc == HALO_OK) f->n_tensors++;
    }
    cJSON_Delete(root);
    if (rc == HALO_OK) {  // byte ranges must not overlap
        st_tensor **order = xmalloc(sizeof(st_tensor *) * (size_t)(f->n_tensors ? f->n_tensors : 1));
        for (int i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
        qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_offset);
        for (int i = 1; i < f->n_tensors && rc == HALO_OK; i++)
            if (order[i]->offset < order[i - 1]->offset + order[i - 1]->nbytes)
                rc = halo_fail("%s: tensors '%s' and '%s' overlap in the data section", path, order[i - 1]->name,
                               order[i]->name);
        free(order);
    }
    if (rc != HALO_OK) st_close(f);
    return rc;
}

void st_close(st_file *f) {
    if (f->map) munmap(f->map, f->map_size);
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

int st_read_f32(const st_file *f, const char *name, float *dst, int ndim, const int64_t *shape) {
    const st_tensor *t = st_find(f, name);
    if (!t) return halo_fail("%s: missing tensor '%s'", f->path, name);
    if (shape) {
        int ok = t->ndim == ndim;
        for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
        if (!ok) {
            char want[128] = "", got[128] = "";
            for (int i = 0; i < ndim; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "", (long long)shape[i]);
            for (int i = 0; i < t->ndim; i++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "", (long long)t->shape[i]);
            return halo_fail("%s: tensor '%s' has shape [%s], expected [%s]", f->path, name, got, want);
        }
    }
    const uint8_t *src = f->data + t->offset;
    size_t n = t->numel;
    switch (t->dtype) {
    case ST_F32: memcpy(dst, src, n * 4); break;
    case ST_F64: for (size_t i = 0; i < n; i++) { double d; memcpy(&d, src + 8 * i, 8); dst[i] = (float)d; } break;
    case ST_BF16: for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); dst[i] = bf16_to_f32(h); } break;
    case ST_F16: for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); dst[i] = f16_to_f32(h); } break;
    default: return halo_fail("%s: tensor '%s' has dtype %s; expected F32, F16, BF16 or F64", f->path, name,
                              st_dtype_name(t->dtype));
    }
    return HALO_OK;
}

int st_read_i32(const st_file *f, const char *name, int32_t **out, int *ndim, int64_t *shape) {
    const st_tensor *t = st_find(f, name);
    if (!t) return halo_fail("%s: missing tensor '%s'", f->path, name);
    if (t->dtype != ST_I32 && t->dtype != ST_I64)
        return halo_fail("%s: tensor '%s' has dtype %s; expected I32 or I64", f->path, name, st_dtype_name(t->dtype));
    int32_t *dst = xmalloc(sizeof(int32_t) * (t->numel ? t->numel : 1));
    const uint8_t *src = f->data + t->offset;
    for (size_t i = 0; i < t->numel; i++) {
        if (t->dtype == ST_I32) memcpy(&dst[i], src + 4 * i, 4);
        else {
            int64_t v;
            memcpy(&v, src + 8 * i, 8);
            if (v < INT32_MIN || v > INT32_MAX) { free(dst); return halo_fail("%s: tensor '%s': element %zu out of int32 range", f->path, name, i); }
            dst[i] = (int32_t)v;
        }
    }
    *ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
    *out = dst;
    return HALO_OK;
}

// ---- writer ----
typedef struct { char *name; st_dtype stored, src; const void *data; int ndim; int64_t shape[8]; size_t numel; } st_entry;
struct st_writer { st_entry *e; int n, cap; char **meta; int n_meta; };

st_writer *st_writer_new(void) { return xcalloc(1, sizeof(st_writer)); }

void st_writer_add(st_writer *w, const char *name, st_dtype stored, st_dtype src, const void *src_data, int ndim,
                   const int64_t *shape) {
    if (w->n == w->cap) { w->cap = w->cap ? 2 * w->cap : 64; w->e = xrealloc(w->e, sizeof(st_entry) * (size_t)w->cap); }
    st_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    e->stored = stored; e->src = src; e->data = src_data; e->ndim = ndim;
    e->numel = 1;
    for (int i = 0; i < ndim; i++) { e->shape[i] = shape[i]; e->numel *= (size_t)shape[i]; }
}

void st_writer_meta(st_writer *w, const char *key, const char *value) {
    w->meta = xrealloc(w->meta, sizeof(char *) * (size_t)(w->n_meta + 2));
    w->meta[w->n_meta++] = xstrdup(key);
    w->meta[w->n_meta++] = xstrdup(value);
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    for (int i = 0; i < w->n_meta; i++) free(w->meta[i]);
    free(w->e); free(w->meta); free(w);
}

int st_writer_write(st_writer *w, const char *path) {
    cJSON *root = cJSON_CreateObject();
    if (w->n_meta) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; i < w->n_meta; i += 2) cJSON_AddStringToObject(m, w->meta[i], w->meta[i + 1]);
    }
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        st_entry *e = &w->e[i];
        cJSON *o = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(o, "dtype", st_dtype_name(e->stored));
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
        size_t nb = e->numel * st_dtype_size(e->stored);
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7;   // pad with spaces to 8-byte alignment
    char *h = xmalloc(padded);
    memcpy(h, hdr, hlen);
    memset(h + hlen, ' ', padded - hlen);
    free(hdr);
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int n_parts = 2 + w->n;
    const void **parts = xmalloc(sizeof(void *) * (size_t)n_parts);
    size_t *sizes = xmalloc(sizeof(size_t) * (size_t)n_parts);
    void **owned = xcalloc((size_t)w->n, sizeof(void *));
    parts[0] = lenbuf; sizes[0] = 8; parts[1] = h; sizes[1] = padded;
    int rc = HALO_OK;
    for (int i = 0; i < w->n; i++) {
        st_entry *e = &w->e[i];
        size_t nb = e->numel * st_dtype_size(e->stored);
        if (e->stored == e->src) {
            parts[2 + i] = e->data;
        } else if (e->src == ST_F32 && e->stored == ST_BF16) {
            uint16_t *b = xmalloc(nb);
            const float *s = e->data;
            for (size_t k = 0; k < e->numel; k++) b[k] = f32_to_bf16(s[k]);
            parts[2 + i] = owned[i] = b;
        } else {
            rc = halo_fail("%s: tensor '%s': cannot store %s data as %s", path, e->name, st_dtype_name(e->src),
                           st_dtype_name(e->stored));
            break;
        }
        sizes[2 + i] = nb;
    }
    if (rc == HALO_OK) rc = halo_write_file_atomic(path, parts, sizes, n_parts);
    for (int i = 0; i < w->n; i++) free(owned[i]);
    free(owned); free(parts); free(sizes); free(h);
    return rc;
}

int halo_write_file_atomic(const char *path, const void *const *parts, const size_t *sizes, int n_parts) {
    size_t plen = strlen(path);
    char *tmp = xmalloc(plen + 16);
    snprintf(tmp, plen + 16, "%s.tmp%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { int r = halo_fail("%s: cannot create: %s", tmp, strerror(errno)); free(tmp); return r; }
    for (int i = 0; i < n_parts; i++) {
        const uint8_t *p = parts[i];
        size_t left = sizes[i];
        while (left) {
            ssize_t k = write(fd, p, left > (1u << 30) ? (1u << 30) : left);
            if (k < 0) {
                if (errno == EINTR) continue;
                int r = halo_fail("%s: write failed: %s", tmp, strerror(errno));
                close(fd); unlink(tmp); free(tmp);
                return r;
            }
            p += k; left -= (size_t)k;
        }
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int r = halo_fail("%s: fsync/close failed: %s", tmp, strerror(errno));
        unlink(tmp); free(tmp);
        return r;
    }
    if (rename(tmp, path) != 0) {
        int r = halo_fail("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        unlink(tmp); free(tmp);
        return r;
    }
    // fsync the directory so the rename itself is durable.
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash) { if (slash == dir) slash[1] = 0; else *slash = 0; } else strcpy(dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) { fsync(dfd); close(dfd); }
    free(dir); free(tmp);
    return HALO_OK;
}
