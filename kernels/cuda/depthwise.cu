// Depthwise convolution kernels (groups == channels, any channel multiplier).
//
//   cf_fprop_depthwise  one thread per output element, only the taps of its one channel
//   cf_dgrad_depthwise  one thread per input-gradient element, over the multiplier's outputs
//   cf_wgrad_depthwise  one CF_BLOCK-thread block per weight element, fixed-order sum
#include "depthwise.cuh"

extern "C" __global__ void cf_fprop_depthwise(const cf_t* x, const cf_t* w, const cf_t* bias,
                                              int ep_mode, cf_t* y, CF_GEOM_PARAMS) {
    const cf_geom g = CF_GEOM_MAKE;
    CF_FOR_EACH(index, cf_y_total(g)) {
        cf_fprop_depthwise_element(x, w, bias, ep_mode, y, g, index);
    }
}

extern "C" __global__ void cf_dgrad_depthwise(const cf_t* dy, const cf_t* w, const cf_t* bias,
                                              int ep_mode, cf_t* dx, CF_GEOM_PARAMS) {
    const cf_geom g = CF_GEOM_MAKE;
    CF_FOR_EACH(index, cf_x_total(g)) {
        cf_dgrad_depthwise_element(dy, w, bias, ep_mode, dx, g, index);
    }
}

extern "C" __global__ void __launch_bounds__(CF_BLOCK)
    cf_wgrad_depthwise(const cf_t* x, const cf_t* dy, cf_t* dw, CF_GEOM_PARAMS) {
    __shared__ cf_acc scratch[CF_BLOCK];
    const cf_geom g = CF_GEOM_MAKE;
    const cf_i64 total = cf_w_total(g);  // one input channel per group: k * taps
    for (cf_i64 index = blockIdx.x; index < total; index += gridDim.x) {
        const cf_acc part = cf_wgrad_depthwise_part(x, dy, g, index, threadIdx.x, CF_BLOCK);
        const cf_acc sum = cf_block_sum(scratch, part);
        if (threadIdx.x == 0) cf_store(dw, index, sum);
    }
}
