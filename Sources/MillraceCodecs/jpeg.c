/*
 * jpeg.c — JPEG decode/encode through libjpeg(-turbo), from and to memory.
 *
 * Error handling: libjpeg's error_exit is replaced by one that formats the message into our
 * error manager and longjmps back to the public function; output_message is silenced, and
 * warnings are never printed: those that mean damaged image data become errors, the rest are
 * only counted. The source and destination managers are our own
 * (not jpeg_mem_src/dest): the source treats running out of data as an error instead of
 * padding the image with gray, and the destination keeps its buffer where the error path can
 * free it (jpeg_mem_dest's buffer can be orphaned by an error in the middle of a write).
 */
#include "millrace_codecs.h"

#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

/* Progressive JPEGs can hold any number of scans; each one costs a full pass over the
   coefficients. Refuse more than this (libjpeg-turbo's TurboJPEG API uses the same bound). */
#define MRC_JPEG_MAX_SCANS 500

static void set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (err == NULL || err_size == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------------- */
/* Error manager                                                                             */

typedef struct jpeg_err {
    struct jpeg_error_mgr pub; /* first, so that cinfo->err can be cast back */
    jmp_buf jump;
    mrc_status status; /* what to report after the longjmp */
    int code;          /* libjpeg's msg_code for errors raised by libjpeg, else 0 */
    char message[JMSG_LENGTH_MAX + 64];
} jpeg_err;

/* Records a status and message and jumps back to the public function's setjmp. */
static void jpeg_fail(j_common_ptr cinfo, mrc_status status, const char *message) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    e->status = status;
    snprintf(e->message, sizeof e->message, "%s", message);
    longjmp(e->jump, 1);
}

static void jpeg_error_exit_cb(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    mrc_status status = MRC_CORRUPT;
    switch (cinfo->err->msg_code) {
    case JERR_EMPTY_IMAGE: status = MRC_EMPTY; break;
    case JERR_OUT_OF_MEMORY: status = MRC_NO_MEMORY; break;
    case JERR_IMAGE_TOO_BIG: /* over 65500 per side; mrc_jpeg_decode may make it TOO_LARGE */
    case JERR_BAD_PRECISION:
    case JERR_SOF_UNSUPPORTED:
    case JERR_NOT_COMPILED:
    case JERR_CONVERSION_NOTIMPL: status = MRC_UNSUPPORTED; break;
    default: break;
    }
    /* A caller-set status (e.g. from a failed realloc in the destination) takes precedence. */
    if (e->status == MRC_OK) e->status = status;
    e->code = cinfo->err->msg_code;
    snprintf(e->message, sizeof e->message, "%s", text);
    longjmp(e->jump, 1);
}

static void jpeg_output_message_cb(j_common_ptr cinfo) { (void)cinfo; }

static void jpeg_emit_message_cb(j_common_ptr cinfo, int msg_level) {
    /* Level -1 is a warning; higher levels are trace output, ignored. */
    if (msg_level >= 0) return;
    cinfo->err->num_warnings++;
    switch (cinfo->err->msg_code) {
    /* Damaged entropy-coded data: libjpeg would go on with zeroed or resynchronised blocks,
       i.e. visibly broken pixels, so these count as errors. */
    case JWRN_HUFF_BAD_CODE:
    case JWRN_ARITH_BAD_CODE:
    case JWRN_HIT_MARKER:
    case JWRN_MUST_RESYNC:
    case JWRN_JPEG_EOF: {
        char text[JMSG_LENGTH_MAX];
        (*cinfo->err->format_message)(cinfo, text);
        jpeg_fail(cinfo, MRC_CORRUPT, text);
    }
    /* Metadata oddities (extraneous bytes between markers, unknown JFIF revision or Adobe
       transform, bad ICC marker, odd progression parameters) are common in real files and
       leave the pixels intact: tolerated. */
    default: break;
    }
}

static void jpeg_progress_cb(j_common_ptr cinfo) {
    if (cinfo->is_decompressor &&
        ((j_decompress_ptr)cinfo)->input_scan_number > MRC_JPEG_MAX_SCANS)
        jpeg_fail(cinfo, MRC_CORRUPT, "progressive JPEG has too many scans (over 500)");
}

static void jpeg_err_init(jpeg_err *e) {
    memset(e, 0, sizeof *e);
    jpeg_std_error(&e->pub);
    e->pub.error_exit = jpeg_error_exit_cb;
    e->pub.output_message = jpeg_output_message_cb;
    e->pub.emit_message = jpeg_emit_message_cb;
    e->status = MRC_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Memory source                                                                             */

static void src_init(j_decompress_ptr cinfo) { (void)cinfo; }

/* Set by src_fill in the decoder state (see jpeg_dec below; cinfo is its first member). */
static void src_mark_ran_out(j_decompress_ptr cinfo);

static boolean src_fill(j_decompress_ptr cinfo) {
    /* Only called once every byte has been handed over. Like libjpeg's own sources, feed a
       fake EOI marker: if pixel data was still missing, the entropy decoder then reports
       JWRN_HIT_MARKER / JWRN_MUST_RESYNC (errors, see jpeg_emit_message_cb); if only the
       trailing EOI was missing, decoding completes. mrc_jpeg_decode checks the flag for
       multi-scan files, where a cut between scans would go unnoticed otherwise. */
    static const JOCTET fake_eoi[2] = {0xFF, JPEG_EOI};
    src_mark_ran_out(cinfo);
    cinfo->src->next_input_byte = fake_eoi;
    cinfo->src->bytes_in_buffer = 2;
    return TRUE;
}

static void src_skip(j_decompress_ptr cinfo, long num_bytes) {
    struct jpeg_source_mgr *src = cinfo->src;
    if (num_bytes <= 0) return;
    if ((unsigned long)num_bytes > src->bytes_in_buffer) {
        src->next_input_byte += src->bytes_in_buffer;
        src->bytes_in_buffer = 0;
        src_fill(cinfo);
        return;
    }
    src->next_input_byte += num_bytes;
    src->bytes_in_buffer -= (size_t)num_bytes;
}

static void src_term(j_decompress_ptr cinfo) { (void)cinfo; }

static void src_setup(struct jpeg_source_mgr *src, const uint8_t *data, size_t size) {
    src->init_source = src_init;
    src->fill_input_buffer = src_fill;
    src->skip_input_data = src_skip;
    src->resync_to_restart = jpeg_resync_to_restart;
    src->term_source = src_term;
    src->next_input_byte = data;
    src->bytes_in_buffer = size;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding                                                                                  */

/* Everything the decoder's error path must see, kept in memory (address taken) so that it
   survives the longjmp. */
typedef struct jpeg_dec {
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr progress;
    uint8_t *pixels;
    uint8_t *cmyk_row;
    int ran_out; /* the source had to invent an EOI marker */
} jpeg_dec;

static void src_mark_ran_out(j_decompress_ptr cinfo) { ((jpeg_dec *)cinfo)->ran_out = 1; }

/* The message for a failed decode, noting when the data ended early. */
static void dec_report(const jpeg_dec *d, char *err, size_t err_size) {
    if (d->ran_out)
        set_err(err, err_size, "JPEG: unexpected end of data (file truncated): %s",
                d->err.message);
    else
        set_err(err, err_size, "JPEG: %s", d->err.message);
}

static void dec_release(jpeg_dec *d) {
    jpeg_destroy_decompress(&d->cinfo);
    free(d->pixels);
    free(d->cmyk_row);
    d->pixels = NULL;
    d->cmyk_row = NULL;
}

/* Sets up d and reads the header. Must be called after setjmp(d->err.jump). */
static void dec_begin(jpeg_dec *d, const uint8_t *data, size_t size) {
    jpeg_create_decompress(&d->cinfo);
    src_setup(&d->src, data, size);
    d->cinfo.src = &d->src;
    d->progress.progress_monitor = jpeg_progress_cb;
    d->cinfo.progress = &d->progress;
    jpeg_read_header(&d->cinfo, TRUE);
}

/* Allocates a zeroed decoder state with its error manager installed, or NULL. */
static jpeg_dec *dec_new(void) {
    jpeg_dec *d = calloc(1, sizeof *d);
    if (d == NULL) return NULL;
    jpeg_err_init(&d->err);
    d->cinfo.err = &d->err.pub;
    return d;
}

static mrc_status dec_check_start(const uint8_t *data, size_t size, char *err,
                                  size_t err_size) {
    if (data == NULL && size != 0) {
        set_err(err, err_size, "NULL data");
        return MRC_BAD_ARGUMENT;
    }
    if (size == 0) {
        set_err(err, err_size, "no data (0 bytes)");
        return MRC_EMPTY;
    }
    if (mrc_sniff(data, size) != MRC_FORMAT_JPEG) {
        set_err(err, err_size, "not a JPEG file (no FF D8 FF start marker)");
        return MRC_UNSUPPORTED;
    }
    return MRC_OK;
}

mrc_status mrc_jpeg_info(const uint8_t *data, size_t size, uint32_t *width, uint32_t *height,
                         char *err, size_t err_size) {
    if (width) *width = 0;
    if (height) *height = 0;
    mrc_status st = dec_check_start(data, size, err, err_size);
    if (st != MRC_OK) return st;
    jpeg_dec *d = dec_new();
    if (d == NULL) {
        set_err(err, err_size, "out of memory creating the JPEG reader");
        return MRC_NO_MEMORY;
    }
    if (setjmp(d->err.jump)) {
        st = d->err.status;
        dec_report(d, err, err_size);
        dec_release(d);
        free(d);
        return st;
    }
    dec_begin(d, data, size);
    if (width) *width = d->cinfo.image_width;
    if (height) *height = d->cinfo.image_height;
    dec_release(d);
    free(d);
    return MRC_OK;
}

mrc_status mrc_jpeg_decode(const uint8_t *data, size_t size, uint64_t max_pixels,
                           uint8_t **out_rgb, uint32_t *width, uint32_t *height,
                           char *err, size_t err_size) {
    if (out_rgb == NULL) {
        set_err(err, err_size, "NULL argument");
        return MRC_BAD_ARGUMENT;
    }
    *out_rgb = NULL;
    if (width) *width = 0;
    if (height) *height = 0;
    mrc_status st = dec_check_start(data, size, err, err_size);
    if (st != MRC_OK) return st;
    jpeg_dec *d = dec_new();
    if (d == NULL) {
        set_err(err, err_size, "out of memory creating the JPEG reader");
        return MRC_NO_MEMORY;
    }
    if (setjmp(d->err.jump)) {
        st = d->err.status;
        dec_report(d, err, err_size);
        if (d->err.code == JERR_IMAGE_TOO_BIG) {
            /* libjpeg refused a side over 65500 while reading the header; when the pixel count
               is over the limit too, report it as such, with the declared size. */
            const uint64_t pixels = (uint64_t)d->cinfo.image_width * d->cinfo.image_height;
            if (pixels > max_pixels) {
                st = MRC_TOO_LARGE;
                if (width) *width = d->cinfo.image_width;
                if (height) *height = d->cinfo.image_height;
            }
        }
        dec_release(d);
        free(d);
        return st;
    }
    dec_begin(d, data, size);
    j_decompress_ptr c = &d->cinfo;
    const uint32_t w = c->image_width, h = c->image_height;
    if (width) *width = w;
    if (height) *height = h;

    /* Header checks, before libjpeg allocates its per-image buffers and before ours. */
    if (w == 0 || h == 0) jpeg_fail((j_common_ptr)c, MRC_EMPTY, "JPEG declares an empty image");
    const uint64_t pixels = (uint64_t)w * h;
    if (pixels > max_pixels || pixels > SIZE_MAX / 4) {
        char msg[160];
        snprintf(msg, sizeof msg, "image is %" PRIu32 "x%" PRIu32 " = %" PRIu64
                 " pixels, over the limit of %" PRIu64, w, h, pixels, max_pixels);
        jpeg_fail((j_common_ptr)c, MRC_TOO_LARGE, msg);
    }
    if (c->data_precision != 8)
        jpeg_fail((j_common_ptr)c, MRC_UNSUPPORTED, "only 8-bit JPEG samples are supported");

    int cmyk = 0;
    switch (c->jpeg_color_space) {
    case JCS_GRAYSCALE:
    case JCS_YCbCr:
    case JCS_RGB: c->out_color_space = JCS_RGB; break;
    case JCS_CMYK:
    case JCS_YCCK:
        c->out_color_space = JCS_CMYK;
        cmyk = 1;
        break;
    default: {
        char msg[120];
        snprintf(msg, sizeof msg, "JPEG with %d components in an unknown color space is not "
                 "supported", c->num_components);
        jpeg_fail((j_common_ptr)c, MRC_UNSUPPORTED, msg);
    }
    }
    c->dct_method = JDCT_ISLOW;
    jpeg_start_decompress(c);
    if (c->output_width != w || c->output_height != h ||
        c->output_components != (cmyk ? 4 : 3))
        jpeg_fail((j_common_ptr)c, MRC_CORRUPT, "unexpected output layout from libjpeg");

    const size_t stride = (size_t)w * 3;
    d->pixels = malloc(stride * h);
    if (cmyk) d->cmyk_row = malloc((size_t)w * 4);
    if (d->pixels == NULL || (cmyk && d->cmyk_row == NULL))
        jpeg_fail((j_common_ptr)c, MRC_NO_MEMORY, "out of memory for the pixel buffer");

    /* Adobe's CMYK JPEGs store inverted samples (255 = no ink). */
    const int inverted = c->saw_Adobe_marker;
    while (c->output_scanline < h) {
        const size_t y = c->output_scanline;
        JSAMPROW row = cmyk ? d->cmyk_row : d->pixels + y * stride;
        if (jpeg_read_scanlines(c, &row, 1) != 1)
            jpeg_fail((j_common_ptr)c, MRC_CORRUPT, "libjpeg returned no scanline");
        if (cmyk) {
            uint8_t *dst = d->pixels + y * stride;
            const uint8_t *s = d->cmyk_row;
            for (size_t x = 0; x < w; x++, s += 4, dst += 3) {
                const unsigned k = inverted ? s[3] : 255u - s[3];
                for (int ch = 0; ch < 3; ch++) {
                    const unsigned v = inverted ? s[ch] : 255u - s[ch];
                    dst[ch] = (uint8_t)((v * k + 127u) / 255u);
                }
            }
        }
    }
    /* A multi-scan (progressive or non-interleaved) file cut exactly between two scans ends
       without any decoding error, just with missing scans: refuse it. */
    if (d->ran_out && jpeg_has_multiple_scans(c))
        jpeg_fail((j_common_ptr)c, MRC_CORRUPT, "image data incomplete");
    /* jpeg_finish_decompress would only read up to EOI; the pixels are complete already. */
    uint8_t *result = d->pixels;
    d->pixels = NULL;
    dec_release(d);
    free(d);
    *out_rgb = result;
    return MRC_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                  */

typedef struct jpeg_enc {
    struct jpeg_compress_struct cinfo;
    jpeg_err err;
    struct jpeg_destination_mgr dest;
    uint8_t *out;
    size_t out_cap;  /* bytes allocated at out */
    size_t out_size; /* bytes written, final after term_destination */
} jpeg_enc;

#define MRC_JPEG_DEST_CHUNK ((size_t)1 << 16)

static void dest_init(j_compress_ptr cinfo) {
    jpeg_enc *e = (jpeg_enc *)cinfo; /* cinfo is the first member */
    e->out = malloc(MRC_JPEG_DEST_CHUNK);
    if (e->out == NULL) jpeg_fail((j_common_ptr)cinfo, MRC_NO_MEMORY, "out of memory for output");
    e->out_cap = MRC_JPEG_DEST_CHUNK;
    e->dest.next_output_byte = e->out;
    e->dest.free_in_buffer = e->out_cap;
}

static boolean dest_empty(j_compress_ptr cinfo) {
    /* Called when the whole buffer is full (libjpeg ignores free_in_buffer's old value). */
    jpeg_enc *e = (jpeg_enc *)cinfo;
    const size_t used = e->out_cap;
    if (used > SIZE_MAX / 2)
        jpeg_fail((j_common_ptr)cinfo, MRC_NO_MEMORY, "JPEG output too large");
    uint8_t *grown = realloc(e->out, used * 2);
    if (grown == NULL) jpeg_fail((j_common_ptr)cinfo, MRC_NO_MEMORY, "out of memory for output");
    e->out = grown;
    e->out_cap = used * 2;
    e->dest.next_output_byte = e->out + used;
    e->dest.free_in_buffer = e->out_cap - used;
    return TRUE;
}

static void dest_term(j_compress_ptr cinfo) {
    jpeg_enc *e = (jpeg_enc *)cinfo;
    e->out_size = e->out_cap - e->dest.free_in_buffer;
}

mrc_status mrc_jpeg_encode(const uint8_t *rgb, uint32_t width, uint32_t height, int quality,
                           uint8_t **out, size_t *out_size, char *err, size_t err_size) {
    if (rgb == NULL || out == NULL || out_size == NULL) {
        set_err(err, err_size, "NULL argument");
        return MRC_BAD_ARGUMENT;
    }
    *out = NULL;
    *out_size = 0;
    if (width == 0 || height == 0) {
        set_err(err, err_size, "cannot encode an empty image (%" PRIu32 "x%" PRIu32 ")", width,
                height);
        return MRC_EMPTY;
    }
    if (width > JPEG_MAX_DIMENSION || height > JPEG_MAX_DIMENSION) {
        set_err(err, err_size, "image %" PRIu32 "x%" PRIu32 " is too large for JPEG (max %ld "
                "per side)", width, height, (long)JPEG_MAX_DIMENSION);
        return MRC_TOO_LARGE;
    }
    if (quality < 1 || quality > 100) {
        set_err(err, err_size, "JPEG quality %d is outside 1...100", quality);
        return MRC_BAD_ARGUMENT;
    }
    jpeg_enc *e = calloc(1, sizeof *e);
    if (e == NULL) {
        set_err(err, err_size, "out of memory creating the JPEG writer");
        return MRC_NO_MEMORY;
    }
    jpeg_err_init(&e->err);
    e->cinfo.err = &e->err.pub;
    if (setjmp(e->err.jump)) {
        mrc_status st = e->err.status;
        if (st == MRC_CORRUPT) st = MRC_BAD_ARGUMENT; /* libjpeg rejected our parameters */
        set_err(err, err_size, "JPEG encode: %s", e->err.message);
        jpeg_destroy_compress(&e->cinfo);
        free(e->out);
        free(e);
        return st;
    }
    jpeg_create_compress(&e->cinfo);
    e->dest.init_destination = dest_init;
    e->dest.empty_output_buffer = dest_empty;
    e->dest.term_destination = dest_term;
    e->cinfo.dest = &e->dest;
    e->cinfo.image_width = width;
    e->cinfo.image_height = height;
    e->cinfo.input_components = 3;
    e->cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&e->cinfo);
    jpeg_set_quality(&e->cinfo, quality, TRUE);
    e->cinfo.dct_method = JDCT_ISLOW;
    jpeg_start_compress(&e->cinfo, TRUE);
    const size_t stride = (size_t)width * 3;
    while (e->cinfo.next_scanline < height) {
        /* libjpeg takes non-const rows but only reads them. */
        JSAMPROW row = (JSAMPROW)(uintptr_t)(rgb + (size_t)e->cinfo.next_scanline * stride);
        jpeg_write_scanlines(&e->cinfo, &row, 1);
    }
    jpeg_finish_compress(&e->cinfo);
    jpeg_destroy_compress(&e->cinfo);

    uint8_t *result = e->out;
    uint8_t *shrunk = realloc(result, e->out_size ? e->out_size : 1);
    if (shrunk != NULL) result = shrunk;
    *out = result;
    *out_size = e->out_size;
    free(e);
    return MRC_OK;
}
