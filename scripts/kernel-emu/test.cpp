// The kernel-emu driver: see run.sh.
#include "emu.h"
#include <cstdio>
#include <random>
#include "rms_norm.cu"
#include "rope.cu"
#include "swiglu.cu"
#include "cross_entropy.cu"
#include "dropout.cu"
#include "attention.cu"
#include "lora.cu"

static std::mt19937_64 rng(1);
static std::vector<float> randv(size_t n, float a = 2.f) {
    std::uniform_real_distribution<float> d(-a, a);
    std::vector<float> v(n);
    for (auto &x : v) x = d(rng);
    return v;
}
static int fails = 0;
template <class A, class B> static void cmp(const char *what, const A &got, const B &want, double tol) {
    double mx = 1e-30, e = 0;
    for (size_t i = 0; i < want.size(); ++i) { mx = std::max(mx, std::fabs((double)want[i])); e = std::max(e, std::fabs((double)got[i] - (double)want[i])); }
    bool ok = e / mx <= tol && !std::isnan(e);
    if (!ok) ++fails;
    printf("%-28s rel %.3e %s\n", what, e / mx, ok ? "PASS" : "FAIL");
}
static std::vector<float> tobf(const std::vector<float> &v) { std::vector<float> r(v.size()); for (size_t i = 0; i < v.size(); ++i) r[i] = __bfloat162float(__float2bfloat16_rn(v[i])); return r; }
static std::vector<__nv_bfloat16> asbf(const std::vector<float> &v) { std::vector<__nv_bfloat16> r(v.size()); for (size_t i = 0; i < v.size(); ++i) r[i] = __float2bfloat16_rn(v[i]); return r; }
static std::vector<float> frombf(const std::vector<__nv_bfloat16> &v) { std::vector<float> r(v.size()); for (size_t i = 0; i < v.size(); ++i) r[i] = __bfloat162float(v[i]); return r; }

static void test_rms(int rows, int h) {
    auto x = randv(rows * h), w = randv(h), dy = randv(rows * h);
    std::vector<float> y(rows * h), rstd(rows), dx(rows * h);
    dim3u g{(unsigned)(rows + 3) / 4, 1}, b{128};
    launch(g, b, [&] { rms_norm_fwd_f32_f32(x.data(), w.data(), y.data(), rstd.data(), rows, h, 1e-5f); });
    launch(g, b, [&] { rms_norm_bwd_f32_f32(dy.data(), x.data(), w.data(), rstd.data(), dx.data(), rows, h); });
    std::vector<double> wy(rows * h), wr(rows), wdx(rows * h);
    for (int r = 0; r < rows; ++r) {
        double ss = 0; for (int i = 0; i < h; ++i) ss += (double)x[r*h+i] * x[r*h+i];
        double rs = 1 / std::sqrt(ss / h + 1e-5); wr[r] = rs;
        double dot = 0; for (int i = 0; i < h; ++i) { wy[r*h+i] = x[r*h+i] * rs * w[i]; dot += dy[r*h+i] * w[i] * x[r*h+i] * rs; }
        dot /= h;
        for (int i = 0; i < h; ++i) wdx[r*h+i] = rs * (dy[r*h+i] * w[i] - x[r*h+i] * rs * dot);
    }
    cmp("rms y", y, wy, 1e-5); cmp("rms rstd", rstd, wr, 1e-5); cmp("rms dx", dx, wdx, 1e-5);
    // bf16 activations, f32 weight
    auto xb = asbf(x); std::vector<__nv_bfloat16> yb(rows * h);
    launch(g, b, [&] { rms_norm_fwd_bf16_f32(xb.data(), w.data(), yb.data(), rstd.data(), rows, h, 1e-5f); });
    cmp("rms y bf16", frombf(yb), wy, 1e-2);
}

static void test_rope(int B, int H, int T, int D) {
    // input in [B, T, H, D] layout read as [B, H, T, D]; output token-major too
    int half = D / 2;
    auto x = randv(B * T * H * D), cs = randv(T * half, 1), sn = randv(T * half, 1);
    std::vector<float> y(x.size()), yt(x.size());
    size_t total = (size_t)B * H * T * half;
    dim3u g{(unsigned)((total + 255) / 256)}, b{256};
    long long xsb = (long long)T * H * D, xsh = D, xst = (long long)H * D;
    launch(g, b, [&] { rope_f32(x.data(), cs.data(), sn.data(), y.data(), H, T, D, xsb, xsh, xst, (long long)H*T*D, (long long)T*D, D, total, 1.f); });
    launch(g, b, [&] { rope_f32(y.data(), cs.data(), sn.data(), yt.data(), H, T, D, (long long)H*T*D, (long long)T*D, D, xsb, xsh, xst, total, -1.f); });
    std::vector<double> want(x.size());
    for (int bi = 0; bi < B; ++bi) for (int h = 0; h < H; ++h) for (int t = 0; t < T; ++t) for (int i = 0; i < half; ++i) {
        const float *xr = &x[bi*xsb + h*xsh + t*xst];
        double c = cs[t*half+i], s = sn[t*half+i];
        size_t o = ((size_t)(bi*H + h)*T + t)*D;
        want[o+i] = xr[i]*c - xr[i+half]*s; want[o+i+half] = xr[i+half]*c + xr[i]*s;
    }
    cmp("rope fwd", y, want, 1e-6);
    // bwd of fwd with |cos,sin| not unit: check against transpose formula directly
    std::vector<double> want_b(x.size());
    for (int bi = 0; bi < B; ++bi) for (int h = 0; h < H; ++h) for (int t = 0; t < T; ++t) for (int i = 0; i < half; ++i) {
        size_t o = ((size_t)(bi*H + h)*T + t)*D;
        double c = cs[t*half+i], s = -sn[t*half+i];
        size_t ot = bi*xsb + h*xsh + t*xst;
        want_b[ot+i] = y[o+i]*c - y[o+i+half]*s; want_b[ot+i+half] = y[o+i+half]*c + y[o+i]*s;
    }
    cmp("rope bwd tokens", yt, want_b, 1e-6);
}

static void test_swiglu(size_t n) {
    auto g = randv(n, 4), u = randv(n), dy = randv(n);
    std::vector<float> y(n), dg(n), du(n);
    dim3u gr{(unsigned)((n + 255) / 256)}, b{256};
    launch(gr, b, [&] { swiglu_fwd_f32(g.data(), u.data(), y.data(), n); });
    launch(gr, b, [&] { swiglu_bwd_f32(dy.data(), g.data(), u.data(), dg.data(), du.data(), n); });
    std::vector<double> wy(n), wdg(n), wdu(n);
    for (size_t i = 0; i < n; ++i) { double s = 1 / (1 + std::exp(-(double)g[i])); wy[i] = g[i]*s*u[i]; wdu[i] = dy[i]*g[i]*s; wdg[i] = dy[i]*u[i]*s*(1 + g[i]*(1-s)); }
    cmp("swiglu y", y, wy, 1e-6); cmp("swiglu dg", dg, wdg, 1e-6); cmp("swiglu du", du, wdu, 1e-6);
}

static void test_ce(int n, int v, unsigned block) {
    auto z = randv((size_t)n * v, 8);
    std::vector<int64_t> lab(n);
    for (int i = 0; i < n; ++i) lab[i] = i % 4 == 1 ? -100 : (int64_t)(rng() % v);
    std::vector<float> grad(z.size()), rl(n), loss(1); std::vector<unsigned> cnt(1);
    launch({(unsigned)n}, {block}, [&] { ce_fwd_bwd_f32(z.data(), lab.data(), grad.data(), rl.data(), v, 0.5f); });
    launch({1}, {1024}, [&] { ce_reduce(rl.data(), lab.data(), n, loss.data(), cnt.data()); });
    std::vector<double> wg(z.size()); double wl = 0; unsigned wc = 0;
    for (int r = 0; r < n; ++r) {
        if (lab[r] == -100) continue;
        double m = -1e300; for (int i = 0; i < v; ++i) m = std::max(m, (double)z[(size_t)r*v+i]);
        double s = 0; for (int i = 0; i < v; ++i) s += std::exp(z[(size_t)r*v+i] - m);
        double lse = m + std::log(s); wl += lse - z[(size_t)r*v + lab[r]]; ++wc;
        for (int i = 0; i < v; ++i) wg[(size_t)r*v+i] = (std::exp(z[(size_t)r*v+i] - lse) - (i == lab[r])) * 0.5;
    }
    cmp("ce grad", grad, wg, 1e-6);
    std::vector<double> wlv{wl}; cmp("ce loss", loss, wlv, 1e-6);
    printf("ce count %u vs %u %s\n", cnt[0], wc, cnt[0] == wc ? "PASS" : "FAIL"); if (cnt[0] != wc) ++fails;
    // in place (grad aliases logits), and no-grad
    std::vector<float> z2 = z, rl2(n);
    launch({(unsigned)n}, {block}, [&] { ce_fwd_bwd_f32(z2.data(), lab.data(), z2.data(), rl2.data(), v, 0.5f); });
    cmp("ce grad in place", z2, wg, 1e-6);
    launch({(unsigned)n}, {block}, [&] { ce_fwd_bwd_f32(z.data(), lab.data(), nullptr, rl2.data(), v, 0.5f); });
    cmp("ce row loss no-grad", rl2, rl, 0);
}

static uint64_t sm(uint64_t z) { z += 0x9E3779B97F4A7C15ull; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull; z = (z ^ (z >> 27)) * 0x94D049BB133111EBull; return z ^ (z >> 31); }
static void test_dropout(size_t n) {
    auto x = randv(n); std::vector<float> y(n);
    float p = 0.1f; unsigned thr = (unsigned)((double)p * 4294967295.0); float keep = 1.f / (1.f - p);
    launch({(unsigned)((n + 255) / 256)}, {256}, [&] { dropout_f32(x.data(), y.data(), n, 0, 1234, thr, keep); });
    std::vector<float> w(n);
    for (size_t e = 0; e < n; ++e) { uint64_t r = sm(1234 ^ sm(e / 2)); unsigned bits = e % 2 ? (unsigned)(r >> 32) : (unsigned)r; w[e] = x[e] * (bits >= thr ? keep : 0.f); }
    cmp("dropout", y, w, 0);
}

template <int D> static void test_attention(int B, int HQ, int HKV, int T) {
    float scale = 0.125f;
    // q/k/v/dout in [B, T, H, D] (projection layout), read as [B, H, T, D]
    auto q = randv((size_t)B*T*HQ*D), k = randv((size_t)B*T*HKV*D), v = randv((size_t)B*T*HKV*D), dout = randv((size_t)B*T*HQ*D);
    auto tm = [&](int H) { return Strides{(long long)T*H*D, D, (long long)H*D}; };
    Strides sq = tm(HQ), sk = tm(HKV);
    std::vector<float> o(q.size()), lse((size_t)B*HQ*T), delta(lse.size()), dq(q.size()), dk(k.size()), dv(v.size());
    dim3u gq{(unsigned)(T + 7) / 8, (unsigned)(B*HQ)}, gk{(unsigned)(T + 7) / 8, (unsigned)(B*HKV)}, bl{256};
    launch(gq, bl, [&] { (D == 64 ? attn_fwd_f32_d64 : attn_fwd_f32_d128)(q.data(), k.data(), v.data(), o.data(), lse.data(), HQ, HKV, T, sq, sk, sk, sq, scale); });
    launch(gq, bl, [&] { (D == 64 ? attn_bwd_dq_f32_d64 : attn_bwd_dq_f32_d128)(q.data(), k.data(), v.data(), o.data(), dout.data(), lse.data(), delta.data(), dq.data(), HQ, HKV, T, sq, sk, sk, sq, sq, sq, scale); });
    launch(gk, bl, [&] { (D == 64 ? attn_bwd_dkv_f32_d64 : attn_bwd_dkv_f32_d128)(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(), dv.data(), HQ, HKV, T, sq, sk, sk, sq, sk, sk, scale); });
    // naive reference in the same token-major layout
    auto Q = [&](int b, int h, int t) { return &q[(size_t)b*sq.b + h*sq.h + t*sq.t]; };
    auto K = [&](int b, int h, int t) { return &k[(size_t)b*sk.b + h*sk.h + t*sk.t]; };
    auto V = [&](int b, int h, int t) { return &v[(size_t)b*sk.b + h*sk.h + t*sk.t]; };
    auto DO = [&](int b, int h, int t) { return &dout[(size_t)b*sq.b + h*sq.h + t*sq.t]; };
    std::vector<double> wo(q.size()), wl(lse.size()), wdq(q.size()), wdk(k.size()), wdv(v.size());
    for (int b = 0; b < B; ++b) for (int h = 0; h < HQ; ++h) {
        int hk = h / (HQ / HKV);
        std::vector<std::vector<double>> P(T, std::vector<double>(T, 0));
        std::vector<double> Ol((size_t)T * D);
        for (int i = 0; i < T; ++i) {
            std::vector<double> s(i + 1); double m = -1e300;
            for (int j = 0; j <= i; ++j) { double a = 0; for (int d = 0; d < D; ++d) a += (double)Q(b,h,i)[d] * K(b,hk,j)[d]; s[j] = a * scale; m = std::max(m, s[j]); }
            double sum = 0; for (int j = 0; j <= i; ++j) sum += std::exp(s[j] - m);
            double l = m + std::log(sum); wl[((size_t)b*HQ + h)*T + i] = l;
            for (int j = 0; j <= i; ++j) P[i][j] = std::exp(s[j] - l);
            for (int d = 0; d < D; ++d) { double a = 0; for (int j = 0; j <= i; ++j) a += P[i][j] * V(b,hk,j)[d]; Ol[(size_t)i*D+d] = a; wo[(size_t)b*sq.b + h*sq.h + i*sq.t + d] = a; }
        }
        for (int i = 0; i < T; ++i) {
            double dl = 0; for (int d = 0; d < D; ++d) dl += (double)DO(b,h,i)[d] * Ol[(size_t)i*D+d];
            for (int j = 0; j <= i; ++j) {
                double dp = 0; for (int d = 0; d < D; ++d) dp += (double)DO(b,h,i)[d] * V(b,hk,j)[d];
                double ds = P[i][j] * (dp - dl);
                for (int d = 0; d < D; ++d) {
                    wdq[(size_t)b*sq.b + h*sq.h + i*sq.t + d] += scale * ds * K(b,hk,j)[d];
                    wdk[(size_t)b*sk.b + hk*sk.h + j*sk.t + d] += scale * ds * Q(b,h,i)[d];
                    wdv[(size_t)b*sk.b + hk*sk.h + j*sk.t + d] += P[i][j] * DO(b,h,i)[d];
                }
            }
        }
    }
    cmp("attn o", o, wo, 1e-5); cmp("attn lse", lse, wl, 1e-5); cmp("attn dq", dq, wdq, 1e-5); cmp("attn dk", dk, wdk, 1e-5); cmp("attn dv", dv, wdv, 1e-5);
}

// The LoRA kernels, launched as src/model/ops/cuda.rs does, against f64 loops on the same
// rounded inputs (and dropout mask). `first` offsets the mask as a data-parallel shard does.
template <typename T, int R> struct LoraK;
#define LORA_K(TN, T, R) template <> struct LoraK<T, R> { \
    static constexpr auto down = lora_down_##TN##_r##R; static constexpr auto up = lora_up_add_##TN##_r##R; \
    static constexpr auto dy = lora_bwd_dy_##TN##_r##R; static constexpr auto x = lora_bwd_x_##TN##_r##R; \
    static constexpr auto reduce = lora_reduce_##TN; };
LORA_K(f32, float, 8) LORA_K(f32, float, 16) LORA_K(f32, float, 64) LORA_K(bf16, __nv_bfloat16, 8) LORA_K(bf16, __nv_bfloat16, 16)

template <typename T> static std::vector<T> toT(const std::vector<float> &v) { std::vector<T> r(v.size()); for (size_t i = 0; i < v.size(); ++i) r[i] = from_f<T>(v[i]); return r; }
template <typename T> static std::vector<float> fromT(const std::vector<T> &v) { std::vector<float> r(v.size()); for (size_t i = 0; i < v.size(); ++i) r[i] = to_f(v[i]); return r; }
template <typename T> static double rnd(double v) { return to_f(from_f<T>((float)v)); }

template <typename T, int R> static void test_lora(int n, int kin, int kout, int r, uint64_t first, float p) {
    using K = LoraK<T, R>;
    const bool bf = sizeof(T) == 2;
    const double tol = bf ? 1e-2 : 2e-5;
    char tag[96]; snprintf(tag, sizeof tag, "%s r%d/%d %dx%d->%d first %llu p %.1f", bf ? "bf16" : "f32", r, R, n, kin, kout, (unsigned long long)first, p);
    // inputs, rounded to T
    auto xT = toT<T>(randv((size_t)n * kin)), aT = toT<T>(randv((size_t)r * kin, 0.5f)), sbT = toT<T>(randv((size_t)kout * r, 0.5f));
    auto yT = toT<T>(randv((size_t)n * kout)), dyT = toT<T>(randv((size_t)n * kout)), dxT = toT<T>(randv((size_t)n * kin));
    auto x = fromT(xT), a = fromT(aT), sb = fromT(sbT), y = fromT(yT), dy = fromT(dyT), dx = fromT(dxT);
    const int masked = p > 0; const uint64_t seed = 0xC0FFEE;
    const unsigned thr = (unsigned)((double)p * 4294967295.0); const float keep = 1.f / (1.f - p);
    const int cf = LORA_C_FWD(R), cb = LORA_C_BWD(R);
    const unsigned chunks = (n + LORA_BLOCK_ROWS - 1) / LORA_BLOCK_ROWS;
    const float scaling = 0.75f;
    // forward
    const unsigned tin = (kin + 32 * cf - 1) / (32 * cf);
    std::vector<float> zp((size_t)tin * n * R, NAN);
    std::vector<T> zT((size_t)n * r);
    launch({tin, chunks}, {256}, [&] { K::down(xT.data(), aT.data(), zp.data(), n, kin, r, masked, first, seed, thr, keep); });
    launch({(unsigned)((n * r + 255) / 256)}, {256}, [&] { K::reduce(zp.data(), tin, (size_t)n * R, n, r, r, R, zT.data(), r, 1, 1.f, 0); });
    std::vector<T> outT((size_t)n * kout);
    launch({(unsigned)((kout + 32 * cf - 1) / (32 * cf)), chunks}, {256}, [&] { K::up(yT.data(), zT.data(), sbT.data(), outT.data(), n, kout, r); });
    // backward
    const unsigned tout = (kout + 32 * cb - 1) / (32 * cb);
    std::vector<float> dzp((size_t)tout * n * R, NAN), dbp((size_t)chunks * kout * R, NAN), dz((size_t)n * R, NAN);
    launch({tout, chunks}, {256}, [&] { K::dy(dyT.data(), zT.data(), sbT.data(), dzp.data(), dbp.data(), n, kout, r); });
    launch({(unsigned)((n * R + 255) / 256)}, {256}, [&] { K::reduce(dzp.data(), tout, (size_t)n * R, n, R, r, R, dz.data(), R, 1, 1.f, 1); });
    std::vector<float> dap((size_t)chunks * kin * R, NAN);
    std::vector<T> dxoT((size_t)n * kin);
    launch({(unsigned)((kin + 32 * cb - 1) / (32 * cb)), chunks}, {256}, [&] { K::x(xT.data(), dxT.data(), dz.data(), aT.data(), dxoT.data(), dap.data(), n, kin, r, masked, first, seed, thr, keep); });
    // the gradient buffer: [guard | dA | guard | dB | guard]
    const size_t offa = 3, offb = offa + (size_t)r * kin + 2, len = offb + (size_t)kout * r + 5;
    std::vector<float> buf(len, -7.f);
    launch({(unsigned)((kout * r + 255) / 256)}, {256}, [&] { K::reduce(dbp.data(), chunks, (size_t)kout * R, kout, r, r, R, buf.data() + offb, r, 1, scaling, 2); });
    launch({(unsigned)((kin * r + 255) / 256)}, {256}, [&] { K::reduce(dap.data(), chunks, (size_t)kin * R, kin, r, r, R, buf.data() + offa, 1, kin, 1.f, 2); });
    // reference
    std::vector<double> m((size_t)n * kin, 1.0), xd((size_t)n * kin);
    for (int i = 0; i < n; ++i) for (int c = 0; c < kin; ++c) {
        size_t e = (size_t)i * kin + c;
        if (masked) { uint64_t g = first + e; uint64_t h = sm(seed ^ sm(g / 2)); unsigned bits = g % 2 ? (unsigned)(h >> 32) : (unsigned)h; m[e] = bits >= thr ? keep : 0.0; xd[e] = rnd<T>(x[e] * (float)m[e]); }
        else xd[e] = x[e];
    }
    std::vector<double> wz((size_t)n * r), wzr((size_t)n * r), wout((size_t)n * kout), wdz((size_t)n * r), wdb((size_t)kout * r, 0), wda((size_t)r * kin, 0), wdx((size_t)n * kin);
    for (int i = 0; i < n; ++i) for (int j = 0; j < r; ++j) { double s = 0; for (int c = 0; c < kin; ++c) s += xd[(size_t)i*kin+c] * a[(size_t)j*kin+c]; wz[(size_t)i*r+j] = s; wzr[(size_t)i*r+j] = to_f(zT[(size_t)i*r+j]); }
    for (int i = 0; i < n; ++i) for (int o = 0; o < kout; ++o) { double s = y[(size_t)i*kout+o]; for (int j = 0; j < r; ++j) s += wzr[(size_t)i*r+j] * sb[(size_t)o*r+j]; wout[(size_t)i*kout+o] = s; }
    for (int i = 0; i < n; ++i) for (int j = 0; j < r; ++j) { double s = 0; for (int o = 0; o < kout; ++o) s += dy[(size_t)i*kout+o] * sb[(size_t)o*r+j]; wdz[(size_t)i*r+j] = s; }
    std::vector<double> dzr((size_t)n * r);
    for (int i = 0; i < n; ++i) for (int j = 0; j < r; ++j) dzr[(size_t)i*r+j] = dz[(size_t)i*R+j];
    for (int i = 0; i < n; ++i) for (int o = 0; o < kout; ++o) for (int j = 0; j < r; ++j) wdb[(size_t)o*r+j] += scaling * dy[(size_t)i*kout+o] * wzr[(size_t)i*r+j];
    for (int i = 0; i < n; ++i) for (int c = 0; c < kin; ++c) {
        double g = 0;
        for (int j = 0; j < r; ++j) { wda[(size_t)j*kin+c] += dzr[(size_t)i*r+j] * xd[(size_t)i*kin+c]; g += dzr[(size_t)i*r+j] * a[(size_t)j*kin+c]; }
        wdx[(size_t)i*kin+c] = dx[(size_t)i*kin+c] + m[(size_t)i*kin+c] * g;
    }
    std::string t(tag);
    cmp((t + " z").c_str(), fromT(zT), wz, tol);
    cmp((t + " up_add").c_str(), fromT(outT), wout, tol);
    std::vector<float> dzv((size_t)n * r); for (size_t i = 0; i < dzv.size(); ++i) dzv[i] = (float)dzr[i];
    cmp((t + " dz").c_str(), dzv, wdz, tol);
    bool pad = true; for (int i = 0; i < n; ++i) for (int j = r; j < R; ++j) pad &= dz[(size_t)i*R+j] == 0.f;
    if (!pad) { ++fails; printf("%s dz padding not zero FAIL\n", tag); }
    cmp((t + " dx").c_str(), fromT(dxoT), wdx, tol);
    cmp((t + " dA").c_str(), std::vector<float>(buf.begin() + offa, buf.begin() + offa + (size_t)r * kin), wda, tol);
    cmp((t + " dB").c_str(), std::vector<float>(buf.begin() + offb, buf.begin() + offb + (size_t)kout * r), wdb, tol);
    bool guard = buf[0] == -7.f && buf[offa - 1] == -7.f && buf[offb - 1] == -7.f && buf[offb - 2] == -7.f && buf[len - 1] == -7.f && buf[offb + (size_t)kout * r] == -7.f;
    if (!guard) { ++fails; printf("%s wrote outside dA/dB FAIL\n", tag); }
}

int main() {
    test_rms(7, 576); test_rms(5, 33); test_rms(1, 3);
    test_rope(2, 3, 5, 8); test_rope(1, 9, 40, 64);
    test_swiglu(1000); test_swiglu(7);
    test_ce(9, 1000, 64); test_ce(6, 5000, 256); test_ce(3, 1, 64); test_ce(5, 20000, 1024);
    test_dropout(1001); test_dropout(4096);
    test_attention<64>(2, 4, 2, 37); test_attention<64>(1, 3, 3, 70); test_attention<64>(1, 2, 1, 2); test_attention<128>(1, 4, 1, 45); test_attention<128>(2, 2, 2, 16);
    test_lora<float, 8>(37, 70, 45, 8, 0, 0.1f); test_lora<float, 8>(300, 264, 96, 5, 7, 0.3f); test_lora<float, 8>(130, 256, 40, 8, 0, 0.f);
    test_lora<float, 16>(33, 96, 130, 16, 3, 0.1f); test_lora<float, 64>(20, 40, 33, 40, 0, 0.1f);
    test_lora<__nv_bfloat16, 8>(140, 512, 72, 8, 11, 0.1f); test_lora<__nv_bfloat16, 8>(9, 13, 7, 3, 1, 0.1f); test_lora<__nv_bfloat16, 16>(40, 64, 264, 16, 0, 0.f);
    printf("%s (%d failures)\n", fails ? "FAIL" : "ALL PASS", fails);
    return fails != 0;
}
