#include "cpng_writer.h"
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

struct cpng_stream {
    png_structp png;
    png_infop info;
    int height;
    int rows_written;
    int failed;
    unsigned char *data;
    size_t size;
    size_t capacity;
    char error[200];
};

static void cpng_fail(cpng_stream *s, const char *message) {
    if (s->error[0] == 0) {
        strncpy(s->error, message ? message : "unknown libpng error", sizeof(s->error) - 1);
        s->error[sizeof(s->error) - 1] = 0;
    }
    s->failed = 1;
}

static void cpng_error_fn(png_structp png, png_const_charp message) {
    cpng_stream *s = (cpng_stream *)png_get_error_ptr(png);
    if (s != NULL) cpng_fail(s, message);
    png_longjmp(png, 1);
}

static void cpng_warning_fn(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

static void cpng_write_fn(png_structp png, png_bytep bytes, png_size_t length) {
    cpng_stream *s = (cpng_stream *)png_get_io_ptr(png);
    if (s->size + length > s->capacity) {
        size_t capacity = s->capacity ? s->capacity : 65536;
        while (capacity < s->size + length) capacity *= 2;
        unsigned char *grown = realloc(s->data, capacity);
        if (grown == NULL) png_error(png, "out of memory growing the PNG buffer");
        s->data = grown;
        s->capacity = capacity;
    }
    memcpy(s->data + s->size, bytes, length);
    s->size += length;
}

static void cpng_flush_fn(png_structp png) { (void)png; }

cpng_stream *cpng_stream_begin(int width, int height, cpng_format format, int level, int strategy, int filters) {
    cpng_stream *s = calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    s->height = height;
    if (width <= 0 || height <= 0) {
        cpng_fail(s, "empty image");
        return s;
    }
    s->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, s, cpng_error_fn, cpng_warning_fn);
    if (s->png == NULL) {
        cpng_fail(s, "png_create_write_struct failed");
        return s;
    }
    s->info = png_create_info_struct(s->png);
    if (s->info == NULL) {
        cpng_fail(s, "png_create_info_struct failed");
        return s;
    }
    if (setjmp(png_jmpbuf(s->png))) return s;  // cpng_error_fn recorded the message
    png_set_write_fn(s->png, s, cpng_write_fn, cpng_flush_fn);
    png_set_compression_level(s->png, level);
    png_set_compression_strategy(s->png, strategy);
    png_set_filter(s->png, PNG_FILTER_TYPE_BASE, filters);
    png_set_IHDR(s->png, s->info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(s->png, s->info);
    switch (format) {
    case CPNG_RGB: break;
    case CPNG_BGRX: png_set_bgr(s->png); png_set_filler(s->png, 0, PNG_FILLER_AFTER); break;
    case CPNG_RGBX: png_set_filler(s->png, 0, PNG_FILLER_AFTER); break;
    case CPNG_XRGB: png_set_filler(s->png, 0, PNG_FILLER_BEFORE); break;
    case CPNG_XBGR: png_set_bgr(s->png); png_set_filler(s->png, 0, PNG_FILLER_BEFORE); break;
    default: png_error(s->png, "unknown pixel format");
    }
    return s;
}

int cpng_stream_write_rows(cpng_stream *s, const unsigned char *pixels, int rows, size_t stride) {
    if (s == NULL || s->failed) return -1;
    if (pixels == NULL || rows < 0 || rows > s->height - s->rows_written) {
        cpng_fail(s, "more rows written than the image height");
        return -1;
    }
    if (setjmp(png_jmpbuf(s->png))) return -1;
    for (int y = 0; y < rows; y++) png_write_row(s->png, (png_const_bytep)(pixels + (size_t)y * stride));
    s->rows_written += rows;
    return 0;
}

int cpng_stream_finish(cpng_stream *s, unsigned char **data, size_t *size) {
    if (s == NULL || s->failed) return -1;
    if (s->rows_written != s->height) {
        cpng_fail(s, "image ended before all rows were written");
        return -1;
    }
    if (setjmp(png_jmpbuf(s->png))) return -1;
    png_write_end(s->png, NULL);
    *data = s->data;
    *size = s->size;
    s->data = NULL;
    s->size = 0;
    s->capacity = 0;
    return 0;
}

const char *cpng_stream_error(const cpng_stream *s) { return s ? s->error : "no stream"; }

void cpng_stream_free(cpng_stream *s) {
    if (s == NULL) return;
    if (s->png != NULL) png_destroy_write_struct(&s->png, s->info ? &s->info : NULL);
    free(s->data);
    free(s);
}
