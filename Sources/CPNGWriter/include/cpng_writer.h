#ifndef CUSTOS_CPNG_WRITER_H
#define CUSTOS_CPNG_WRITER_H
// A small C wrapper around libpng's write API. libpng reports errors with longjmp, which
// Swift cannot survive; the setjmp lives here and every libpng error becomes a return code
// with its message copied into `cpng_result.error`.
#include <stddef.h>

/// Layout of the input pixels, byte by byte in memory.
typedef enum {
    CPNG_RGB = 0,   ///< 3 bytes per pixel: R, G, B
    CPNG_BGRX = 1,  ///< 4 bytes: B, G, R, pad (X depth 24/32 little-endian, red_mask 0xff0000)
    CPNG_RGBX = 2,  ///< 4 bytes: R, G, B, pad
    CPNG_XRGB = 3,  ///< 4 bytes: pad, R, G, B
    CPNG_XBGR = 4,  ///< 4 bytes: pad, B, G, R
} cpng_format;

/// The encoded PNG (owned by the caller; free with `cpng_result_free`) or an error message.
typedef struct {
    unsigned char *data;
    size_t size;
    size_t capacity;
    char error[200];
} cpng_result;

/// Encodes `height` rows of `width` pixels, each row starting `stride` bytes after the
/// previous, as an 8-bit RGB PNG (colour type 2, no alpha). `level` is the zlib level 0-9,
/// `strategy` a zlib strategy (Z_DEFAULT_STRATEGY 0, Z_FILTERED 1, Z_RLE 3), `filters` a
/// mask of PNG_FILTER_* values. Returns 0 on success, -1 with `out->error` set otherwise.
int cpng_encode(const unsigned char *pixels, int width, int height, size_t stride, cpng_format format,
                int level, int strategy, int filters, cpng_result *out);

/// Frees `out->data` (safe on a zeroed or already-freed result).
void cpng_result_free(cpng_result *out);

#endif
