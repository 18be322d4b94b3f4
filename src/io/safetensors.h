// safetensors files: a validating reader (every header field checked, errors name the file and tensor) and an
// atomic writer (temp file, fsync, rename). Format: u64 little-endian header length, JSON header, raw data.
#ifndef HALO_SAFETENSORS_H
#define HALO_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32 = 0, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_F8_E4M3,
               ST_F8_E5M2, ST_NDTYPES } st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t numel;
    size_t offset, nbytes;   // byte range inside the data section
} st_tensor;

typedef struct {
    char *path;
    uint8_t *map;            // whole file, mmap'ed read-only
    size_t map_size;
    const uint8_t *data;     // start of the data section
    size_t data_size;
    st_tensor *tensors;
    int n_tensors;
} st_file;

const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);

int st_open(const char *path, st_file *f);                   // validates the whole header
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
// Converts tensor `name` (F32, F16, BF16 or F64) to float32 into dst, checking it has exactly `numel` elements
// and, when shape != NULL, that shape (ndim dims) matches.
int st_read_f32(const st_file *f, const char *name, float *dst, int ndim, const int64_t *shape);

// Reads an I32 (or I64, range-checked) tensor into a malloc'ed int32 array; *numel and shape (ndim <= 8) are filled.
int st_read_i32(const st_file *f, const char *name, int32_t **out, int *ndim, int64_t *shape);

// Writer: collect tensors (data is copied or converted at write time from the pointer given; keep it alive until
// st_writer_write), then write atomically. F32 sources can be stored as F32 or BF16 (round to nearest even).
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_add(st_writer *w, const char *name, st_dtype stored, st_dtype src, const void *src_data,
                   int ndim, const int64_t *shape);
void st_writer_meta(st_writer *w, const char *key, const char *value);   // __metadata__ string entries
int st_writer_write(st_writer *w, const char *path);
void st_writer_free(st_writer *w);

// Atomic whole-file write helper used by every writer in halo: writes to PATH.tmp, fsyncs, renames over PATH.
int halo_write_file_atomic(const char *path, const void *const *parts, const size_t *sizes, int n_parts);
#endif
