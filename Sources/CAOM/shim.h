#ifndef CUSTOS_CAOM_SHIM_H
#define CUSTOS_CAOM_SHIM_H
// libaom (AV1; BSD-2-Clause, https://aomedia.googlesource.com/aom). Only what Swift cannot
// call directly is wrapped: the init macros and the variadic aom_codec_control.
#include <aom/aom_encoder.h>
#include <aom/aom_decoder.h>
#include <aom/aomcx.h>
#include <aom/aomdx.h>

static inline aom_codec_err_t custos_aom_enc_init(aom_codec_ctx_t *ctx, const aom_codec_enc_cfg_t *cfg) {
    return aom_codec_enc_init(ctx, aom_codec_av1_cx(), cfg, 0);
}

static inline aom_codec_err_t custos_aom_dec_init(aom_codec_ctx_t *ctx, const aom_codec_dec_cfg_t *cfg) {
    return aom_codec_dec_init(ctx, aom_codec_av1_dx(), cfg, 0);
}

/// aom_codec_control for the controls whose argument is an int or unsigned int (aomcx.h).
static inline aom_codec_err_t custos_aom_control_int(aom_codec_ctx_t *ctx, int id, int value) {
    return aom_codec_control(ctx, id, value);
}

static inline aom_codec_err_t custos_aom_enc_config_default(aom_codec_enc_cfg_t *cfg, unsigned int usage) {
    return aom_codec_enc_config_default(aom_codec_av1_cx(), cfg, usage);
}
#endif
