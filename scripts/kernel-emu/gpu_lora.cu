// The LoRA kernels on a real GPU, launched as src/model/ops/cuda.rs launches them, against f64
// loops on the same rounded inputs: kernel-emu's test_lora with device memory and <<<>>> launches.
// Outputs are filled with NaN bytes before each kernel, and each failing output names where it is
// wrong (count, first positions, the column tiles and lanes they fall in), which ops_check cannot.
// Built and run on the GPU machine in seconds, without the Rust build:
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I src/model/ops/kernels scripts/kernel-emu/gpu_lora.cu -o gpu_lora && ./gpu_lora
//
// Exits 1 if any check fails.
#include "lora.cu"
#include <algorithm>
#include <cmath>
#include <string>
#include <cstdio>
#include <random>
#include <vector>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            printf("CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__);                \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

static std::mt19937_64 rng(1);
static int fails = 0;

static std::vector<float> randv(size_t n, float a = 2.f) {
    std::uniform_real_distribution<float> d(-a, a);
    std::vector<float> v(n);
    for (auto &x : v) x = d(rng);
    return v;
}
static uint64_t sm(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T> struct Buf {
    T *d = nullptr;
    size_t n;
    explicit Buf(size_t n_) : n(n_) {
        CK(cudaMalloc(&d, (n ? n : 1) * sizeof(T)));
        CK(cudaMemset(d, 0xFF, (n ? n : 1) * sizeof(T)));
    }
    Buf(const std::vector<T> &h) : Buf(h.size()) { CK(cudaMemcpy(d, h.data(), n * sizeof(T), cudaMemcpyHostToDevice)); }
    ~Buf() { cudaFree(d); }
    std::vector<T> get() const {
        std::vector<T> h(n);
        CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

// Host-side conversions (common.cuh's to_f / from_f are device functions).
static float tof(float v) { return v; }
static float tof(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> static T fromf(float v);
template <> float fromf<float>(float v) { return v; }
template <> __nv_bfloat16 fromf<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Compares got [rows, cols] with want; on failure, says where: how many wrong, the first few, and
// which column tiles (of `tile` columns) and lanes (`per_lane` columns each) they fall in.
static void cmp(const char *what, const std::vector<float> &got, const std::vector<double> &want, double tol, int cols,
                int tile, int per_lane) {
    double mx = 1e-30;
    for (double w : want) mx = std::max(mx, std::fabs(w));
    size_t bad = 0, nan = 0;
    std::vector<size_t> first;
    std::vector<int> tiles, lanes, rows;
    for (size_t i = 0; i < want.size(); ++i) {
        const double e = std::fabs((double)got[i] - want[i]);
        if (!(e / mx <= tol)) {
            ++bad;
            if (std::isnan(got[i])) ++nan;
            if (first.size() < 6) first.push_back(i);
            const int c = (int)(i % cols), row = (int)(i / cols);
            if (tiles.size() < 64 && std::find(tiles.begin(), tiles.end(), c / tile) == tiles.end()) tiles.push_back(c / tile);
            const int lane = (c % tile) / per_lane;
            if (lanes.size() < 64 && std::find(lanes.begin(), lanes.end(), lane) == lanes.end()) lanes.push_back(lane);
            if (rows.size() < 8 && std::find(rows.begin(), rows.end(), row) == rows.end()) rows.push_back(row);
        }
    }
    printf("%-44s %s", what, bad ? "FAIL" : "PASS");
    if (bad) {
        ++fails;
        printf("  %zu of %zu wrong (%zu NaN: never written)\n   first:", bad, want.size(), nan);
        for (size_t i : first) printf(" [%zu,%zu] got %.4g want %.4g;", i / cols, i % cols, got[i], want[i]);
        printf("\n   tiles:");
        for (int t : tiles) printf(" %d", t);
        printf("  lanes:");
        for (int l : lanes) printf(" %d", l);
        printf("  rows (first):");
        for (int r : rows) printf(" %d", r);
    }
    printf("\n");
}

template <typename T, int R> struct LoraK;
#define LORA_K(TN, T, R)                                                                           \
    template <> struct LoraK<T, R> {                                                               \
        static constexpr auto down = lora_down_##TN##_r##R;                                        \
        static constexpr auto up = lora_up_add_##TN##_r##R;                                        \
        static constexpr auto dy = lora_bwd_dy_##TN##_r##R;                                        \
        static constexpr auto x = lora_bwd_x_##TN##_r##R;                                          \
        static constexpr auto reduce = lora_reduce_##TN;                                           \
    };
LORA_K(f32, float, 8) LORA_K(f32, float, 16) LORA_K(f32, float, 64)
LORA_K(bf16, __nv_bfloat16, 8) LORA_K(bf16, __nv_bfloat16, 16) LORA_K(bf16, __nv_bfloat16, 64)

template <typename T, int R> static void test_lora(int n, int kin, int kout, int r, uint64_t first, float p) {
    using K = LoraK<T, R>;
    const bool bf = sizeof(T) == 2;
    const double tol = bf ? 1e-2 : 2e-5;
    char tag[96];
    snprintf(tag, sizeof tag, "%s r%d/%d %dx%d->%d @%llu", bf ? "bf16" : "f32", r, R, n, kin, kout, (unsigned long long)first);
    auto rounded = [](std::vector<float> v) {
        std::vector<T> t(v.size());
        for (size_t i = 0; i < v.size(); ++i) t[i] = fromf<T>(v[i]);
        return t;
    };
    auto back = [](const std::vector<T> &t) {
        std::vector<float> v(t.size());
        for (size_t i = 0; i < t.size(); ++i) v[i] = tof(t[i]);
        return v;
    };
    auto xT = rounded(randv((size_t)n * kin)), aT = rounded(randv((size_t)r * kin, 0.5f));
    auto sbT = rounded(randv((size_t)kout * r, 0.5f)), yT = rounded(randv((size_t)n * kout));
    auto dyT = rounded(randv((size_t)n * kout)), dxT = rounded(randv((size_t)n * kin));
    auto x = back(xT), a = back(aT), sb = back(sbT), y = back(yT), dy = back(dyT), dx = back(dxT);
    const int masked = p > 0;
    const uint64_t seed = 0xC0FFEE;
    const unsigned thr = (unsigned)((double)p * 4294967295.0);
    const float keep = 1.f / (1.f - p);
    const int cf = LORA_C_FWD(R), cb = LORA_C_BWD(R);
    const unsigned chunks = (n + LORA_BLOCK_ROWS - 1) / LORA_BLOCK_ROWS;
    const unsigned tin = (kin + 32 * cf - 1) / (32 * cf), tout = (kout + 32 * cb - 1) / (32 * cb);
    const dim3 th(LORA_WARPS * 32);
    Buf<T> dx_(xT), da(aT), dsb(sbT), dyv(yT), ddy(dyT), ddx(dxT);
    Buf<float> zp((size_t)tin * n * R), dzp((size_t)tout * n * R), dbp((size_t)chunks * kout * R), dz((size_t)n * R);
    Buf<float> dap((size_t)chunks * kin * R);
    Buf<T> z((size_t)n * r), out((size_t)n * kout), dxo((size_t)n * kin);
    K::down<<<dim3(tin, chunks), th>>>(dx_.d, da.d, zp.d, n, kin, r, masked, first, seed, thr, keep);
    K::reduce<<<(n * r + 255) / 256, 256>>>(zp.d, tin, (size_t)n * R, n, r, r, R, z.d, r, 1, 1.f, 0);
    K::up<<<dim3((kout + 32 * cf - 1) / (32 * cf), chunks), th>>>(dyv.d, z.d, dsb.d, out.d, n, kout, r);
    K::dy<<<dim3(tout, chunks), th>>>(ddy.d, z.d, dsb.d, dzp.d, dbp.d, n, kout, r);
    K::reduce<<<(n * R + 255) / 256, 256>>>(dzp.d, tout, (size_t)n * R, n, R, r, R, dz.d, R, 1, 1.f, 1);
    K::x<<<dim3((kin + 32 * cb - 1) / (32 * cb), chunks), th>>>(dx_.d, ddx.d, dz.d, da.d, dxo.d, dap.d, n, kin, r, masked,
                                                               first, seed, thr, keep);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    auto zT = z.get();
    auto outT = out.get();
    auto dzv = dz.get();
    auto dxoT = dxo.get();
    // reference (f64 over the rounded inputs; z and dz as the kernels rounded them)
    std::vector<double> m((size_t)n * kin, 1.0), xd((size_t)n * kin);
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < kin; ++c) {
            const size_t e = (size_t)i * kin + c;
            if (masked) {
                const uint64_t g = first + e, h = sm(seed ^ sm(g / 2));
                const unsigned bits = g % 2 ? (unsigned)(h >> 32) : (unsigned)h;
                m[e] = bits >= thr ? keep : 0.0;
                xd[e] = tof(fromf<T>(x[e] * (float)m[e]));
            } else {
                xd[e] = x[e];
            }
        }
    std::vector<double> wz((size_t)n * r), wout((size_t)n * kout), wdx((size_t)n * kin);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < r; ++j) {
            double s = 0;
            for (int c = 0; c < kin; ++c) s += xd[(size_t)i * kin + c] * a[(size_t)j * kin + c];
            wz[(size_t)i * r + j] = s;
        }
    for (int i = 0; i < n; ++i)
        for (int o = 0; o < kout; ++o) {
            double s = y[(size_t)i * kout + o];
            for (int j = 0; j < r; ++j) s += (double)tof(zT[(size_t)i * r + j]) * sb[(size_t)o * r + j];
            wout[(size_t)i * kout + o] = s;
        }
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < kin; ++c) {
            double g = 0;
            for (int j = 0; j < r; ++j) g += (double)dzv[(size_t)i * R + j] * a[(size_t)j * kin + c];
            wdx[(size_t)i * kin + c] = dx[(size_t)i * kin + c] + m[(size_t)i * kin + c] * g;
        }
    std::string t(tag);
    cmp((t + " z").c_str(), back(zT), wz, tol, r, r, r);
    cmp((t + " up_add").c_str(), back(outT), wout, tol, kout, 32 * cf, cf);
    cmp((t + " dx").c_str(), back(dxoT), wdx, tol, kin, 32 * cb, cb);
}

int main() {
    setvbuf(stdout, nullptr, _IONBF, 0);
    // Whole tiles (the 7B shape), partly filled last tiles (SmolLM2's 576 and odd widths), a
    // single partial tile.
    for (int rep = 0; rep < 2; ++rep) {
        test_lora<float, 8>(3072, 576, 576, 8, 0, 0.1f);
        test_lora<__nv_bfloat16, 8>(3072, 576, 576, 8, 0, 0.1f);
        test_lora<__nv_bfloat16, 8>(3072, 576, 1536, 8, 0, 0.1f);
        test_lora<__nv_bfloat16, 8>(3072, 1536, 576, 8, 0, 0.1f);
        test_lora<float, 8>(300, 576, 576, 8, 0, 0.1f);
        test_lora<float, 16>(300, 96, 130, 16, 0, 0.1f);
        test_lora<float, 64>(20, 40, 33, 40, 1, 0.1f);
        test_lora<float, 8>(37, 64, 96, 8, 3, 0.1f);
        test_lora<__nv_bfloat16, 8>(3072, 4096, 4096, 8, 0, 0.1f);
        test_lora<__nv_bfloat16, 8>(512, 4096, 11008, 8, 0, 0.1f);
        test_lora<float, 8>(256, 576, 576, 8, 0, 0.f);
        test_lora<float, 8>(128, 576, 576, 8, 0, 0.f);
        test_lora<float, 8>(16, 576, 576, 8, 0, 0.f);
        // f32 at rank <= 8 reads and writes 8 columns per lane with two 16-byte accesses, so a
        // width of 4 mod 8 gives a lane with 4 of its 8 columns: the vector path must not run there.
        test_lora<float, 8>(100, 580, 580, 8, 0, 0.1f);
        test_lora<float, 8>(9, 36, 36, 8, 2, 0.1f);
        test_lora<__nv_bfloat16, 16>(64, 584, 600, 16, 0, 0.1f);
    }
    printf("gpu_lora: %s\n", fails ? "FAIL" : "all PASS");
    return fails ? 1 : 0;
}
