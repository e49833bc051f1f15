#ifndef CUSTOS_CPNG_WRITER_H
#define CUSTOS_CPNG_WRITER_H
// A small C wrapper around libpng's write API. libpng reports errors with longjmp, which
// Swift cannot survive; the setjmp lives here (one in every function that calls libpng) and
// every libpng error becomes a return code with libpng's message kept in the stream.
#include <stddef.h>

/// Layout of the input pixels, byte by byte in memory.
typedef enum {
    CPNG_RGB = 0,   ///< 3 bytes per pixel: R, G, B
    CPNG_BGRX = 1,  ///< 4 bytes: B, G, R, pad (X depth 24/32 little-endian, red_mask 0xff0000)
    CPNG_RGBX = 2,  ///< 4 bytes: R, G, B, pad
    CPNG_XRGB = 3,  ///< 4 bytes: pad, R, G, B
    CPNG_XBGR = 4,  ///< 4 bytes: pad, B, G, R
} cpng_format;

/// An 8-bit RGB PNG (colour type 2, no alpha) being written row by row into memory, so a
/// frame can be encoded from a strip-sized buffer (the whole frame is never held raw).
typedef struct cpng_stream cpng_stream;

/// Starts a `width`×`height` PNG whose rows arrive in `format`. `level` is the zlib level 0-9,
/// `strategy` a zlib strategy (Z_DEFAULT_STRATEGY 0, Z_FILTERED 1, Z_RLE 3), `filters` a mask
/// of PNG_FILTER_* values. Returns NULL only when memory runs out; a libpng error is kept in
/// the stream (see `cpng_stream_error`) and makes every later call fail.
cpng_stream *cpng_stream_begin(int width, int height, cpng_format format, int level, int strategy, int filters);

/// Writes the next `rows` rows, each starting `stride` bytes after the previous.
/// Returns 0, or -1 on a libpng error or when more rows than `height` are written.
int cpng_stream_write_rows(cpng_stream *stream, const unsigned char *pixels, int rows, size_t stride);

/// Ends the PNG after all `height` rows. On success returns 0 and hands over the encoded
/// bytes: `*data` (free it with `free(3)`) and `*size`; on failure returns -1.
int cpng_stream_finish(cpng_stream *stream, unsigned char **data, size_t *size);

/// libpng's message for the first error, or "" (valid until `cpng_stream_free`).
const char *cpng_stream_error(const cpng_stream *stream);

/// Frees the stream and any bytes not handed over (safe on NULL).
void cpng_stream_free(cpng_stream *stream);

#endif
