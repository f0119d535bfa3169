/*
 * fuzz_decode.c — libFuzzer target for the Millrace PNG/JPEG decoders (Sources/MillraceCodecs).
 *
 * Each input goes through mrc_image_info and mrc_image_decode (format sniffed). Besides the
 * sanitizers' memory checks, it asserts the codecs' contract: an error leaves *out NULL and a
 * NUL-terminated, non-empty message; a success gives a buffer of exactly width*height*3 bytes
 * (ASan checks the extent when the last byte is read), and that buffer survives a PNG round
 * trip bit for bit. See README.md for how to build and run it.
 */
#include "millrace_codecs.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Small enough that one input never takes long; the header check runs before allocation. */
#define FUZZ_MAX_PIXELS (1u << 22)

static void check_message(const char *err, size_t size) {
    if (memchr(err, 0, size) == NULL || err[0] == 0) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    uint32_t w = 0, h = 0;
    mrc_format format;

    memset(err, 0x55, sizeof err);
    if (mrc_image_info(data, size, &format, &w, &h, err, sizeof err) != MRC_OK)
        check_message(err, sizeof err);

    uint8_t *rgb = (uint8_t *)0x1; /* must be overwritten */
    memset(err, 0x55, sizeof err);
    mrc_status st = mrc_image_decode(data, size, FUZZ_MAX_PIXELS, &rgb, &w, &h, err, sizeof err);
    if (st != MRC_OK) {
        if (rgb != NULL) __builtin_trap();
        check_message(err, sizeof err);
        if (st == MRC_TOO_LARGE && (uint64_t)w * h <= FUZZ_MAX_PIXELS) __builtin_trap();
        return 0;
    }
    if (rgb == NULL || w == 0 || h == 0 || (uint64_t)w * h > FUZZ_MAX_PIXELS) __builtin_trap();
    const size_t n = (size_t)w * h * 3;
    volatile uint8_t sink = rgb[0] ^ rgb[n - 1];
    (void)sink;

    if ((uint64_t)w * h <= 1u << 16) { /* keep the round trip cheap */
        uint8_t *png = NULL, *back = NULL;
        size_t png_size = 0;
        uint32_t w2 = 0, h2 = 0;
        if (mrc_png_encode(rgb, w, h, (w + h) % 2 ? MRC_PNG_FAST : MRC_PNG_DEFAULT, &png,
                           &png_size, err, sizeof err) != MRC_OK)
            __builtin_trap();
        if (mrc_png_decode(png, png_size, FUZZ_MAX_PIXELS, &back, &w2, &h2, err, sizeof err) !=
                MRC_OK ||
            w2 != w || h2 != h || memcmp(back, rgb, n) != 0)
            __builtin_trap();
        mrc_free(png);
        mrc_free(back);
    }
    mrc_free(rgb);
    return 0;
}
