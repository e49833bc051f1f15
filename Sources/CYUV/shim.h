#ifndef CUSTOS_CYUV_SHIM_H
#define CUSTOS_CYUV_SHIM_H
// libyuv (BSD-3-Clause, https://chromium.googlesource.com/libyuv/libyuv): RGB <-> I420.
// Its names give the channel order of a little-endian 32-bit word, so "ARGB" is B,G,R,A in
// memory (X11's usual depth-24 BGRX), "ABGR" is R,G,B,A, "BGRA" is A,R,G,B, "RGBA" is A,B,G,R,
// and "RAW" is R,G,B (docs/formats.md in libyuv).
#include <libyuv/convert.h>
#include <libyuv/convert_argb.h>
#include <libyuv/convert_from_argb.h>
#include <libyuv/compare.h>
#endif
