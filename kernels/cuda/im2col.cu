// im2col / col2im for the GEMM algorithms (the matrix products run in cuBLAS through
// cupy.matmul) and the epilogue pass shared by the GEMM and cuDNN paths.
//
//   cf_im2col    one thread per matrix entry of a tile (layouts: see im2col.cuh)
//   cf_col2im    one thread per input-gradient element of the tile's images (gather form,
//                no atomics); writes or adds to an accumulator-typed buffer
//   cf_bias_activation  y = activation(y + bias per channel) in one pass, in the
//                       accumulator type (results written by cuBLAS or an unfused cuDNN plan)
#include "im2col.cuh"

extern "C" __global__ void cf_im2col(const cf_t* x, cf_t* col, int n0, int count, cf_i64 p0,
                                     cf_i64 width, int wide, CF_GEOM_PARAMS) {
    const cf_geom g = CF_GEOM_MAKE;
    CF_FOR_EACH(index, cf_col_total(g, count, width)) {
        cf_im2col_element(x, col, g, n0, count, p0, width, wide, index);
    }
}

extern "C" __global__ void cf_col2im(const cf_t* col, cf_acc* dx, int count, cf_i64 p0,
                                     cf_i64 width, int accumulate, CF_GEOM_PARAMS) {
    const cf_geom g = CF_GEOM_MAKE;
    CF_FOR_EACH(index, (cf_i64)count * g.c * cf_in_plane(g)) {
        cf_col2im_element(col, dx, g, p0, width, accumulate, index);
    }
}

extern "C" __global__ void cf_bias_activation(cf_t* y, const cf_t* bias, int ep_mode,
                                              int channels, cf_i64 inner, cf_i64 total) {
    CF_FOR_EACH(index, total) {
        cf_bias_activation_element(y, bias, ep_mode, channels, inner, index);
    }
}
