/*
 * make_seeds.c — writes a small seed corpus for fuzz_decode: PNGs of every color type and
 * bit depth (with and without tRNS, interlaced) and JPEGs (baseline, progressive, gray, CMYK
 * with an Adobe marker, restart intervals). Usage: make_seeds DIR
 */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

static unsigned sample(int x, int y, int c, int max) { return (unsigned)((x * 37 + y * 91 + c * 53) % (max + 1)); }

static void write_png(const char *dir, const char *name, int w, int h, int color, int depth,
                      int interlace, int trns) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.png", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) { fprintf(stderr, "libpng failed on %s\n", name); exit(1); }
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, depth, color, interlace, 0, 0);
    int channels = color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_PALETTE ? 1
                 : color == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : color == PNG_COLOR_TYPE_RGB ? 3 : 4;
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[16];
        png_byte alpha[16];
        for (int i = 0; i < 16; i++) {
            pal[i].red = (png_byte)(i * 16); pal[i].green = (png_byte)(255 - i * 16); pal[i].blue = (png_byte)(i * 7);
            alpha[i] = (png_byte)(i * 17);
        }
        png_set_PLTE(png, info, pal, 1 << (depth < 4 ? depth : 4));
        if (trns) png_set_tRNS(png, info, alpha, 1 << (depth < 4 ? depth : 4), NULL);
    } else if (trns) {
        png_color_16 t = {0, 1, 2, 3, 1};
        png_set_tRNS(png, info, NULL, 0, &t);
    }
    png_text text = {PNG_TEXT_COMPRESSION_NONE, "Comment", "seed", 4, 0, NULL, NULL};
    png_set_text(png, info, &text, 1);
    png_write_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    png_bytep *rows = malloc(sizeof(png_bytep) * h);
    for (int y = 0; y < h; y++) {
        rows[y] = calloc(1, rowbytes);
        int maxv = (1 << (depth > 8 ? 8 : depth)) - 1;
        if (color == PNG_COLOR_TYPE_PALETTE && maxv > 15) maxv = 15;
        for (int x = 0; x < w; x++)
            for (int c = 0; c < channels; c++) {
                unsigned v = sample(x, y, c, maxv);
                if (depth == 16) { rows[y][(x * channels + c) * 2] = (png_byte)v; rows[y][(x * channels + c) * 2 + 1] = (png_byte)(v ^ 0x5a); }
                else if (depth == 8) rows[y][x * channels + c] = (png_byte)v;
                else { int bit = x * depth; rows[y][bit / 8] |= (png_byte)(v << (8 - depth - bit % 8)); }
            }
    }
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    for (int y = 0; y < h; y++) free(rows[y]);
    free(rows);
    fclose(f);
}

static void write_jpeg(const char *dir, const char *name, int w, int h, int comps,
                       J_COLOR_SPACE space, int progressive, int restart) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.jpg", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = w; c.image_height = h; c.input_components = comps; c.in_color_space = space;
    jpeg_set_defaults(&c);
    if (space == JCS_CMYK) jpeg_set_colorspace(&c, JCS_YCCK);
    jpeg_set_quality(&c, 80, TRUE);
    if (progressive) jpeg_simple_progression(&c);
    c.restart_interval = restart;
    jpeg_start_compress(&c, TRUE);
    JSAMPLE *row = malloc((size_t)w * comps);
    while (c.next_scanline < (unsigned)h) {
        for (int x = 0; x < w; x++) for (int k = 0; k < comps; k++) row[x * comps + k] = (JSAMPLE)sample(x, c.next_scanline, k, 255);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    const char *d = argv[1];
    write_png(d, "gray1", 13, 7, PNG_COLOR_TYPE_GRAY, 1, 0, 0);
    write_png(d, "gray4_trns", 9, 9, PNG_COLOR_TYPE_GRAY, 4, 0, 1);
    write_png(d, "gray8", 16, 5, PNG_COLOR_TYPE_GRAY, 8, 0, 0);
    write_png(d, "gray16_interlaced", 11, 10, PNG_COLOR_TYPE_GRAY, 16, 1, 0);
    write_png(d, "gray_alpha8", 8, 8, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, 0);
    write_png(d, "palette2", 10, 3, PNG_COLOR_TYPE_PALETTE, 2, 0, 0);
    write_png(d, "palette4_trns", 12, 12, PNG_COLOR_TYPE_PALETTE, 4, 1, 1);
    write_png(d, "palette8_trns", 7, 9, PNG_COLOR_TYPE_PALETTE, 8, 0, 1);
    write_png(d, "rgb8", 16, 16, PNG_COLOR_TYPE_RGB, 8, 0, 0);
    write_png(d, "rgb16_trns", 6, 6, PNG_COLOR_TYPE_RGB, 16, 0, 1);
    write_png(d, "rgba8_interlaced", 17, 13, PNG_COLOR_TYPE_RGB_ALPHA, 8, 1, 0);
    write_png(d, "rgba16", 5, 4, PNG_COLOR_TYPE_RGB_ALPHA, 16, 0, 0);
    write_jpeg(d, "baseline", 16, 16, 3, JCS_RGB, 0, 0);
    write_jpeg(d, "progressive", 19, 11, 3, JCS_RGB, 1, 0);
    write_jpeg(d, "gray", 8, 24, 1, JCS_GRAYSCALE, 0, 0);
    write_jpeg(d, "restart", 33, 17, 3, JCS_RGB, 0, 1);
    write_jpeg(d, "cmyk", 12, 8, 4, JCS_CMYK, 0, 0);
    return 0;
}
