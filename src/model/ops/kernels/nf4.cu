// NF4 dequantization (lora-train's `base_quant: nf4`; src/model/base_quant/nf4.rs is the
// reference): bitsandbytes' layout, two 4-bit code indices per byte (the first in the high
// nibble), one double-quantized absmax per block of 64 values.
//
//   absmax = code8[qabsmax[v / 64]] * absmax2[v / (64 * 256)] + offset      (f32)
//   out[v] = NF4[nibble(v)] * absmax, rounded once to the output type
//
// `__fmul_rn` / `__fadd_rn` keep nvcc from contracting the scale into an FMA: the same two
// roundings as bitsandbytes and the CPU reference. The 16-entry code is copied to shared memory
// (a constant-memory read with a different index per thread would serialize the warp).
//
// nf4_dequant16: 16 values per thread (8 packed bytes in one load, one scale, two or four
// 16-byte stores); needs n a multiple of 16 and aligned buffers (the launcher checks).
// nf4_dequant: one byte (two values) per thread, for everything else.
#include "common.cuh"

__constant__ float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

__device__ __forceinline__ float nf4_absmax(const uint8_t *qabsmax, const float *absmax2, const float *code8,
                                            float offset, size_t block) {
    return __fadd_rn(__fmul_rn(code8[qabsmax[block]], absmax2[block / 256]), offset);
}

template <typename T>
__device__ __forceinline__ void nf4_dequant_impl(const uint8_t *__restrict__ packed,
                                                 const uint8_t *__restrict__ qabsmax,
                                                 const float *__restrict__ absmax2,
                                                 const float *__restrict__ code8, float offset,
                                                 T *__restrict__ out, size_t n) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = NF4_CODE[threadIdx.x];
    __syncthreads();
    const size_t byte = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t v = byte * 2;
    if (v >= n) return;
    const float absmax = nf4_absmax(qabsmax, absmax2, code8, offset, v / 64);
    const uint8_t b = packed[byte];
    out[v] = from_f<T>(__fmul_rn(code[b >> 4], absmax));
    if (v + 1 < n) out[v + 1] = from_f<T>(__fmul_rn(code[b & 15], absmax));
}

template <typename T>
__device__ __forceinline__ void nf4_dequant16_impl(const uint8_t *__restrict__ packed,
                                                   const uint8_t *__restrict__ qabsmax,
                                                   const float *__restrict__ absmax2,
                                                   const float *__restrict__ code8, float offset,
                                                   T *__restrict__ out, size_t n) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = NF4_CODE[threadIdx.x];
    __syncthreads();
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t v = t * 16;
    if (v >= n) return;
    // 16 values never straddle a 64-value block.
    const float absmax = nf4_absmax(qabsmax, absmax2, code8, offset, v / 64);
    const uint2 p = reinterpret_cast<const uint2 *>(packed)[t];
    float vals[16];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const uint32_t word = k < 4 ? p.x : p.y;
        const uint32_t b = (word >> (8 * (k & 3))) & 0xFF;
        vals[2 * k] = __fmul_rn(code[b >> 4], absmax);
        vals[2 * k + 1] = __fmul_rn(code[b & 15], absmax);
    }
    store8(out + v, vals);
    store8(out + v + 8, vals + 8);
}

#define NF4_KERNELS(TN, T)                                                                          \
    extern "C" __global__ void nf4_dequant_##TN(const uint8_t *packed, const uint8_t *qabsmax,     \
                                                const float *absmax2, const float *code8,          \
                                                float offset, T *out, size_t n) {                  \
        nf4_dequant_impl<T>(packed, qabsmax, absmax2, code8, offset, out, n);                       \
    }                                                                                               \
    extern "C" __global__ void nf4_dequant16_##TN(const uint8_t *packed, const uint8_t *qabsmax,   \
                                                  const float *absmax2, const float *code8,        \
                                                  float offset, T *out, size_t n) {                \
        nf4_dequant16_impl<T>(packed, qabsmax, absmax2, code8, offset, out, n);                     \
    }
PIPE_DTYPES(NF4_KERNELS)
