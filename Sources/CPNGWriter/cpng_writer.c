#include "cpng_writer.h"
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

static void cpng_error_fn(png_structp png, png_const_charp message) {
    cpng_result *out = (cpng_result *)png_get_error_ptr(png);
    if (out != NULL) {
        strncpy(out->error, message ? message : "unknown libpng error", sizeof(out->error) - 1);
        out->error[sizeof(out->error) - 1] = 0;
    }
    png_longjmp(png, 1);
}

static void cpng_warning_fn(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

static void cpng_write_fn(png_structp png, png_bytep bytes, png_size_t length) {
    cpng_result *out = (cpng_result *)png_get_io_ptr(png);
    if (out->size + length > out->capacity) {
        size_t capacity = out->capacity ? out->capacity : 65536;
        while (capacity < out->size + length) capacity *= 2;
        unsigned char *grown = realloc(out->data, capacity);
        if (grown == NULL) png_error(png, "out of memory growing the PNG buffer");
        out->data = grown;
        out->capacity = capacity;
    }
    memcpy(out->data + out->size, bytes, length);
    out->size += length;
}

static void cpng_flush_fn(png_structp png) { (void)png; }

int cpng_encode(const unsigned char *pixels, int width, int height, size_t stride, cpng_format format,
                int level, int strategy, int filters, cpng_result *out) {
    out->data = NULL;
    out->size = 0;
    out->capacity = 0;
    out->error[0] = 0;
    if (width <= 0 || height <= 0 || pixels == NULL) {
        strcpy(out->error, "empty image");
        return -1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, out, cpng_error_fn, cpng_warning_fn);
    if (png == NULL) {
        strcpy(out->error, "png_create_write_struct failed");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (info == NULL) {
        png_destroy_write_struct(&png, NULL);
        strcpy(out->error, "png_create_info_struct failed");
        return -1;
    }
    // Rough first allocation: most desktop frames compress to well under a third.
    size_t guess = (size_t)width * (size_t)height + 4096;
    out->data = malloc(guess);
    out->capacity = out->data ? guess : 0;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(out->data);
        out->data = NULL;
        out->size = 0;
        out->capacity = 0;
        if (out->error[0] == 0) strcpy(out->error, "libpng error");
        return -1;
    }
    png_set_write_fn(png, out, cpng_write_fn, cpng_flush_fn);
    png_set_compression_level(png, level);
    png_set_compression_strategy(png, strategy);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, filters);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    switch (format) {
    case CPNG_RGB: break;
    case CPNG_BGRX: png_set_bgr(png); png_set_filler(png, 0, PNG_FILLER_AFTER); break;
    case CPNG_RGBX: png_set_filler(png, 0, PNG_FILLER_AFTER); break;
    case CPNG_XRGB: png_set_filler(png, 0, PNG_FILLER_BEFORE); break;
    case CPNG_XBGR: png_set_bgr(png); png_set_filler(png, 0, PNG_FILLER_BEFORE); break;
    default: png_error(png, "unknown pixel format");
    }
    for (int y = 0; y < height; y++) {
        png_write_row(png, (png_const_bytep)(pixels + (size_t)y * stride));
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

void cpng_result_free(cpng_result *out) {
    if (out == NULL) return;
    free(out->data);
    out->data = NULL;
    out->size = 0;
    out->capacity = 0;
}
