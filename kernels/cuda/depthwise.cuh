// Per-element work of the depthwise kernels: groups == c, so output channel k reads only
// input channel k / multiplier and the weight has one input channel per group. Compared with
// the direct kernels there is no channel loop and no group arithmetic in the inner loops.
#pragma once
#include "direct.cuh"

CF_HD cf_acc cf_fprop_depthwise_at(const cf_t* x, const cf_t* w, const cf_geom& g,
                                   cf_i64 index) {
    const cf_i64 positions = cf_out_plane(g);
    const cf_i64 position = index % positions;
    const int k = (int)((index / positions) % g.k);
    const int n = (int)(index / positions / g.k);
    const int ci = k / cf_out_per_group(g);
    int od, oh, ow;
    cf_split_out(g, position, &od, &oh, &ow);
    const cf_i64 w_base = (cf_i64)k * cf_taps(g);
    cf_acc acc = 0;
    for (int td = 0; td < g.kd; ++td) {
        const int id = cf_in_coord(od, td, g.sd, g.pd, g.dd, g.id);
        if (id < 0) {
            acc = cf_add_padding_products(acc, w, w_base + td * g.kh * g.kw, g.kh * g.kw);
            continue;
        }
        for (int th = 0; th < g.kh; ++th) {
            const int ih = cf_in_coord(oh, th, g.sh, g.ph, g.dh, g.ih);
            const cf_i64 w_row = w_base + (td * g.kh + th) * g.kw;
            if (ih < 0) {
                acc = cf_add_padding_products(acc, w, w_row, g.kw);
                continue;
            }
            const cf_i64 row = cf_x_offset(g, n, ci, id, ih, 0);
            for (int tw = 0; tw < g.kw; ++tw) {
                const int iw = cf_in_coord(ow, tw, g.sw, g.pw, g.dw, g.iw);
                if (iw < 0) {
                    acc = cf_add_padding_product(acc, cf_load(w, w_row + tw));
                    continue;
                }
                acc += cf_load(x, row + iw) * cf_load(w, w_row + tw);
            }
        }
    }
    return acc;
}

CF_HD cf_acc cf_dgrad_depthwise_at(const cf_t* dy, const cf_t* w, const cf_geom& g,
                                   cf_i64 index) {
    const cf_i64 plane = cf_in_plane(g);
    const cf_i64 position = index % plane;
    const int ci = (int)((index / plane) % g.c);
    const int n = (int)(index / plane / g.c);
    int id, ih, iw;
    cf_split_in(g, position, &id, &ih, &iw);
    const int multiplier = cf_out_per_group(g);
    cf_acc acc = 0;
    for (int td = 0; td < g.kd; ++td) {
        const int od = cf_out_coord(id, td, g.sd, g.pd, g.dd, g.od);
        if (od < 0) continue;
        for (int th = 0; th < g.kh; ++th) {
            const int oh = cf_out_coord(ih, th, g.sh, g.ph, g.dh, g.oh);
            if (oh < 0) continue;
            for (int tw = 0; tw < g.kw; ++tw) {
                const int ow = cf_out_coord(iw, tw, g.sw, g.pw, g.dw, g.ow);
                if (ow < 0) continue;
                const cf_i64 out_position = ((cf_i64)od * g.oh + oh) * g.ow + ow;
                const int tap = (td * g.kh + th) * g.kw + tw;
                for (int j = 0; j < multiplier; ++j) {
                    const int k = ci * multiplier + j;
                    acc += cf_load(dy, cf_y_offset(g, n, k, out_position)) *
                           cf_load(w, (cf_i64)k * cf_taps(g) + tap);
                }
            }
        }
    }
    return acc;
}

// Share of lane `lane` in dw[index], index over (k, kd, kh, kw) (the weight has one input
// channel per group).
CF_HD cf_acc cf_wgrad_depthwise_part(const cf_t* x, const cf_t* dy, const cf_geom& g,
                                     cf_i64 index, int lane, int lanes) {
    const int taps = cf_taps(g);
    const int tap = (int)(index % taps);
    const int k = (int)(index / taps);
    const int ci = k / cf_out_per_group(g);
    int td, th, tw;
    cf_split_tap(g, tap, &td, &th, &tw);
    const cf_i64 positions = cf_out_plane(g);
    const cf_i64 total = (cf_i64)g.n * positions;
    cf_acc acc = 0;
    for (cf_i64 j = lane; j < total; j += lanes) {
        const int n = (int)(j / positions);
        const cf_i64 position = j % positions;
        int od, oh, ow;
        cf_split_out(g, position, &od, &oh, &ow);
        const int id = cf_in_coord(od, td, g.sd, g.pd, g.dd, g.id);
        const int ih = cf_in_coord(oh, th, g.sh, g.ph, g.dh, g.ih);
        const int iw = cf_in_coord(ow, tw, g.sw, g.pw, g.dw, g.iw);
        const cf_acc grad = cf_load(dy, cf_y_offset(g, n, k, position));
        if (id < 0 || ih < 0 || iw < 0) {
            acc = cf_add_padding_product(acc, grad);  // 0 * dy: this output reads the padding
            continue;
        }
        acc += cf_load(x, cf_x_offset(g, n, ci, id, ih, iw)) * grad;
    }
    return acc;
}

// One output element written through the fused epilogue (bias, activation).
CF_HD void cf_fprop_depthwise_element(const cf_t* x, const cf_t* w, const cf_t* bias,
                                      int ep_mode, cf_t* y, const cf_geom& g, cf_i64 index) {
    const cf_acc acc = cf_fprop_depthwise_at(x, w, g, index);
    cf_store(y, index, cf_epilogue(acc, bias, ep_mode, (index / cf_out_plane(g)) % g.k));
}

CF_HD void cf_dgrad_depthwise_element(const cf_t* dy, const cf_t* w, const cf_t* bias,
                                      int ep_mode, cf_t* dx, const cf_geom& g, cf_i64 index) {
    const cf_acc acc = cf_dgrad_depthwise_at(dy, w, g, index);
    cf_store(dx, index, cf_epilogue(acc, bias, ep_mode, (index / cf_in_plane(g)) % g.c));
}
