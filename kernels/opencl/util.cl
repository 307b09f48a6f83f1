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
 * (vgemm.cl) then read each panel as one contiguous stream. A work-item copies PACK_RUN
 * consecutive k of one row (contiguous reads when sk == 1, the usual case). */
#define PACK_RUN 16
__kernel void pack_panels(__global const T* restrict src, __global T* restrict dst,
                          const int M, const int Kd, const int R, const int Mpad, const long s0,
                          const int sm, const int sk, const long sb1, const long sb2,
                          const int nb2)
{
    const int kr = get_global_id(0);
    const int m = get_global_id(1);
    const int b = get_global_id(2);
    const int k0 = kr * PACK_RUN;
    if (k0 >= Kd || m >= Mpad) return;
    const int b1 = b / nb2, b2 = b - (b / nb2) * nb2;
    __global T* out = dst + ((long)b * Mpad + (m - m % R)) * Kd + m % R;
    const int k1 = min(Kd, k0 + PACK_RUN);
    if (m < M) {
        const __global T* in = src + s0 + b1 * sb1 + b2 * sb2 + (long)m * sm;
        for (int k = k0; k < k1; ++k) out[k * R] = in[(long)k * sk];
    } else {
        for (int k = k0; k < k1; ++k) out[k * R] = 0;
    }
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

/* im2col for the input channels of group g and a tile of output positions: images
 * n0 .. n0 + nimg - 1, positions p = p_start + q, q < pcount (p flattens od, oh, ow).
 * Column j = img * pcount + q, row = c * taps + tap holds the input value that (tap, output)
 * multiplies (zero in the padding), at col[row * ncols + j], or at col[j * rows + row] when
 * transposed (the layout the vgemm_nt path reads). A work-item fills one row for one output
 * line (img, od, oh) of the tile, so the index arithmetic is done once per line. */
__kernel void im2col(__global const T* restrict x, __global T* restrict col, GEOM_PARAMS,
                     const int n0, const int g, const int p_start, const int pcount,
                     const int nimg, const int line0, const int lines, const int transposed)
{
    const int taps = KD * KH * KW;
    const int rows = CG * taps;
    const int row = transposed ? get_global_id(0) : get_global_id(1);
    const int li = transposed ? get_global_id(1) : get_global_id(0);
    if (li >= nimg * lines || row >= rows) return;
    const int img = li / lines;
    const int line = line0 + (li - img * lines);
    const int oh = line % OH, od = line / OH;
    const int c = row / taps, tap = row - (row / taps) * taps;
    const int kw = tap % KW, kh = (tap / KW) % KH, kd = tap / (KW * KH);
    const int id = od * SD - PD + kd * DD;
    const int ih = oh * SH - PH + kh * DH;
    const int q_lo = max(line * OW, p_start) - p_start;
    const int q_hi = min((line + 1) * OW, p_start + pcount) - p_start;
    const int ncols = nimg * pcount;
    const int ok = id >= 0 && id < D && ih >= 0 && ih < H;
    const __global T* xrow = x + ((((long)(n0 + img) * C + g * CG + c) * D + (ok ? id : 0)) * H
                                  + (ok ? ih : 0)) * W;
    int iw = (q_lo + p_start - line * OW) * SW - PW + kw * DW;
    const int j0 = img * pcount;
    if (transposed) {
        __global T* out = col + (long)j0 * rows + row;
        for (int q = q_lo; q < q_hi; ++q, iw += SW)
            out[(long)q * rows] = (ok && iw >= 0 && iw < W) ? xrow[iw] : (T)0;
    } else {
        __global T* out = col + (long)row * ncols + j0;
        for (int q = q_lo; q < q_hi; ++q, iw += SW)
            out[q] = (ok && iw >= 0 && iw < W) ? xrow[iw] : (T)0;
    }
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
