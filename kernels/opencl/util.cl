/* Helpers shared by the solvers: bias gradient, weight packing and flipping, im2col and
 * col2im (channels-first, and channels-last: *_nhwc). RED_WG (a -D macro) is the work-group
 * size of the reductions. */

#ifndef RED_WG
#define RED_WG 64
#endif

__kernel void fill_zero(__global T* restrict y, const long count)
{
    const long gid = get_global_id(0);
    if (gid < count) y[gid] = 0;
}

/* flag[0] = 1 if a[0 .. count) holds an Inf or NaN, else 0, by one work-group of RED_WG
 * items (no zeroing beforehand, no two writers). The kernels that skip the zero padding read
 * it to know whether the padding's products 0 * v can change a sum (common.h), so a finite
 * problem pays one pass over the operand instead of a check per skipped tap. */
__kernel __attribute__((reqd_work_group_size(RED_WG, 1, 1)))
void any_nonfinite(__global const T* restrict a, const long count, __global T* restrict flag)
{
    __local int seen[RED_WG];
    const int lid = get_local_id(0);
    /* A contiguous share per work-item: one pass over memory where a CPU device runs the
     * work-items one after another. */
    const long share = (count + RED_WG - 1) / RED_WG;
    const long end = min(count, (lid + 1) * share);
    int found = 0;
    for (long i = lid * share; i < end; ++i) found |= !isfinite(a[i]);
    seen[lid] = found;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = RED_WG / 2; step > 0; step >>= 1) {
        if (lid < step) seen[lid] |= seen[lid + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) flag[0] = seen[0] ? 1 : 0;
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
 * to the tile's output positions [p_start, p_start + pcount). accumulate: dx += sum; then
 * the epilogue of channel g * CG + c (callers pass one with an image's last tile only). */
__kernel void col2im(__global const T* restrict col, __global T* restrict dx, GEOM_PARAMS,
                     EPILOGUE_PARAMS, const int n0, const int g, const int p_start,
                     const int pcount, const int nimg, const int accumulate)
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
        const int od = out_coord(id, kd, SD, PD, DD, OD);
        if (od < 0) continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int oh = out_coord(ih, kh, SH, PH, DH, OH);
            if (oh < 0) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int ow = out_coord(iw, kw, SW, PW, DW, OW);
                if (ow < 0) continue;
                const int q = (od * OH + oh) * OW + ow - p_start;
                if (q < 0 || q >= pcount) continue;
                const int row = c * taps + (kd * KH + kh) * KW + kw;
                acc += col[(long)row * ncols + (long)img * pcount + q];
            }
        }
    }
    __global T* out = dx + (((long)(n0 + img) * C + g * CG + c) * plane) + (gid % plane);
    const T v = accumulate ? *out + acc : acc;
    *out = ep_mode ? epilogue(v, ep_bias, ep_base + g * CG + c, ep_mode) : v;
}

/* Channels-last im2col (x is (N, D, H, W, C)) for the input channels of group g and a tile
 * of output positions: column j = img * pcount + q, row = tap * CG + c (channels innermost,
 * so each (column, tap) is a run of CG contiguous values of x), at col[j * rows + row]: the
 * layout of im2col's transposed form with the rows reordered (the weights are reordered to
 * match, (K, taps, CG)). A work-item fills one column, tap by tap, a run at a time. */
__kernel void im2col_nhwc(__global const T* restrict x, __global T* restrict col, GEOM_PARAMS,
                          const int n0, const int g, const int p_start, const int pcount,
                          const int nimg)
{
    const int j = get_global_id(0);
    if (j >= nimg * pcount) return;
    const int img = j / pcount;
    const int p = p_start + (j - img * pcount);
    const int ow = p % OW, oh = (p / OW) % OH, od = p / (OW * OH);
    __global T* out = col + (long)j * (KD * KH * KW) * CG;
    const __global T* xn = x + (long)(n0 + img) * D * H * W * C + g * CG;
    for (int kd = 0; kd < KD; ++kd) {
        const int id = od * SD - PD + kd * DD;
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = oh * SH - PH + kh * DH;
            const int row_ok = id >= 0 && id < D && ih >= 0 && ih < H;
            const __global T* xrow = xn + ((long)id * H + ih) * W * C;
            for (int kw = 0; kw < KW; ++kw, out += CG) {
                const int iw = ow * SW - PW + kw * DW;
                if (row_ok && iw >= 0 && iw < W) {
                    const __global T* in = xrow + (long)iw * C;
                    for (int c = 0; c < CG; ++c) out[c] = in[c];
                } else {
                    for (int c = 0; c < CG; ++c) out[c] = 0;
                }
            }
        }
    }
}

/* The adjoint of im2col_nhwc as a gather into channels-last dx: work-item (c, input element
 * (img, id, ih, iw)) of group g; accumulate and the epilogue as in col2im. */
__kernel void col2im_nhwc(__global const T* restrict col, __global T* restrict dx, GEOM_PARAMS,
                          EPILOGUE_PARAMS, const int n0, const int g, const int p_start,
                          const int pcount, const int nimg, const int accumulate)
{
    const int c = get_global_id(0);
    const long e = get_global_id(1);
    const long plane = (long)D * H * W;
    if (c >= CG || e >= nimg * plane) return;
    const int iw = (int)(e % W);
    long r = e / W;
    const int ih = (int)(r % H); r /= H;
    const int id = (int)(r % D);
    const int img = (int)(r / D);
    const int rows = CG * KD * KH * KW;
    T acc = 0;
    for (int kd = 0; kd < KD; ++kd) {
        const int od = out_coord(id, kd, SD, PD, DD, OD);
        if (od < 0) continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int oh = out_coord(ih, kh, SH, PH, DH, OH);
            if (oh < 0) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int ow = out_coord(iw, kw, SW, PW, DW, OW);
                if (ow < 0) continue;
                const int q = (od * OH + oh) * OW + ow - p_start;
                if (q < 0 || q >= pcount) continue;
                const int row = ((kd * KH + kh) * KW + kw) * CG + c;
                acc += col[((long)img * pcount + q) * rows + row];
            }
        }
    }
    __global T* out = dx + ((long)(n0 + img) * plane + e % plane) * C + g * CG + c;
    const T v = accumulate ? *out + acc : acc;
    *out = ep_mode ? epilogue(v, ep_bias, ep_base + g * CG + c, ep_mode) : v;
}

/* Channels-last bias gradient, first step: part[chunk][c] = sum of dy[r, c] over the rows r
 * (all of N, D, H, W) of chunk `chunk` of `chunks`; bias_grad_chunks sums them in order. */
__kernel void bias_grad_nhwc(__global const T* restrict dy, __global T* restrict part,
                             const int C, const long rows, const int chunks)
{
    const int c = get_global_id(0);
    const int chunk = get_global_id(1);
    if (c >= C || chunk >= chunks) return;
    const long per = (rows + chunks - 1) / chunks;
    const long r1 = min(rows, (chunk + 1) * per);
    T acc = 0;
    for (long r = chunk * per; r < r1; ++r) acc += dy[r * C + c];
    part[(long)chunk * C + c] = acc;
}

__kernel void bias_grad_chunks(__global const T* restrict part, __global T* restrict out,
                               const int C, const int chunks)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    T acc = 0;
    for (int chunk = 0; chunk < chunks; ++chunk) acc += part[(long)chunk * C + c];
    out[c] = acc;
}
