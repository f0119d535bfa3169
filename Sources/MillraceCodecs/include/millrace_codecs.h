/*
 * millrace_codecs.h — PNG and JPEG decoding/encoding from and to memory, for Millrace.
 *
 * Conventions:
 *
 *  - Pixels are 8-bit, interleaved RGB, rows top to bottom, no padding: `width * height * 3`
 *    bytes.
 *  - Every function returns an `mrc_status`. On anything other than MRC_OK it writes a
 *    human-readable, NUL-terminated message into the caller's `err` buffer (`err_size` bytes,
 *    truncated to fit; `err` may be NULL when `err_size` is 0). Nothing is printed, nothing
 *    aborts or exits: libpng and libjpeg errors are caught with setjmp/longjmp inside the C
 *    code and turned into return values.
 *  - Decoders take a `max_pixels` limit. They read only the image header first and refuse an
 *    image whose declared width * height exceeds it (MRC_TOO_LARGE) before allocating any
 *    pixel buffer; the declared width and height are still reported in that case so that the
 *    caller can say how big the image was. Zero sizes give MRC_EMPTY.
 *  - Buffers returned through `uint8_t **out` are allocated with malloc and belong to the
 *    caller, who releases them with mrc_free. On error `*out` is set to NULL and everything
 *    the codec allocated has already been freed.
 *  - All functions are reentrant: no global state.
 */
#ifndef MILLRACE_CODECS_H
#define MILLRACE_CODECS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Result of a codec call.
typedef enum mrc_status {
    MRC_OK = 0,
    /// Not a PNG or JPEG (magic bytes not recognised), or a variant that is not supported
    /// (e.g. a 12-bit or 2-channel JPEG).
    MRC_UNSUPPORTED = 1,
    /// The data is damaged or truncated; the message says where libpng/libjpeg stopped.
    MRC_CORRUPT = 2,
    /// The header declares more than `max_pixels` pixels, or a size whose buffer would
    /// overflow; width/height outputs hold the declared size.
    MRC_TOO_LARGE = 3,
    /// Zero bytes of input, or a header that declares zero width or height.
    MRC_EMPTY = 4,
    /// malloc failed.
    MRC_NO_MEMORY = 5,
    /// A bad argument (NULL pointer, zero size to encode, quality out of range).
    MRC_BAD_ARGUMENT = 6,
} mrc_status;

/// Container formats recognised by mrc_sniff.
typedef enum mrc_format {
    MRC_FORMAT_UNKNOWN = 0,
    MRC_FORMAT_PNG = 1,
    MRC_FORMAT_JPEG = 2,
} mrc_format;

/// PNG compression presets for mrc_png_encode.
typedef enum mrc_png_level {
    /// zlib level 6 with libpng's adaptive filter choice (all five filters tried per row):
    /// small files, for anything kept.
    MRC_PNG_DEFAULT = 0,
    /// zlib level 1 with the Z_RLE strategy and the UP filter on every row: for images
    /// streamed while a job runs. Measured on 512x512 images (see png.c): 4-14x faster than
    /// MRC_PNG_DEFAULT, files 2-32% larger.
    MRC_PNG_FAST = 1,
} mrc_png_level;

/// Frees a buffer returned by this library (NULL is allowed).
void mrc_free(void *p);

/// Recognises the format from the first bytes: PNG signature, or JPEG SOI + marker (FF D8 FF).
mrc_format mrc_sniff(const uint8_t *data, size_t size);

/// Reads only the header of a PNG or JPEG and reports its declared size. Allocates no pixel
/// memory. Returns MRC_UNSUPPORTED for other formats, MRC_EMPTY for a zero size,
/// MRC_CORRUPT when the header itself is damaged or truncated. Applies no pixel limit.
mrc_status mrc_image_info(const uint8_t *data, size_t size, mrc_format *format,
                          uint32_t *width, uint32_t *height, char *err, size_t err_size);

/// mrc_image_info for a PNG: checks the signature and IHDR (including its CRC) with libpng.
mrc_status mrc_png_info(const uint8_t *data, size_t size, uint32_t *width, uint32_t *height,
                        char *err, size_t err_size);

/// mrc_image_info for a JPEG: reads the markers up to the first scan header with libjpeg.
mrc_status mrc_jpeg_info(const uint8_t *data, size_t size, uint32_t *width, uint32_t *height,
                         char *err, size_t err_size);

/// Decodes a PNG or JPEG (sniffed) to 8-bit RGB. See mrc_png_decode / mrc_jpeg_decode.
mrc_status mrc_image_decode(const uint8_t *data, size_t size, uint64_t max_pixels,
                            uint8_t **out_rgb, uint32_t *width, uint32_t *height,
                            char *err, size_t err_size);

/// Decodes a PNG of any color type and bit depth to 8-bit RGB: gray is replicated, palettes
/// are expanded, 16-bit samples are scaled to 8 bits with rounding, and alpha (an alpha channel
/// or tRNS) is composited over white. Gamma chunks are ignored (samples are taken as sRGB).
/// Interlaced images are supported.
mrc_status mrc_png_decode(const uint8_t *data, size_t size, uint64_t max_pixels,
                          uint8_t **out_rgb, uint32_t *width, uint32_t *height,
                          char *err, size_t err_size);

/// Decodes a baseline or progressive 8-bit JPEG to RGB. Grayscale is replicated; CMYK and
/// YCCK (including Adobe's inverted CMYK) are converted naively to RGB (no ICC profile).
/// A file that ends before the image data does, or whose entropy-coded data is damaged (bad
/// Huffman/arithmetic code, premature marker, lost restart sync) is MRC_CORRUPT, where libjpeg
/// alone would pad or patch the image; metadata warnings (extraneous bytes between markers,
/// unknown JFIF revision, bad ICC marker) are tolerated.
mrc_status mrc_jpeg_decode(const uint8_t *data, size_t size, uint64_t max_pixels,
                           uint8_t **out_rgb, uint32_t *width, uint32_t *height,
                           char *err, size_t err_size);

/// Encodes 8-bit RGB as a PNG (8-bit, color type RGB, not interlaced) into a new buffer.
mrc_status mrc_png_encode(const uint8_t *rgb, uint32_t width, uint32_t height,
                          mrc_png_level level, uint8_t **out, size_t *out_size,
                          char *err, size_t err_size);

/// Encodes 8-bit RGB as a baseline JPEG (YCbCr 4:2:0) with the given quality (1...100)
/// into a new buffer.
mrc_status mrc_jpeg_encode(const uint8_t *rgb, uint32_t width, uint32_t height, int quality,
                           uint8_t **out, size_t *out_size, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif

#endif /* MILLRACE_CODECS_H */
