/* engine/gguf.h — GGUF v2/v3 reader: validates a whole file up front, then hands out
 * zero-copy views of metadata and tensors. Any thread may read a GGUFFile once opened. */
#pragma once
#include <stddef.h>
#include <stdint.h>

/* Metadata value types, as stored on disk. */
typedef enum GGUFValueType {
        GGUF_TYPE_UINT8 = 0,
        GGUF_TYPE_INT8 = 1,
        GGUF_TYPE_UINT16 = 2,
        GGUF_TYPE_INT16 = 3,
        GGUF_TYPE_UINT32 = 4,
        GGUF_TYPE_INT32 = 5,
        GGUF_TYPE_FLOAT32 = 6,
        GGUF_TYPE_BOOL = 7,
        GGUF_TYPE_STRING = 8,
        GGUF_TYPE_ARRAY = 9,
        GGUF_TYPE_UINT64 = 10,
        GGUF_TYPE_INT64 = 11,
        GGUF_TYPE_FLOAT64 = 12,
        GGUF_TYPE_COUNT_,
} GGUFValueType;

/* A string inside the file: NOT NUL-terminated. */
typedef struct GGUFString {
        uint64_t len;
        const char *data;
} GGUFString;

typedef struct GGUFKV {
        GGUFString key;
        GGUFValueType type;
        GGUFValueType arr_type;  /* element type when type == GGUF_TYPE_ARRAY */
        uint64_t arr_len;        /* element count when type == GGUF_TYPE_ARRAY */
        const uint8_t *value;    /* raw little-endian value (arrays: first element) */
} GGUFKV;

#define GGUF_MAX_DIMS 4

typedef struct GGUFTensor {
        GGUFString name;
        uint32_t n_dims;
        uint64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] varies fastest; unused dims are 1 */
        uint32_t type;              /* ggml type id (see quant.h) */
        uint64_t offset;            /* from the start of the data section */
        uint64_t n_elements;
        uint64_t n_bytes;
        const void *data;           /* view into the mapping, aligned in memory for the type */
} GGUFTensor;

typedef struct GGUFFile {
        const uint8_t *base;   /* whole file (mmap or caller buffer) */
        size_t size;           /* bytes */
        int mapped;            /* 1 if base is our mmap */
        uint32_t version;
        uint64_t n_kv;
        GGUFKV *kv;            /* [n_kv] */
        uint64_t n_tensors;
        GGUFTensor *tensors;   /* [n_tensors] */
        uint64_t alignment;    /* bytes */
        uint64_t data_offset;  /* bytes from file start */
} GGUFFile;

/* Why a file was rejected: a human-readable line naming the field. */
typedef struct GGUFError {
        char msg[256];
} GGUFError;

/* Open and validate. Returns 0, or -errno (-EBADMSG malformed, -E2BIG over a limit,
 * -EOVERFLOW size overflow, -ENOTSUP unknown type/version, or open/mmap errors).
 * err (may be NULL) receives the reason. */
int gguf_open(const char *path, GGUFError *err, GGUFFile **ret_file);
/* Same over a caller-owned buffer that must outlive the GGUFFile (used by fuzzing). Tensor
 * data must end up naturally aligned in memory for its type (a tensor that would not is
 * rejected), so pass a buffer aligned at least as well as malloc's. */
int gguf_open_buffer(const void *buf, size_t size, GGUFError *err, GGUFFile **ret_file);
GGUFFile *gguf_close(GGUFFile *f);

const GGUFKV *gguf_find_kv(const GGUFFile *f, const char *key);
const GGUFTensor *gguf_find_tensor(const GGUFFile *f, const char *name);

/* Typed getters: 0, -ENOENT when the key is absent, -EBADMSG when of the wrong type or
 * out of range for the result. Integer getters accept any integer type whose value fits. */
int gguf_get_u32(const GGUFFile *f, const char *key, uint32_t *ret);
int gguf_get_u64(const GGUFFile *f, const char *key, uint64_t *ret);
int gguf_get_f32(const GGUFFile *f, const char *key, float *ret);
int gguf_get_bool(const GGUFFile *f, const char *key, int *ret);
int gguf_get_str(const GGUFFile *f, const char *key, GGUFString *ret);
/* Array of fixed-size elements of type t: pointer to the first element, unaligned. */
int gguf_get_array(const GGUFFile *f, const char *key, GGUFValueType t, const void **ret_data, uint64_t *ret_n);
/* Array of strings: allocates *ret_strings (free() it) with views into the file. */
int gguf_get_str_array(const GGUFFile *f, const char *key, GGUFString **ret_strings, uint64_t *ret_n);

int gguf_str_eq(GGUFString s, const char *c);
