// Reference vectors for `src/gguf/quantize.rs`: what llama.cpp's quantizers
// write for a fixed set of awkward inputs. Built and run by
// `scripts/quantize_reference.sh`; see there for how.
//
// Every type goes through `ggml_quantize_chunk(type, src, dst, 0, nrows,
// n_per_row, NULL)`, the call `llama-quantize` makes per chunk of rows when it
// has no importance matrix (`llama_tensor_quantize_impl` in
// src/llama-quant.cpp), so the bytes are those of a real quantized file.
//
// Writes into OUT_DIR (the first argument):
//   input.f32        ROWS rows of 256 little-endian f32: the test inputs
//   cases.txt        one line per case: first row, row count, name
//   <type>.bin       ggml_quantize_chunk(<type>, input) for every block type
//   floats.f32       values for the float conversions: NaNs, infinities,
//                    f16/bf16 rounding ties, subnormals, random bit patterns
//   floats.f16/.bf16 ggml_quantize_chunk(F16 / BF16, floats.f32)
//                    (F32 is a copy; F16/BF16 of input.f32 would add 40 KB
//                    and nothing that floats.* does not cover)
//
// Inputs come from a fixed splitmix64 stream, so reruns give the same files
// (the data is stored, so the generator's libm does not need to match).

#include "ggml.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROW 256
#define MAX_ROWS 64
#define N_FLOATS 1536

static uint64_t rng_state = 0x5eed2024c0ffee11ull;

static uint64_t next_u64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Uniform in (0, 1).
static double uniform01(void) { return ((next_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static double normal(void) { return sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01()); }

static float input[MAX_ROWS * ROW];
static int n_rows = 0;
static FILE * cases_file;

// Starts a case of `rows` rows; returns where its values go.
static float * begin_case(const char * name, int rows) {
    if (n_rows + rows > MAX_ROWS) {
        fprintf(stderr, "too many rows\n");
        exit(1);
    }
    fprintf(cases_file, "%d %d %s\n", n_rows, rows, name);
    float * x = input + n_rows * ROW;
    n_rows += rows;
    return x;
}

static void fill_normal(float * x, int n, double sigma) {
    for (int i = 0; i < n; i++) x[i] = (float) (normal() * sigma);
}

static void make_cases(void) {
    float * x;

    // Weights as they come: normal, several scales, heavy tails.
    x = begin_case("normal_0.02", 8); fill_normal(x, 8 * ROW, 0.02);
    x = begin_case("normal_1", 2);    fill_normal(x, 2 * ROW, 1.0);
    x = begin_case("normal_row_scales", 4);
    for (int r = 0; r < 4; r++) fill_normal(x + r * ROW, ROW, pow(10.0, -4.0 + 6.0 * uniform01()));
    x = begin_case("laplace_0.05", 2);
    for (int i = 0; i < 2 * ROW; i++) x[i] = (float) ((uniform01() < 0.5 ? -1 : 1) * -log(uniform01()) * 0.05);
    x = begin_case("uniform_pm1", 2);
    for (int i = 0; i < 2 * ROW; i++) x[i] = (float) (2.0 * uniform01() - 1.0);

    // Degenerate rows.
    x = begin_case("zeros", 1);        memset(x, 0, ROW * sizeof(float));
    x = begin_case("constant_pos", 1); for (int i = 0; i < ROW; i++) x[i] = 0.5f;
    x = begin_case("constant_neg", 1); for (int i = 0; i < ROW; i++) x[i] = -3.25f;

    // Outliers.
    x = begin_case("one_outlier", 2);
    fill_normal(x, 2 * ROW, 0.02);
    x[77] = 50.0f;
    x[ROW + 200] = -50.0f;
    x = begin_case("outlier_per_16", 1);
    fill_normal(x, ROW, 0.01);
    for (int j = 0; j < ROW / 16; j++) x[16 * j + (j * 7) % 16] = (float) ((j % 2 ? -1 : 1) * (1 + j));

    // Sub-blocks of very different size, zero sub-blocks, sparse rows.
    x = begin_case("subblock_scales", 1);
    for (int j = 0; j < ROW / 32; j++) {
        for (int i = 0; i < 32; i++) x[32 * j + i] = j == 3 ? 0.0f : (float) (normal() * pow(10.0, j - 4));
    }
    x = begin_case("one_nonzero_subblock", 1);
    memset(x, 0, ROW * sizeof(float));
    fill_normal(x + 32, 32, 0.3);
    x = begin_case("sparse", 1);
    for (int i = 0; i < ROW; i++) x[i] = uniform01() < 0.05 ? (float) normal() : 0.0f;

    // One sign only.
    x = begin_case("negative_only", 1);
    for (int i = 0; i < ROW; i++) x[i] = (float) -fabs(normal() * 0.1);
    x = begin_case("positive_only", 1);
    for (int i = 0; i < ROW; i++) x[i] = (float) fabs(normal() * 0.1);

    // Tiny values: subnormal scales, 1/d overflowing to inf.
    x = begin_case("tiny_1e-39", 1); fill_normal(x, ROW, 1e-39);
    x = begin_case("tiny_1e-30", 1); fill_normal(x, ROW, 1e-30);
    x = begin_case("tiny_1e-8", 1);  fill_normal(x, ROW, 1e-8);

    // Exact grids: rounding ties everywhere.
    x = begin_case("grid_quarters", 1);
    for (int i = 0; i < ROW; i++) x[i] = (float) ((i * 7) % 33 - 16) * 0.25f;
    x = begin_case("grid_halves", 1);
    for (int i = 0; i < ROW; i++) x[i] = (float) ((i * 5) % 17 - 8) + 0.5f * (float) (i % 2);
    x = begin_case("ramp_0_1", 1);
    for (int i = 0; i < ROW; i++) x[i] = (float) i / 255.0f;

    // Huge values: scales that overflow f16, squares that overflow f32.
    x = begin_case("huge_3e4", 1);  fill_normal(x, ROW, 3e4);
    x = begin_case("huge_1e20", 1); fill_normal(x, ROW, 1e20);
    x = begin_case("extreme_3e38", 1);
    for (int i = 0; i < ROW; i++) x[i] = (float) ((2.0 * uniform01() - 1.0) * 3.0e38);
}

static float floats[N_FLOATS];

static float from_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static void make_floats(void) {
    static const uint32_t fixed[] = {
        0x00000000, 0x80000000, 0x3f800000, 0xbf800000,  // +-0, +-1
        0x477fe000, 0xc77fe000,                          // +-65504 (f16 max)
        0x477fefff, 0x477ff000, 0x477ff001,              // just under, at, over the f16 overflow tie
        0x7f800000, 0xff800000,                          // +-inf
        0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001,  // quiet and signalling NaNs
        0x7fc12345, 0x7fbfffff, 0xffffffff, 0x7f80ffff,  // NaN payloads (low bits only too)
        0x7f7fffff, 0xff7fffff,                          // f32 max
        0x00000001, 0x80000001, 0x007fffff, 0x00800000,  // f32 subnormals, min normal
        0x33800000, 0x33000000, 0x33000001, 0x32ffffff,  // 2^-24, 2^-25 (tie to 0), around it
        0x33c00000, 0x34200000,                          // 1.5 * 2^-24, 2.5 * 2^-24 (subnormal ties)
        0x387fc000, 0x38800000, 0x387fe000,              // around the f16 min normal
        0x3f801000, 0x3f803000, 0x3f801001, 0x3f800fff,  // 1 + half an f16 ulp, ties to even
        0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff,  // 1 + half a bf16 ulp, ties to even
        0x4b800000, 0x4b800001,                          // 2^24 and next
    };
    const int n_fixed = (int) (sizeof fixed / sizeof fixed[0]);
    int i = 0;
    for (; i < n_fixed; i++) floats[i] = from_bits(fixed[i]);
    for (; i < N_FLOATS; i++) {
        uint32_t r = (uint32_t) next_u64();
        switch (i % 4) {
            case 0: floats[i] = from_bits(r); break;  // any bit pattern
            case 1: {                                   // an f16 rounding tie in f16's range
                uint32_t e = 103 + (r >> 24) % 40;      // 2^-24 .. 2^15
                floats[i] = from_bits((r & 0x80000000u) | (e << 23) | (r & 0x007fe000u) | 0x1000u);
            } break;
            case 2: floats[i] = from_bits((r & 0xffff0000u) | 0x8000u); break;  // a bf16 tie
            case 3: floats[i] = (float) (normal() * pow(2.0, (double) ((int) (r % 60) - 30))); break;
        }
    }
}

static void write_file(const char * dir, const char * name, const void * data, size_t size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static size_t quantize(enum ggml_type type, const float * src, int64_t nrows, int64_t n_per_row, void ** out) {
    const size_t size = ggml_row_size(type, n_per_row) * (size_t) nrows;
    *out = malloc(size);
    const size_t written = ggml_quantize_chunk(type, src, *out, 0, nrows, n_per_row, NULL);
    if (written != size) {
        fprintf(stderr, "%s: wrote %zu bytes, expected %zu\n", ggml_type_name(type), written, size);
        exit(1);
    }
    return size;
}

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    const char * dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/cases.txt", dir);
    cases_file = fopen(path, "w");
    if (!cases_file) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    make_cases();
    fclose(cases_file);
    write_file(dir, "input.f32", input, (size_t) n_rows * ROW * sizeof(float));

    static const enum ggml_type types[] = {
        GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
        GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
    };
    size_t total = (size_t) n_rows * ROW * sizeof(float);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        void * out;
        const size_t size = quantize(types[t], input, n_rows, ROW, &out);
        snprintf(path, sizeof path, "%s.bin", ggml_type_name(types[t]));
        write_file(dir, path, out, size);
        // What llama-quantize's check would say: rows with inf/NaN scales fail it.
        int rejected = 0;
        const size_t row_size = ggml_row_size(types[t], ROW);
        for (int r = 0; r < n_rows; r++) {
            rejected += !ggml_validate_row_data(types[t], (const char *) out + r * row_size, row_size);
        }
        printf("%-5s %6zu bytes  (%d of %d rows fail ggml_validate_row_data)\n", ggml_type_name(types[t]), size, rejected, n_rows);
        total += size;
        free(out);
    }

    make_floats();
    write_file(dir, "floats.f32", floats, sizeof floats);
    total += sizeof floats;
    static const enum ggml_type float_types[] = { GGML_TYPE_F16, GGML_TYPE_BF16 };
    for (size_t t = 0; t < 2; t++) {
        void * out;
        const size_t size = quantize(float_types[t], floats, 1, N_FLOATS, &out);
        snprintf(path, sizeof path, "floats.%s", ggml_type_name(float_types[t]));
        write_file(dir, path, out, size);
        total += size;
        free(out);
    }
    printf("%d rows of %d values, %d special floats: %zu bytes in %s\n", n_rows, ROW, N_FLOATS, total, dir);
    return 0;
}
