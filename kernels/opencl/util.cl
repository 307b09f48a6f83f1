/* Helpers shared by the solvers: bias, bias gradient, weight packing and flipping, im2col
 * and col2im. RED_WG (a -D macro) is the work-group size of the reductions. */

#ifndef RED_WG
#define RED_WG 64
#endif

__kernel void fill_zero(__global T* restrict y, const long count)
{
    const long gid = get_global_id(0);
    if (gid < count) y[gid] = 0;
}

/* y[n, c, ...] += b[c]; inner = elements per (n, c). */
__kernel void bias_add(__global T* restrict y, __global const T* restrict b, const int C,
                       const long inner, const long total)
{
    const long gid = get_global_id(0);
    if (gid < total) y[gid] += b[(gid / inner) % C];
}

/* out[c] = sum_{n, i} dy[n, c, i]: one work-group per channel, each work-item sums a
 * strided share, then a tree in local memory (a fixed order: deterministic). */
__kernel __attribute__((reqd_work_group_size(RED_WG, 1, 1)))
void bias_grad(__global const T* restrict dy, __global T* restrict out, const int N,
               const int C, const long inner)
{
    __local T part[RED_WG];
    const int c = get_group_id(0);
    const int lid = get_local_id(0);
    T acc = 0;
    for (int n = 0; n < N; ++n) {
        const __global T* p = dy + ((long)n * C + c) * inner;
        for (long i = lid; i < inner; i += RED_WG) acc += p[i];
    }
    part[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = RED_WG / 2; step > 0; step >>= 1) {
        if (lid < step) part[lid] += part[lid + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) out[c] = part[0];
}

/* Pack the matrices A_b(m, k) = src[s0 + b1*sb1 + b2*sb2 + m*sm + k*sk] (b = b1*nb2 + b2)
 * into panels of R rows: dst[b][m / R][k][m % R], rows m >= M zero. The CPU-style GEMMs
 * (vgemm.cl) then read each panel as one contiguous stream. */
__kernel void pack_panels(__global const T* restrict src, __global T* restrict dst,
                          const int M, const int Kd, const int R, const int Mpad, const long s0,
                          const long sm, const long sk, const long sb1, const long sb2,
                          const int nb2, const long total)
{
    const long gid = get_global_id(0);
    if (gid >= total) return;
    const int r = (int)(gid % R);
    long q = gid / R;
    const int k = (int)(q % Kd); q /= Kd;
    const int mb = (int)(q % (Mpad / R));
    const int b = (int)(q / (Mpad / R));
    const int m = mb * R + r;
    const int b1 = b / nb2, b2 = b - (b / nb2) * nb2;
    dst[gid] = m < M ? src[s0 + b1 * sb1 + b2 * sb2 + m * sm + k * sk] : (T)0;
}

/* The weights of the data gradient as a forward convolution (stride 1):
 * wf[g*CG + c, j, t] = w[g*KG + j, c, taps - 1 - t], shape (C, KG, taps). */
__kernel void flip_weights(__global const T* restrict w, __global T* restrict wf, const int K,
                           const int CG, const int G, const int taps)
{
    const long gid = get_global_id(0);
    const long total = (long)K * CG * taps;
    if (gid >= total) return;
    const int KG = K / G;
    const int t = (int)(gid % taps);
    long r = gid / taps;
    const int j = (int)(r % KG); r /= KG;
    const int cc = (int)r;                      /* g * CG + c */
    const int g = cc / CG, c = cc - (cc / CG) * CG;
    wf[gid] = w[(((long)g * KG + j) * CG + c) * taps + (taps - 1 - t)];
}

/* col[(c*taps + tap) * ncols + j] for the input channels of group g, j = img * pcount + q
 * over images n0 .. n0 + nimg - 1 and output positions p = p_start + q (flattened od, oh, ow):
 * the input value each (tap, output) pair multiplies, zero where it falls in the padding. */
__kernel void im2col(__global const T* restrict x, __global T* restrict col, GEOM_PARAMS,
                     const int n0, const int g, const int p_start, const int pcount,
                     const int nimg)
{
    const int j = get_global_id(0);
    const int row = get_global_id(1);
    const int ncols = nimg * pcount;
    const int taps = KD * KH * KW;
    if (j >= ncols || row >= CG * taps) return;
    const int img = j / pcount;
    const int p = p_start + (j - img * pcount);
    const int c = row / taps, tap = row - (row / taps) * taps;
    const int kw = tap % KW, kh = (tap / KW) % KH, kd = tap / (KW * KH);
    const int ow = p % OW, oh = (p / OW) % OH, od = p / (OW * OH);
    const int id = od * SD - PD + kd * DD;
    const int ih = oh * SH - PH + kh * DH;
    const int iw = ow * SW - PW + kw * DW;
    T v = 0;
    if (id >= 0 && id < D && ih >= 0 && ih < H && iw >= 0 && iw < W)
        v = x[((((long)(n0 + img) * C + g * CG + c) * D + id) * H + ih) * W + iw];
    col[(long)row * ncols + j] = v;
}

/* The adjoint of im2col as a gather (no atomics): each input element of group g in images
 * n0 .. n0 + nimg - 1 sums the col entries that im2col would have read from it, restricted
 * to the tile's output positions [p_start, p_start + pcount). accumulate: dx += sum. */
__kernel void col2im(__global const T* restrict col, __global T* restrict dx, GEOM_PARAMS,
                     const int n0, const int g, const int p_start, const int pcount,
                     const int nimg, const int accumulate)
{
    const long gid = get_global_id(0);
    const long plane = (long)D * H * W;
    const long total = (long)nimg * CG * plane;
    if (gid >= total) return;
    const int iw = (int)(gid % W);
    long r = gid / W;
    const int ih = (int)(r % H); r /= H;
    const int id = (int)(r % D); r /= D;
    const int c = (int)(r % CG);
    const int img = (int)(r / CG);
    const int taps = KD * KH * KW;
    const long ncols = (long)nimg * pcount;
    T acc = 0;
    for (int kd = 0; kd < KD; ++kd) {
        const int td = id + PD - kd * DD;
        if (td < 0 || td % SD) continue;
        const int od = td / SD;
        if (od >= OD) continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int th = ih + PH - kh * DH;
            if (th < 0 || th % SH) continue;
            const int oh = th / SH;
            if (oh >= OH) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int tw = iw + PW - kw * DW;
                if (tw < 0 || tw % SW) continue;
                const int ow = tw / SW;
                if (ow >= OW) continue;
                const int q = (od * OH + oh) * OW + ow - p_start;
                if (q < 0 || q >= pcount) continue;
                const int row = c * taps + (kd * KH + kh) * KW + kw;
                acc += col[(long)row * ncols + (long)img * pcount + q];
            }
        }
    }
    __global T* out = dx + (((long)(n0 + img) * C + g * CG + c) * plane) + (gid % plane);
    *out = accumulate ? *out + acc : acc;
}
