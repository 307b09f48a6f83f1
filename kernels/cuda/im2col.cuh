// Per-element work of im2col (gather the input patches of a tile of output positions into a
// matrix, so cuBLAS computes the convolution as a matrix product), col2im (the adjoint: sum
// the patches back into the input gradient) and the epilogue pass (bias and activation in one
// pass over a result cuBLAS or cuDNN wrote).
//
// A tile covers images n0 .. n0 + count - 1 and output positions p0 .. p0 + width - 1 of each
// (position = (od * oh + oh_) * ow + ow_). Rows of the matrix are (c, tap), c major:
// r = c * taps + tap. Two layouts:
//   batched (wide == 0): col[image][r][position]  -- one matrix per image (forward, data grad)
//   wide    (wide == 1): col[r][image][position]  -- one matrix for the tile (weight grad)
#pragma once
#include "common.cuh"

CF_HD cf_acc cf_im2col_at(const cf_t* x, const cf_geom& g, int n0, int count, cf_i64 p0,
                          cf_i64 width, int wide, cf_i64 index) {
    const int taps = cf_taps(g);
    const cf_i64 rows = (cf_i64)g.c * taps;
    const cf_i64 column = index % width;
    cf_i64 row;
    int image;
    if (wide) {
        image = (int)((index / width) % count);
        row = index / width / count;
    } else {
        row = (index / width) % rows;
        image = (int)(index / width / rows);
    }
    const int c = (int)(row / taps);
    int td, th, tw, od, oh, ow;
    cf_split_tap(g, (int)(row % taps), &td, &th, &tw);
    cf_split_out(g, p0 + column, &od, &oh, &ow);
    const int id = cf_in_coord(od, td, g.sd, g.pd, g.dd, g.id);
    const int ih = cf_in_coord(oh, th, g.sh, g.ph, g.dh, g.ih);
    const int iw = cf_in_coord(ow, tw, g.sw, g.pw, g.dw, g.iw);
    if (id < 0 || ih < 0 || iw < 0) {
        return 0;
    }
    return cf_load(x, cf_x_offset(g, n0 + image, c, id, ih, iw));
}

// The contribution of a batched-layout tile to dx[index], index over the tile's images
// (image - n0, c, id, ih, iw): the sum of the matrix entries that im2col would have read
// from that input element.
CF_HD cf_acc cf_col2im_at(const cf_t* col, const cf_geom& g, cf_i64 p0, cf_i64 width,
                          cf_i64 index) {
    const cf_i64 plane = cf_in_plane(g);
    const cf_i64 position = index % plane;
    const int c = (int)((index / plane) % g.c);
    const int image = (int)(index / plane / g.c);
    int id, ih, iw;
    cf_split_in(g, position, &id, &ih, &iw);
    const int taps = cf_taps(g);
    const cf_i64 rows = (cf_i64)g.c * taps;
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
                const cf_i64 column = ((cf_i64)od * g.oh + oh) * g.ow + ow - p0;
                if (column < 0 || column >= width) continue;
                const cf_i64 row = (cf_i64)c * taps + (td * g.kh + th) * g.kw + tw;
                acc += cf_load(col, ((cf_i64)image * rows + row) * width + column);
            }
        }
    }
    return acc;
}

// The epilogue of y[index] for y of shape (n, channels, inner) (inner = 1: channels-last),
// in the accumulator type.
CF_HD cf_acc cf_bias_activation_at(const cf_t* y, const cf_t* bias, int ep_mode, int channels,
                                   cf_i64 inner, cf_i64 index) {
    return cf_epilogue(cf_load(y, index), bias, ep_mode, (index / inner) % channels);
}

// The kernels' per-element statements (shared with the host tests).
CF_HD cf_i64 cf_col_total(const cf_geom& g, int count, cf_i64 width) {
    return (cf_i64)count * g.c * cf_taps(g) * width;
}

CF_HD void cf_im2col_element(const cf_t* x, cf_t* col, const cf_geom& g, int n0, int count,
                             cf_i64 p0, cf_i64 width, int wide, cf_i64 index) {
    cf_store(col, index, cf_im2col_at(x, g, n0, count, p0, width, wide, index));
}

CF_HD void cf_col2im_element(const cf_t* col, cf_acc* dx, const cf_geom& g, cf_i64 p0,
                             cf_i64 width, int accumulate, cf_i64 index) {
    const cf_acc value = cf_col2im_at(col, g, p0, width, index);
    dx[index] = accumulate ? dx[index] + value : value;
}

CF_HD void cf_bias_activation_element(cf_t* y, const cf_t* bias, int ep_mode, int channels,
                                      cf_i64 inner, cf_i64 index) {
    cf_store(y, index, cf_bias_activation_at(y, bias, ep_mode, channels, inner, index));
}
