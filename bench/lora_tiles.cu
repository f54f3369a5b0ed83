// LoRA kernel timing sweep (7B shapes, bf16, r=8): nvcc -D overrides of lora.cu's tiling constants.
#include "lora.cu"  // -I src/model/ops/kernels
#include <cstdio>
#include <vector>
#define CK(x) do { cudaError_t err_ = (x); if (err_ != cudaSuccess) { printf("err %s line %d\n", cudaGetErrorString(err_), __LINE__); return 1; } } while (0)
typedef __nv_bfloat16 bf;
static float timeit(void (*f)(void*), void* ctx) {
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) f(ctx);
  cudaEventRecord(a); for (int i = 0; i < 20; ++i) f(ctx); cudaEventRecord(b); cudaEventSynchronize(b);
  float ms; cudaEventElapsedTime(&ms, a, b); return ms * 1000.f / 20.f;
}
struct C { int n, k; bf *x, *dx, *out, *a, *sb, *z; float *p1, *p2, *dz; };
const int R = 8, BR = LORA_WARPS * LORA_ROWS, TH = LORA_WARPS * 32;
static void down(void* v) { C* c = (C*)v; dim3 g((c->k + 32*LORA_C_FWD(R) - 1) / (32*LORA_C_FWD(R)), (c->n + BR - 1) / BR);
  lora_down_bf16_r8<<<g, TH>>>(c->x, c->a, c->p1, c->n, c->k, R, 1, 0, 7, 429496729u, 1.1111f); }
static void up(void* v) { C* c = (C*)v; dim3 g((c->k + 32*LORA_C_FWD(R) - 1) / (32*LORA_C_FWD(R)), (c->n + BR - 1) / BR);
  lora_up_add_bf16_r8<<<g, TH>>>(c->x, c->z, c->sb, c->out, c->n, c->k, R); }
static void bdy(void* v) { C* c = (C*)v; dim3 g((c->k + 32*LORA_C_BWD(R) - 1) / (32*LORA_C_BWD(R)), (c->n + BR - 1) / BR);
  lora_bwd_dy_bf16_r8<<<g, TH>>>(c->x, c->z, c->sb, c->p1, c->p2, c->n, c->k, R); }
static void bx(void* v) { C* c = (C*)v; dim3 g((c->k + 32*LORA_C_BWD(R) - 1) / (32*LORA_C_BWD(R)), (c->n + BR - 1) / BR);
  lora_bwd_x_bf16_r8<<<g, TH>>>(c->x, c->dx, c->dz, c->a, c->out, c->p2, c->n, c->k, R, 1, 0, 7, 429496729u, 1.1111f); }
int main() {
  int n = 3072; float tot = 0;
  for (int k : {4096, 11008}) {
    C c{n, k}; size_t e = (size_t)n * k;
    CK(cudaMalloc(&c.x, e * 2)); CK(cudaMalloc(&c.dx, e * 2)); CK(cudaMalloc(&c.out, e * 2));
    CK(cudaMalloc(&c.a, k * R * 2)); CK(cudaMalloc(&c.sb, k * R * 2)); CK(cudaMalloc(&c.z, n * R * 2));
    CK(cudaMalloc(&c.p1, (size_t)256 * n * R * 4)); CK(cudaMalloc(&c.p2, (size_t)(n / 4 + 1) * k * R * 4)); CK(cudaMalloc(&c.dz, n * R * 4));
    cudaMemset(c.x, 0, e * 2); cudaMemset(c.dx, 0, e * 2); cudaMemset(c.a, 0, k*R*2); cudaMemset(c.sb, 0, k*R*2); cudaMemset(c.z, 0, n*R*2); cudaMemset(c.dz, 0, n*R*4);
    float t1 = timeit(down, &c), t2 = timeit(up, &c), t3 = timeit(bdy, &c), t4 = timeit(bx, &c);
    CK(cudaDeviceSynchronize());
    printf("k=%5d down %6.1f up_add %6.1f bwd_dy %6.1f bwd_x %6.1f us\n", k, t1, t2, t3, t4);
    // per layer: q,k,v,o,gate,up take x of 4096 (down, bwd_x), down takes 11008; outputs: q,k,v,o,down 4096, gate/up 11008
    tot += (k == 4096) ? 6 * t1 + 5 * t2 + 5 * t3 + 6 * t4 : t1 + 2 * t2 + 2 * t3 + t4;
    cudaFree(c.x); cudaFree(c.dx); cudaFree(c.out); cudaFree(c.a); cudaFree(c.sb); cudaFree(c.z); cudaFree(c.p1); cudaFree(c.p2); cudaFree(c.dz);
  }
  printf("per layer (7 projections, fwd + bwd, no reduces): %.1f us -> x30 layers %.1f ms\n", tot, tot * 30 / 1000);
}
