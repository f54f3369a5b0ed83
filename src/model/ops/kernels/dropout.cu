// LoRA dropout: y = x * mask with the mask a pure function of (seed, element index), bit-identical
// to the CPU's `dropout_mask` in llama.rs, so neither pass stores or uploads a mask and the
// backward applies the same mask by calling the same kernel on the gradient.
//
//   pair i = e / 2,  r = splitmix(seed ^ splitmix(i)),  bits = e even ? low32(r) : high32(r),
//   mask = bits >= threshold ? keep : 0,  threshold = (u32)(p * u32::MAX),  keep = 1 / (1 - p)
//
// One thread per pair: one 64-bit hash gives both elements' bits.
#include "common.cuh"

__device__ __forceinline__ uint64_t splitmix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ __forceinline__ void dropout_impl(const T *__restrict__ x, T *__restrict__ y, size_t n,
                                             uint64_t seed, unsigned int threshold, float keep) {
    const size_t pair = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t e = pair * 2;
    if (e >= n) return;
    const uint64_t r = splitmix(seed ^ splitmix((uint64_t)pair));
    const unsigned int lo = (unsigned int)r, hi = (unsigned int)(r >> 32);
    y[e] = from_f<T>(to_f(x[e]) * (lo >= threshold ? keep : 0.f));
    if (e + 1 < n) y[e + 1] = from_f<T>(to_f(x[e + 1]) * (hi >= threshold ? keep : 0.f));
}

#define DROPOUT(TN, T)                                                                                \
    extern "C" __global__ void dropout_##TN(const T *x, T *y, size_t n, uint64_t seed,                \
                                            unsigned int threshold, float keep) {                     \
        dropout_impl<T>(x, y, n, seed, threshold, keep);                                              \
    }

PIPE_DTYPES(DROPOUT)
