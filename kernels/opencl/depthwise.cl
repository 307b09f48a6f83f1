/* Depthwise convolution (groups == C, any channel multiplier K / C): each work-item computes
 * DW_OPI consecutive outputs along W of one channel, so the input row it reads is shared by
 * its outputs and no reduction over channels is needed. The weight gradient uses
 * direct_wrw.cl. w has shape (K, 1, KD, KH, KW). Outputs are written through the epilogue
 * (bias, activation; common.h). The forward kernels skip the taps that read the padding,
 * then add their 0 * w (add_block_padding) when w has an Inf or NaN (w_nonfinite, util.cl
 * any_nonfinite).
 *
 * The *_nhwc kernels read and write channels-last tensors (N, D, H, W, C) in place: the
 * channel is work-item dimension 0, so neighbouring work-items touch neighbouring
 * addresses (coalesced on GPUs, vectorized across work-items by PoCL). */
#define DW_OPI 4

/* acc[j] + 0 * w for the taps through which output (od, oh, ow0 + j) of a work-item's block
 * reads the zero padding, wp the output channel's filter: only a non-finite weight changes
 * a sum. */
inline void add_block_padding(T acc[DW_OPI], const __global T* wp, GEOM_PARAMS, const int od,
                              const int oh, const int ow0)
{
    const int ow1 = ow0 + DW_OPI - 1;
    if (!reads_padding(od, od, SD, PD, DD, KD, D) && !reads_padding(oh, oh, SH, PH, DH, KH, H)
            && !reads_padding(ow0, ow1, SW, PW, DW, KW, W))
        return;
    for (int kd = 0; kd < KD; ++kd) {
        const int pad_d = in_coord(od, kd, SD, PD, DD, D) < 0;
        for (int kh = 0; kh < KH; ++kh) {
            const int pad_h = pad_d || in_coord(oh, kh, SH, PH, DH, H) < 0;
            for (int kw = 0; kw < KW; ++kw) {
                if (!pad_h && in_coord(ow0, kw, SW, PW, DW, W) >= 0
                        && in_coord(ow1, kw, SW, PW, DW, W) >= 0)
                    continue;                   /* no output of the block meets the padding */
                const T wv = wp[(kd * KH + kh) * KW + kw];
                if (isfinite(wv)) continue;
                for (int j = 0; j < DW_OPI; ++j)
                    if (pad_h || in_coord(ow0 + j, kw, SW, PW, DW, W) < 0) acc[j] += (T)0 * wv;
            }
        }
    }
}

__kernel void depthwise_fwd(__global const T* restrict x, __global const T* restrict w,
                            __global T* restrict y, GEOM_PARAMS, EPILOGUE_PARAMS,
                            __global const T* restrict w_nonfinite)
{
    const int ow0 = get_global_id(0) * DW_OPI;
    const int oh = get_global_id(1);
    const long z = get_global_id(2);
    if (ow0 >= OW || oh >= OH || z >= (long)N * K * OD) return;
    const int od = (int)(z % OD);
    const long r = z / OD;
    const int k = (int)(r % K);
    const int n = (int)(r / K);
    const int c = k / (K / C);
    const __global T* xp = x + ((long)n * C + c) * D * H * W;
    const __global T* wp = w + (long)k * KD * KH * KW;
    T acc[DW_OPI];
    for (int j = 0; j < DW_OPI; ++j) acc[j] = 0;
    for (int kd = 0; kd < KD; ++kd) {
        const int id = in_coord(od, kd, SD, PD, DD, D);
        if (id < 0) continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = in_coord(oh, kh, SH, PH, DH, H);
            if (ih < 0) continue;
            const __global T* row = xp + ((long)id * H + ih) * W;
            for (int kw = 0; kw < KW; ++kw) {
                const T wv = wp[(kd * KH + kh) * KW + kw];
                for (int j = 0; j < DW_OPI; ++j) {
                    const int iw = in_coord(ow0 + j, kw, SW, PW, DW, W);
                    if (iw >= 0) acc[j] += wv * row[iw];
                }
            }
        }
    }
    if (w_nonfinite[0] != 0) add_block_padding(acc, wp, GEOM_ARGS, od, oh, ow0);
    __global T* out = y + (((long)n * K + k) * OD + od) * OH * OW + (long)oh * OW;
    for (int j = 0; j < DW_OPI; ++j)
        if (ow0 + j < OW) out[ow0 + j] = epilogue(acc[j], ep_bias, ep_base + k, ep_mode);
}

/* dx[n, c, id, ih, iw] = sum over the channel's K / C outputs and the taps that read it. */
__kernel void depthwise_bwd_data(__global const T* restrict dy, __global const T* restrict w,
                                 __global T* restrict dx, GEOM_PARAMS, EPILOGUE_PARAMS)
{
    const int iw0 = get_global_id(0) * DW_OPI;
    const int ih = get_global_id(1);
    const long z = get_global_id(2);
    if (iw0 >= W || ih >= H || z >= (long)N * C * D) return;
    const int id = (int)(z % D);
    const long r = z / D;
    const int c = (int)(r % C);
    const int n = (int)(r / C);
    const int mult = K / C;
    T acc[DW_OPI];
    for (int j = 0; j < DW_OPI; ++j) acc[j] = 0;
    for (int m = 0; m < mult; ++m) {
        const int k = c * mult + m;
        const __global T* gp = dy + ((long)n * K + k) * OD * OH * OW;
        const __global T* wp = w + (long)k * KD * KH * KW;
        for (int kd = 0; kd < KD; ++kd) {
            const int od = out_coord(id, kd, SD, PD, DD, OD);
            if (od < 0) continue;
            for (int kh = 0; kh < KH; ++kh) {
                const int oh = out_coord(ih, kh, SH, PH, DH, OH);
                if (oh < 0) continue;
                const __global T* row = gp + ((long)od * OH + oh) * OW;
                for (int kw = 0; kw < KW; ++kw) {
                    const T wv = wp[(kd * KH + kh) * KW + kw];
                    for (int j = 0; j < DW_OPI; ++j) {
                        const int ow = out_coord(iw0 + j, kw, SW, PW, DW, OW);
                        if (ow >= 0) acc[j] += wv * row[ow];
                    }
                }
            }
        }
    }
    __global T* out = dx + (((long)n * C + c) * D + id) * H * W + (long)ih * W;
    for (int j = 0; j < DW_OPI; ++j)
        if (iw0 + j < W) out[iw0 + j] = epilogue(acc[j], ep_bias, ep_base + c, ep_mode);
}

/* Channels-last forward: work-item (k, block of DW_OPI outputs along W, (n, od, oh)). */
__kernel void depthwise_fwd_nhwc(__global const T* restrict x, __global const T* restrict w,
                                 __global T* restrict y, GEOM_PARAMS, EPILOGUE_PARAMS,
                                 __global const T* restrict w_nonfinite)
{
    const int k = get_global_id(0);
    const int ow0 = get_global_id(1) * DW_OPI;
    const long z = get_global_id(2);
    if (k >= K || ow0 >= OW || z >= (long)N * OD * OH) return;
    const int oh = (int)(z % OH);
    const long r = z / OH;
    const int od = (int)(r % OD);
    const int n = (int)(r / OD);
    const int c = k / (K / C);
    const __global T* wp = w + (long)k * KD * KH * KW;
    T acc[DW_OPI];
    for (int j = 0; j < DW_OPI; ++j) acc[j] = 0;
    for (int kd = 0; kd < KD; ++kd) {
        const int id = in_coord(od, kd, SD, PD, DD, D);
        if (id < 0) continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = in_coord(oh, kh, SH, PH, DH, H);
            if (ih < 0) continue;
            const __global T* row = x + (((long)n * D + id) * H + ih) * W * C + c;
            for (int kw = 0; kw < KW; ++kw) {
                const T wv = wp[(kd * KH + kh) * KW + kw];
                for (int j = 0; j < DW_OPI; ++j) {
                    const int iw = in_coord(ow0 + j, kw, SW, PW, DW, W);
                    if (iw >= 0) acc[j] += wv * row[(long)iw * C];
                }
            }
        }
    }
    if (w_nonfinite[0] != 0) add_block_padding(acc, wp, GEOM_ARGS, od, oh, ow0);
    __global T* out = y + (((long)n * OD + od) * OH + oh) * OW * K + k;
    for (int j = 0; j < DW_OPI; ++j)
        if (ow0 + j < OW)
            out[(long)(ow0 + j) * K] = epilogue(acc[j], ep_bias, ep_base + k, ep_mode);
}

/* Channels-last data gradient: work-item (c, block of DW_OPI inputs along W, (n, id, ih)). */
__kernel void depthwise_bwd_data_nhwc(__global const T* restrict dy,
                                      __global const T* restrict w, __global T* restrict dx,
                                      GEOM_PARAMS, EPILOGUE_PARAMS)
{
    const int c = get_global_id(0);
    const int iw0 = get_global_id(1) * DW_OPI;
    const long z = get_global_id(2);
    if (c >= C || iw0 >= W || z >= (long)N * D * H) return;
    const int ih = (int)(z % H);
    const long r = z / H;
    const int id = (int)(r % D);
    const int n = (int)(r / D);
    const int mult = K / C;
    T acc[DW_OPI];
    for (int j = 0; j < DW_OPI; ++j) acc[j] = 0;
    for (int m = 0; m < mult; ++m) {
        const int k = c * mult + m;
        const __global T* wp = w + (long)k * KD * KH * KW;
        for (int kd = 0; kd < KD; ++kd) {
            const int od = out_coord(id, kd, SD, PD, DD, OD);
            if (od < 0) continue;
            for (int kh = 0; kh < KH; ++kh) {
                const int oh = out_coord(ih, kh, SH, PH, DH, OH);
                if (oh < 0) continue;
                const __global T* row = dy + (((long)n * OD + od) * OH + oh) * OW * K + k;
                for (int kw = 0; kw < KW; ++kw) {
                    const T wv = wp[(kd * KH + kh) * KW + kw];
                    for (int j = 0; j < DW_OPI; ++j) {
                        const int ow = out_coord(iw0 + j, kw, SW, PW, DW, OW);
                        if (ow >= 0) acc[j] += wv * row[(long)ow * K];
                    }
                }
            }
        }
    }
    __global T* out = dx + (((long)n * D + id) * H + ih) * W * C + c;
    for (int j = 0; j < DW_OPI; ++j)
        if (iw0 + j < W)
            out[(long)(iw0 + j) * C] = epilogue(acc[j], ep_bias, ep_base + c, ep_mode);
}
