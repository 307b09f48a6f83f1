/* GPU-style tiled direct convolution (the idea of MIOpen's ConvOclDirectFwd).
 *
 * A work-group of TW x TH work-items computes a tile of TW*OWPI x TH outputs for OCPI output
 * channels of one (image, group, output depth). For each chunk of CIC input channels and each
 * kernel depth it stages the input tile with its halo and the chunk's weights in __local
 * memory; every work-item then computes OWPI x OCPI outputs in private accumulators from
 * local memory only. The tile's size depends on stride, dilation and kernel size, which are
 * run-time values, so the host sizes the two __local buffers (in_th x in_tw per channel)
 * and falls back to another solver when they exceed the device's local memory. Outputs are
 * written through the epilogue (bias, activation; common.h).
 *
 * The staged tile holds zeros where it covers the padding, so each padding tap adds 0 * w:
 * the IEEE answer of a forward pass (common.h). A data gradient computed as the forward pass
 * of the flipped problem (pad_products == 0) must not have those products; they change a sum
 * only when it meets an Inf or NaN, so an output whose sum is not finite is recomputed by
 * direct_output without them, and finite outputs keep their bits.
 */
#ifndef TW
#define TW 16
#endif
#ifndef TH
#define TH 8
#endif
#define OWPI 2
#define OCPI 4
#define CIC 4

__kernel __attribute__((reqd_work_group_size(TW, TH, 1)))
void direct_tiled_fwd(__global const T* restrict x, __global const T* restrict w,
                      __global T* restrict y, GEOM_PARAMS, EPILOGUE_PARAMS, const int in_tw,
                      const int in_th, const int co_blocks, const int pad_products,
                      __local T* xs, __local T* ws)
{
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int tid = ly * TW + lx;
    const int ow_base = get_group_id(0) * (TW * OWPI);
    const int oh_base = get_group_id(1) * TH;
    long z = get_group_id(2);
    const int od = (int)(z % OD); z /= OD;
    const int cob = (int)(z % co_blocks); z /= co_blocks;
    const int g = (int)(z % G);
    const int n = (int)(z / G);
    const int KG = K / G;
    const int co0 = cob * OCPI;                 /* within the group */
    const int iw0 = ow_base * SW - PW;
    const int ih0 = oh_base * SH - PH;
    const int tile = in_th * in_tw;
    const int wtaps = KH * KW;

    T acc[OCPI][OWPI];
    for (int o = 0; o < OCPI; ++o)
        for (int j = 0; j < OWPI; ++j) acc[o][j] = 0;

    for (int ci0 = 0; ci0 < CG; ci0 += CIC) {
        for (int kd = 0; kd < KD; ++kd) {
            const int id = od * SD - PD + kd * DD;
            const int plane_ok = id >= 0 && id < D;
            for (int l = tid; l < CIC * tile; l += TW * TH) {
                const int cc = l / tile;
                const int rem = l - cc * tile;
                const int r = rem / in_tw;
                const int ih = ih0 + r, iw = iw0 + (rem - r * in_tw);
                const int ci = ci0 + cc;
                T v = 0;
                if (plane_ok && ci < CG && ih >= 0 && ih < H && iw >= 0 && iw < W)
                    v = x[((((long)n * C + g * CG + ci) * D + id) * H + ih) * W + iw];
                xs[l] = v;
            }
            for (int l = tid; l < OCPI * CIC * wtaps; l += TW * TH) {
                const int o = l / (CIC * wtaps);
                const int rem = l - o * (CIC * wtaps);
                const int cc = rem / wtaps;
                const int t = rem - cc * wtaps;
                const int co = co0 + o, ci = ci0 + cc;
                T v = 0;
                if (co < KG && ci < CG)
                    v = w[((((long)(g * KG + co) * CG + ci) * KD + kd) * KH) * KW + t];
                ws[l] = v;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int cc = 0; cc < CIC; ++cc) {
                for (int kh = 0; kh < KH; ++kh) {
                    const __local T* xrow = xs + cc * tile + (ly * SH + kh * DH) * in_tw;
                    for (int kw = 0; kw < KW; ++kw) {
                        T xv[OWPI];
                        for (int j = 0; j < OWPI; ++j) xv[j] = xrow[(lx + j * TW) * SW + kw * DW];
                        for (int o = 0; o < OCPI; ++o) {
                            const T wv = ws[(o * CIC + cc) * wtaps + kh * KW + kw];
                            for (int j = 0; j < OWPI; ++j) acc[o][j] = mad(wv, xv[j], acc[o][j]);
                        }
                    }
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    }
    const int oh = oh_base + ly;
    if (oh >= OH) return;
    for (int o = 0; o < OCPI; ++o) {
        const int co = co0 + o;
        if (co >= KG) break;
        __global T* out = y + ((((long)n * K + g * KG + co) * OD + od) * OH + oh) * OW;
        for (int j = 0; j < OWPI; ++j) {
            const int ow = ow_base + lx + j * TW;
            if (ow >= OW) continue;
            T v = acc[o][j];
            if (!pad_products && !isfinite(v))
                v = direct_output(x, w, GEOM_ARGS, n, g * KG + co, od, oh, ow, 0);
            out[ow] = epilogue(v, ep_bias, ep_base + g * KG + co, ep_mode);
        }
    }
}
