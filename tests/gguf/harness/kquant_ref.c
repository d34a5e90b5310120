/*
 * Harness around llama.cpp's reference quantizers, for tests/gguf/test_llama_cpp_bytes.py.
 *
 * Compiled together with ggml/src/ggml-quants.c taken from the llama-cpp-python
 * 0.3.36 source package (vendor/llama.cpp), never stored in this repository:
 *
 *     cc -O2 -std=c11 -ffp-contract=off -fPIC -shared -I<ggml>/include -I<ggml>/src \
 *        kquant_ref.c <ggml>/src/ggml-quants.c -o libkquant_ref.so -lm
 *
 * The library then exports llama.cpp's own
 *     void quantize_row_<type>_ref(const float * x, block_<type> * y, int64_t k);
 * for q4_0, q4_1, q5_0, q5_1, q8_0 and q2_K ... q6_K, and the importance-matrix entry points
 *     size_t quantize_<type>(const float * src, void * dst, int64_t nrow, int64_t n_per_row,
 *                            const float * quant_weights);
 * which the tests call through ctypes. This file adds only what ggml-quants.c links against from the rest of
 * ggml (ggml.c is not compiled): ggml_abort, ggml_row_size for the ten types above, and two
 * type-table queries that nothing here calls (they abort if anything does), plus
 * qtutor_block_size() so the test can check its block sizes against the C structs.
 *
 * -ffp-contract=off: no fused multiply-adds, as on a baseline x86-64 build; with
 * contraction (GCC's default for gnu11 on aarch64) llama.cpp's own bytes can differ
 * in the last bit of a scale.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define GGML_COMMON_DECL_C  /* the block_* structs, as ggml-quants.h declares them */
#include "ggml-common.h"
#include "ggml.h"

void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list args;
    fprintf(stderr, "%s:%d: ", file, line);
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    abort();
}

/* Row bytes of the types the harness quantizes: quantize_<type>() (the importance-matrix path) asks for it. */
size_t ggml_row_size(enum ggml_type type, int64_t ne) {
    switch (type) {
        case GGML_TYPE_Q4_0: return sizeof(block_q4_0) * (ne / QK4_0);
        case GGML_TYPE_Q4_1: return sizeof(block_q4_1) * (ne / QK4_1);
        case GGML_TYPE_Q5_0: return sizeof(block_q5_0) * (ne / QK5_0);
        case GGML_TYPE_Q5_1: return sizeof(block_q5_1) * (ne / QK5_1);
        case GGML_TYPE_Q8_0: return sizeof(block_q8_0) * (ne / QK8_0);
        case GGML_TYPE_Q2_K: return sizeof(block_q2_K) * (ne / QK_K);
        case GGML_TYPE_Q3_K: return sizeof(block_q3_K) * (ne / QK_K);
        case GGML_TYPE_Q4_K: return sizeof(block_q4_K) * (ne / QK_K);
        case GGML_TYPE_Q5_K: return sizeof(block_q5_K) * (ne / QK_K);
        case GGML_TYPE_Q6_K: return sizeof(block_q6_K) * (ne / QK_K);
        default: break;
    }
    ggml_abort(__FILE__, __LINE__, "ggml_row_size: type %d is not part of the harness", (int) type);
    return 0;
}

size_t ggml_type_size(enum ggml_type type) {
    (void) type;
    ggml_abort(__FILE__, __LINE__, "ggml_type_size is not part of the harness");
}

const char * ggml_type_name(enum ggml_type type) {
    (void) type;
    ggml_abort(__FILE__, __LINE__, "ggml_type_name is not part of the harness");
}

/* Bytes of one block as llama.cpp's structs lay it out; 0 for an unknown name. */
size_t qtutor_block_size(const char * name) {
    static const struct { const char * name; size_t size; } sizes[] = {
        {"Q4_0", sizeof(block_q4_0)}, {"Q4_1", sizeof(block_q4_1)}, {"Q5_0", sizeof(block_q5_0)},
        {"Q5_1", sizeof(block_q5_1)}, {"Q8_0", sizeof(block_q8_0)}, {"Q2_K", sizeof(block_q2_K)},
        {"Q3_K", sizeof(block_q3_K)}, {"Q4_K", sizeof(block_q4_K)}, {"Q5_K", sizeof(block_q5_K)},
        {"Q6_K", sizeof(block_q6_K)},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        const char * a = sizes[i].name;
        const char * b = name;
        while (*a && *a == *b) { a++; b++; }
        if (*a == *b) {
            return sizes[i].size;
        }
    }
    return 0;
}
