/* GPU-style weight gradient without atomics (MIOpen's backward-weights idea, made
 * deterministic): one work-group per weight element; its WRW_WG work-items split the sum
 * over (n, od, oh, ow) and combine their partial sums by a tree in __local memory, in a
 * fixed order, so every run gives the same bits. With nhwc, x and dy are channels-last
 * tensors (N, D, H, W, C), read in place. The sum runs over the outputs that read real
 * entries; those that read the padding add 0 * dy (add_padding_grads, common.h) when dy has
 * an Inf or NaN (dy_nonfinite, util.cl any_nonfinite). */
#ifndef WRW_WG
#define WRW_WG 64
#endif

__kernel __attribute__((reqd_work_group_size(WRW_WG, 1, 1)))
void direct_wrw(__global const T* restrict x, __global const T* restrict dy,
                __global T* restrict dw, GEOM_PARAMS, const int nhwc,
                __global const T* restrict dy_nonfinite)
{
    __local T part[WRW_WG];
    const long e = get_group_id(0) + (long)get_group_id(1) * get_num_groups(0);
    const int lid = get_local_id(0);
    const long total = (long)K * CG * KD * KH * KW;
    T acc = 0;
    int kw = 0, kh = 0, kd = 0, ci = 0, k = 0;
    if (e < total) {
        kw = (int)(e % KW);
        long r = e / KW;
        kh = (int)(r % KH); r /= KH;
        kd = (int)(r % KD); r /= KD;
        ci = (int)(r % CG);
        k = (int)(r / CG);
        const int c = (k / (K / G)) * CG + ci;
        const int2 rd = valid_outputs(PD, kd, DD, SD, D, OD);
        const int2 rh = valid_outputs(PH, kh, DH, SH, H, OH);
        const int2 rw = valid_outputs(PW, kw, DW, SW, W, OW);
        const int nd = rd.y - rd.x, nh = rh.y - rh.x, nw = rw.y - rw.x;
        const long count = (long)N * nd * nh * nw;
        for (long l = lid; l < count; l += WRW_WG) {
            const int ow = rw.x + (int)(l % nw);
            long q = l / nw;
            const int oh = rh.x + (int)(q % nh); q /= nh;
            const int od = rd.x + (int)(q % nd);
            const int n = (int)(q / nd);
            const int id = od * SD - PD + kd * DD;
            const int ih = oh * SH - PH + kh * DH;
            const int iw = ow * SW - PW + kw * DW;
            const long xi = nhwc ? ((((long)n * D + id) * H + ih) * W + iw) * C + c
                                 : ((((long)n * C + c) * D + id) * H + ih) * W + iw;
            const long yi = nhwc ? ((((long)n * OD + od) * OH + oh) * OW + ow) * K + k
                                 : ((((long)n * K + k) * OD + od) * OH + oh) * OW + ow;
            acc += x[xi] * dy[yi];
        }
        if (dy_nonfinite[0] != 0) {
            const long oplane = (long)OD * OH * OW;
            acc = nhwc ? add_padding_grads(acc, dy + k, oplane * K, (long)OH * OW * K,
                                           (long)OW * K, K, N, OD, OH, OW, rd, rh, rw, lid,
                                           WRW_WG)
                       : add_padding_grads(acc, dy + (long)k * oplane, (long)K * oplane,
                                           (long)OH * OW, OW, 1, N, OD, OH, OW, rd, rh, rw,
                                           lid, WRW_WG);
        }
    }
    part[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = WRW_WG / 2; step > 0; step >>= 1) {
        if (lid < step) part[lid] += part[lid + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0 && e < total) dw[e] = part[0];
}
