// A host build of the cupy backend's CUDA kernels, for tests on machines without a GPU.
//
// The kernels' per-element functions (kernels/cuda/*.cuh) are host-and-device code; each
// function below runs one kernel's grid-stride loop sequentially, calling exactly the
// functions the __global__ kernel calls, and the reduction kernels' fixed pairwise order
// (cf_block_sum) over CF_BLOCK lanes. Built with a C++ compiler once per dtype:
//   c++ -O1 -std=c++14 -shared -fPIC -DCF_DTYPE=<16|116|32|64> -DCF_BLOCK=<n> -I kernels/cuda
#include <vector>

#include "depthwise.cuh"
#include "direct.cuh"
#include "im2col.cuh"

namespace {

cf_geom geometry(const int* a) {
    return cf_geom{a[0],  a[1],  a[2],  a[3],  a[4],  a[5],  a[6],  a[7],  a[8],  a[9],  a[10],
                   a[11], a[12], a[13], a[14], a[15], a[16], a[17], a[18], a[19], a[20], a[21]};
}

// cf_block_sum on the host: the same pairwise order over CF_BLOCK partial sums.
cf_acc block_sum(std::vector<cf_acc>& parts) {
    for (int width = CF_BLOCK / 2; width > 0; width >>= 1) {
        for (int lane = 0; lane < width; ++lane) parts[lane] += parts[lane + width];
    }
    return parts[0];
}

}  // namespace

extern "C" {

int emu_dtype() { return CF_DTYPE; }
int emu_block() { return CF_BLOCK; }

unsigned short emu_float_to_half(float f) { return cf_float_to_half(f); }
float emu_half_to_float(unsigned short h) { return cf_half_to_float(h); }
unsigned short emu_float_to_bf16(float f) { return cf_float_to_bf16(f); }
float emu_bf16_to_float(unsigned short b) { return cf_bf16_to_float(b); }

// The epilogue's activation in the accumulator type, widened to double for ctypes.
double emu_activate(double v, int activation) { return cf_activate((cf_acc)v, activation); }

void emu_fprop_direct(const void* x, const void* w, const void* bias, int ep_mode, void* y,
                      const int* geom) {
    const cf_geom g = geometry(geom);
    for (cf_i64 i = 0; i < cf_y_total(g); ++i)
        cf_fprop_direct_element((const cf_t*)x, (const cf_t*)w, (const cf_t*)bias, ep_mode,
                                (cf_t*)y, g, i);
}

void emu_dgrad_direct(const void* dy, const void* w, const void* bias, int ep_mode, void* dx,
                      const int* geom) {
    const cf_geom g = geometry(geom);
    for (cf_i64 i = 0; i < cf_x_total(g); ++i)
        cf_dgrad_direct_element((const cf_t*)dy, (const cf_t*)w, (const cf_t*)bias, ep_mode,
                                (cf_t*)dx, g, i);
}

void emu_wgrad_direct(const void* x, const void* dy, void* dw, const int* geom) {
    const cf_geom g = geometry(geom);
    std::vector<cf_acc> parts(CF_BLOCK);
    for (cf_i64 i = 0; i < cf_w_total(g); ++i) {
        for (int lane = 0; lane < CF_BLOCK; ++lane)
            parts[lane] = cf_wgrad_direct_part((const cf_t*)x, (const cf_t*)dy, g, i, lane,
                                               CF_BLOCK);
        cf_store((cf_t*)dw, i, block_sum(parts));
    }
}

void emu_fprop_depthwise(const void* x, const void* w, const void* bias, int ep_mode, void* y,
                         const int* geom) {
    const cf_geom g = geometry(geom);
    for (cf_i64 i = 0; i < cf_y_total(g); ++i)
        cf_fprop_depthwise_element((const cf_t*)x, (const cf_t*)w, (const cf_t*)bias, ep_mode,
                                   (cf_t*)y, g, i);
}

void emu_dgrad_depthwise(const void* dy, const void* w, const void* bias, int ep_mode,
                         void* dx, const int* geom) {
    const cf_geom g = geometry(geom);
    for (cf_i64 i = 0; i < cf_x_total(g); ++i)
        cf_dgrad_depthwise_element((const cf_t*)dy, (const cf_t*)w, (const cf_t*)bias,
                                   ep_mode, (cf_t*)dx, g, i);
}

void emu_wgrad_depthwise(const void* x, const void* dy, void* dw, const int* geom) {
    const cf_geom g = geometry(geom);
    std::vector<cf_acc> parts(CF_BLOCK);
    for (cf_i64 i = 0; i < cf_w_total(g); ++i) {
        for (int lane = 0; lane < CF_BLOCK; ++lane)
            parts[lane] = cf_wgrad_depthwise_part((const cf_t*)x, (const cf_t*)dy, g, i, lane,
                                                  CF_BLOCK);
        cf_store((cf_t*)dw, i, block_sum(parts));
    }
}

void emu_im2col(const void* x, void* col, int n0, int count, long long p0, long long width,
                int wide, const int* geom) {
    const cf_geom g = geometry(geom);
    for (cf_i64 i = 0; i < cf_col_total(g, count, width); ++i)
        cf_im2col_element((const cf_t*)x, (cf_t*)col, g, n0, count, p0, width, wide, i);
}

void emu_col2im(const void* col, void* dx, int count, long long p0, long long width,
                int accumulate, const int* geom) {
    const cf_geom g = geometry(geom);
    for (cf_i64 i = 0; i < (cf_i64)count * g.c * cf_in_plane(g); ++i)
        cf_col2im_element((const cf_t*)col, (cf_acc*)dx, g, p0, width, accumulate, i);
}

void emu_bias_activation(void* y, const void* bias, int ep_mode, int channels, long long inner,
                         long long total) {
    for (cf_i64 i = 0; i < total; ++i)
        cf_bias_activation_element((cf_t*)y, (const cf_t*)bias, ep_mode, channels, inner, i);
}

}  // extern "C"
