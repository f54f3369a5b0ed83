// NF4 dequantization (lora-train's `base_quant: nf4`; src/model/base_quant/nf4.rs is the
// reference): bitsandbytes' layout, two 4-bit code indices per byte (the first in the high
// nibble), one double-quantized absmax per block of 64 values.
//
//   absmax = code8[qabsmax[v / 64]] * absmax2[v / (64 * 256)] + offset      (f32)
//   out[v] = NF4[nibble(v)] * absmax, rounded once to the output type
//
// One thread per byte: both values of a byte share a block (64 is even). Memory-bound: each
// thread reads a byte and two cached scale bytes, and writes two values.
#include "common.cuh"

__constant__ float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

template <typename T>
__device__ __forceinline__ void nf4_dequant_impl(const uint8_t *__restrict__ packed,
                                                 const uint8_t *__restrict__ qabsmax,
                                                 const float *__restrict__ absmax2,
                                                 const float *__restrict__ code8, float offset,
                                                 T *__restrict__ out, size_t n) {
    const size_t byte = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t v = byte * 2;
    if (v >= n) return;
    const size_t block = v / 64;
    // The same f32 operations, in the same order, as bitsandbytes' dequantize_blockwise + offset.
    const float absmax = __fadd_rn(__fmul_rn(code8[qabsmax[block]], absmax2[block / 256]), offset);
    const uint8_t b = packed[byte];
    out[v] = from_f<T>(__fmul_rn(NF4_CODE[b >> 4], absmax));
    if (v + 1 < n) out[v + 1] = from_f<T>(__fmul_rn(NF4_CODE[b & 15], absmax));
}

#define NF4_KERNELS(TN, T)                                                                          \
    extern "C" __global__ void nf4_dequant_##TN(const uint8_t *packed, const uint8_t *qabsmax,     \
                                                const float *absmax2, const float *code8,          \
                                                float offset, T *out, size_t n) {                  \
        nf4_dequant_impl<T>(packed, qabsmax, absmax2, code8, offset, out, n);                       \
    }
PIPE_DTYPES(NF4_KERNELS)
