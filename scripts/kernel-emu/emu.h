// Minimal CPU emulation of the CUDA features the kernels use: one std::thread per CUDA thread,
// one block at a time, barriers for __syncthreads and warp shuffles.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
using std::min;
struct dim3u { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3u threadIdx, blockIdx;
inline dim3u blockDim, gridDim;
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
struct alignas(8) uint2 { unsigned x, y; };
inline std::barrier<> *g_block;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warps;
inline float g_f[32][32];
inline unsigned g_u[32][32];
inline void __syncthreads() { g_block->arrive_and_wait(); }
template <typename V> inline V xchg(V (*buf)[32], V v, int src) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    buf[w][l] = v;
    g_warps[w]->arrive_and_wait();
    V r = buf[w][src];
    g_warps[w]->arrive_and_wait();
    return r;
}
inline float __shfl_xor_sync(unsigned, float v, int o) { return xchg(g_f, v, (threadIdx.x & 31) ^ o); }
inline unsigned __shfl_xor_sync(unsigned, unsigned v, int o) { return xchg(g_u, v, (threadIdx.x & 31) ^ o); }
inline float __shfl_sync(unsigned, float v, int src) { return xchg(g_f, v, src); }
template <class F> void launch(dim3u grid, dim3u block, F f) {
    blockDim = block;
    gridDim = grid;
    for (unsigned by = 0; by < std::max(grid.y, 1u); ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            std::barrier<> bb(block.x);
            g_block = &bb;
            g_warps.clear();
            for (unsigned w = 0; w < (block.x + 31) / 32; ++w) g_warps.emplace_back(new std::barrier<>(32));
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < block.x; ++t)
                ts.emplace_back([=] { threadIdx = {t, 0, 0}; blockIdx = {bx, by, 0}; f(); });
            for (auto &t : ts) t.join();
        }
}
