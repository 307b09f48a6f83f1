/* The opencl fft solver's own steps around reikna's transforms (convflow/backends/opencl/
 * fft.py): gathering a tile's segment into complex buffers, the per-frequency channel sums,
 * and copying a tile's window of outputs out through the epilogue. The transforms
 * themselves are reikna's. Spatial geometry is lifted to 3 dims (leading singleton axes).
 *
 * Complex buffers are (rows, L0, L1, L2) of T2 = (re, im). */
#ifdef USE_DOUBLE
typedef double2 T2;
#else
typedef float2 T2;
#endif

inline T2 cmul(const T2 a, const T2 b) {
    return (T2)(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

inline T2 cmul_conj(const T2 a, const T2 b) {   /* a * conj(b) */
    return (T2)(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y);
}

/* Where sample i of a segment reads its source along one axis: the source upsampled by u
 * (zeros between samples), read from sample s on, at most lim samples; -1 for a zero. */
inline int segment_source(int i, int s, int u, int lim, int size) {
    const int j = s + i;
    if (i >= lim || j < 0 || j % u != 0 || j / u >= size) return -1;
    return j / u;
}

/* out[row][i] = src[src0 + (row / block) * outer + (row % block) * inner + source(i)]:
 * a block of channels of a block of images (or of a weight), as complex numbers. */
__kernel void fft_gather(__global const T* restrict src, const long src0, const int block,
                         const long outer, const long inner, const int rows,
                         const int S0, const int S1, const int S2,
                         const int L0, const int L1, const int L2,
                         const int s0, const int s1, const int s2,
                         const int u0, const int u1, const int u2,
                         const int lim0, const int lim1, const int lim2,
                         __global T2* restrict out)
{
    const long i = get_global_id(0);
    const int row = get_global_id(1);
    const long points = (long)L0 * L1 * L2;
    if (i >= points || row >= rows) return;
    const int i2 = (int)(i % L2);
    const int i1 = (int)((i / L2) % L1);
    const int i0 = (int)(i / ((long)L1 * L2));
    const int j0 = segment_source(i0, s0, u0, lim0, S0);
    const int j1 = segment_source(i1, s1, u1, lim1, S1);
    const int j2 = segment_source(i2, s2, u2, lim2, S2);
    T v = 0;
    if (j0 >= 0 && j1 >= 0 && j2 >= 0)
        v = src[src0 + (long)(row / block) * outer + (long)(row % block) * inner
                + ((long)j0 * S1 + j1) * S2 + j2];
    out[row * points + i] = (T2)(v, 0);
}

/* out[(n * G + g) * I + i][f] = sum_r p[(n * G + g) * R + r][f] * q'[g * qg + i * qi + r * qr][f]
 * with q' = conj(q) when conj_q (the forward pass correlates). */
__kernel void fft_contract(__global const T2* restrict p, __global const T2* restrict q,
                           __global T2* restrict out, const int G, const int R, const int I,
                           const long F, const long qg, const long qi, const long qr,
                           const int conj_q, const int rows)
{
    const long f = get_global_id(0);
    const int z = get_global_id(1);
    if (f >= F || z >= rows) return;
    const int i = z % I;
    const int ng = z / I;
    const int g = ng % G;
    T2 acc = (T2)(0, 0);
    for (int r = 0; r < R; ++r) {
        const T2 a = p[((long)ng * R + r) * F + f];
        const T2 b = q[(g * qg + i * qi + r * qr) * F + f];
        acc += conj_q ? cmul_conj(a, b) : cmul(a, b);
    }
    out[(long)z * F + f] = acc;
}

/* acc[(g * K + k) * C + c][f] += sum_n x[(n * G + g) * C + c][f] * conj(d[(n * G + g) * K + k][f]) */
__kernel void fft_accumulate_weight(__global const T2* restrict x, __global const T2* restrict d,
                                    __global T2* restrict acc, const int NN, const int G,
                                    const int K, const int C, const long F)
{
    const long f = get_global_id(0);
    const int z = get_global_id(1);
    if (f >= F || z >= G * K * C) return;
    const int c = z % C;
    const int k = (z / C) % K;
    const int g = z / (C * K);
    T2 sum = acc[(long)z * F + f];
    for (int n = 0; n < NN; ++n)
        sum += cmul_conj(x[((long)(n * G + g) * C + c) * F + f],
                         d[((long)(n * G + g) * K + k) * F + f]);
    acc[(long)z * F + f] = sum;
}

/* The real part of res[row][w0 + m * ws] (per axis, m < cnt) to
 * out[n0 + row / block][c0 + row % block][o0 + m], through the epilogue of that channel. */
__kernel void fft_scatter(__global const T2* restrict res, const int rows, const int block,
                          const int n0, const int c0, const int CT,
                          const int O0, const int O1, const int O2,
                          const int L0, const int L1, const int L2,
                          const int w00, const int w01, const int w02,
                          const int ws0, const int ws1, const int ws2,
                          const int o00, const int o01, const int o02,
                          const int cnt0, const int cnt1, const int cnt2,
                          __global T* restrict out, EPILOGUE_PARAMS)
{
    const long m = get_global_id(0);
    const int row = get_global_id(1);
    if (m >= (long)cnt0 * cnt1 * cnt2 || row >= rows) return;
    const int m2 = (int)(m % cnt2);
    const int m1 = (int)((m / cnt2) % cnt1);
    const int m0 = (int)(m / ((long)cnt1 * cnt2));
    const long i = ((long)(w00 + m0 * ws0) * L1 + (w01 + m1 * ws1)) * L2 + (w02 + m2 * ws2);
    const T v = res[(long)row * L0 * L1 * L2 + i].x;
    const long n = n0 + row / block;
    const long ch = c0 + row % block;
    out[((n * CT + ch) * O0 + (o00 + m0)) * (long)O1 * O2 + (long)(o01 + m1) * O2 + (o02 + m2)]
        = epilogue(v, ep_bias, ep_base + ch, ep_mode);
}
