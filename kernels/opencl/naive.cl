/* The naive solver: one work-item per output element, for every problem.
 *
 * The always-correct baseline of the opencl backend (MIOpen's ConvDirectNaive* idea): no
 * local memory, no assumption on stride, padding, dilation, groups or rank. Each work-item
 * sums its own output in a private accumulator, so the results are deterministic.
 */

/* y[n, k, od, oh, ow] = sum_{c, kd, kh, kw} x[n, g*CG + c, ...] * w[k, c, kd, kh, kw]
 * (direct_output; the padding taps' 0 * w only when w has an Inf or NaN: w_nonfinite, util.cl
 * any_nonfinite), then the epilogue of channel k. */
__kernel void naive_fwd(__global const T* restrict x, __global const T* restrict w,
                        __global T* restrict y, GEOM_PARAMS, EPILOGUE_PARAMS,
                        __global const T* restrict w_nonfinite)
{
    const long gid = get_global_id(0);
    const long total = (long)N * K * OD * OH * OW;
    if (gid >= total) return;
    const int ow = (int)(gid % OW);
    long r = gid / OW;
    const int oh = (int)(r % OH); r /= OH;
    const int od = (int)(r % OD); r /= OD;
    const int k = (int)(r % K);
    const int n = (int)(r / K);
    const T acc = direct_output(x, w, GEOM_ARGS, n, k, od, oh, ow, w_nonfinite[0] != 0);
    y[gid] = epilogue(acc, ep_bias, ep_base + k, ep_mode);
}

/* dx[n, c, id, ih, iw] = sum over (k in c's group, taps) with id = od*SD - PD + kd*DD, ...
 * of dy[n, k, od, oh, ow] * w[k, c % CG, kd, kh, kw]: the gather form, no atomics; then the
 * epilogue of channel c. */
__kernel void naive_bwd_data(__global const T* restrict dy, __global const T* restrict w,
                             __global T* restrict dx, GEOM_PARAMS, EPILOGUE_PARAMS)
{
    const long gid = get_global_id(0);
    const long total = (long)N * C * D * H * W;
    if (gid >= total) return;
    const int iw = (int)(gid % W);
    long r = gid / W;
    const int ih = (int)(r % H); r /= H;
    const int id = (int)(r % D); r /= D;
    const int c = (int)(r % C);
    const int n = (int)(r / C);
    const int g = c / CG;
    const int ci = c - g * CG;
    const int KG = K / G;
    const long oplane = (long)OD * OH * OW;
    const int taps = KD * KH * KW;
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
                const long o = ((long)od * OH + oh) * OW + ow;
                const int tap = (kd * KH + kh) * KW + kw;
                for (int j = 0; j < KG; ++j) {
                    const int k = g * KG + j;
                    acc += dy[((long)n * K + k) * oplane + o] * w[((long)k * CG + ci) * taps + tap];
                }
            }
        }
    }
    dx[gid] = epilogue(acc, ep_bias, ep_base + c, ep_mode);
}

/* dw[k, c, kd, kh, kw] = sum_{n, od, oh, ow} x[n, g*CG + c, id, ih, iw] * dy[n, k, od, oh, ow]:
 * one work-item per weight element, a fixed summation order (deterministic); the outputs
 * that read the padding add 0 * dy (add_padding_grads) when dy has an Inf or NaN. */
__kernel void naive_bwd_weight(__global const T* restrict x, __global const T* restrict dy,
                               __global T* restrict dw, GEOM_PARAMS,
                               __global const T* restrict dy_nonfinite)
{
    const long gid = get_global_id(0);
    const long total = (long)K * CG * KD * KH * KW;
    if (gid >= total) return;
    const int kw = (int)(gid % KW);
    long r = gid / KW;
    const int kh = (int)(r % KH); r /= KH;
    const int kd = (int)(r % KD); r /= KD;
    const int ci = (int)(r % CG);
    const int k = (int)(r / CG);
    const int c = (k / (K / G)) * CG + ci;
    const int2 rd = valid_outputs(PD, kd, DD, SD, D, OD);
    const int2 rh = valid_outputs(PH, kh, DH, SH, H, OH);
    const int2 rw = valid_outputs(PW, kw, DW, SW, W, OW);
    const long plane = (long)D * H * W;
    const long oplane = (long)OD * OH * OW;
    T acc = 0;
    for (int n = 0; n < N; ++n) {
        const __global T* xp = x + ((long)n * C + c) * plane;
        const __global T* gp = dy + ((long)n * K + k) * oplane;
        for (int od = rd.x; od < rd.y; ++od) {
            const int id = od * SD - PD + kd * DD;
            for (int oh = rh.x; oh < rh.y; ++oh) {
                const int ih = oh * SH - PH + kh * DH;
                const __global T* xrow = xp + ((long)id * H + ih) * W;
                const __global T* grow = gp + ((long)od * OH + oh) * OW;
                for (int ow = rw.x; ow < rw.y; ++ow)
                    acc += xrow[ow * SW - PW + kw * DW] * grow[ow];
            }
        }
    }
    if (dy_nonfinite[0] != 0)
        acc = add_padding_grads(acc, dy + (long)k * oplane, (long)K * oplane, (long)OH * OW,
                                OW, 1, N, OD, OH, OW, rd, rh, rw, 0, 1);
    dw[gid] = acc;
}
