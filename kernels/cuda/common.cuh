// Shared definitions of convflow's CUDA kernels: storage and accumulator types, the
// convolution geometry, float16 and bfloat16 conversions, the fused epilogue (bias and
// activation) and index helpers.
//
// Every .cu file is compiled once per storage dtype with
//   -DCF_DTYPE=16 | 116 | 32 | 64   (float16, bfloat16, float32, float64; the 16-bit types
//                                     accumulate in float32)
//   -DCF_BLOCK=<n>            (threads of a reduction block, a power of two)
// and the backend inlines the headers it includes before handing the source to NVRTC, so
// CuPy's compile cache is keyed by everything that is compiled.
//
// The per-element work of every kernel is a CF_HD (host and device) function: the test
// suite compiles the headers for the host and runs them against the float64 reference,
// so the index arithmetic is checked on machines without a GPU.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define CF_HD __host__ __device__ __forceinline__
#else
#define CF_HD inline
#endif

#ifndef CF_DTYPE
#error "compile with -DCF_DTYPE=16, 116, 32 or 64"
#endif
#ifndef CF_BLOCK
#error "compile with -DCF_BLOCK=<threads per reduction block>"
#endif
#if (CF_BLOCK & (CF_BLOCK - 1)) != 0 || CF_BLOCK < 32 || CF_BLOCK > 1024
#error "CF_BLOCK must be a power of two between 32 and 1024"
#endif

typedef long long cf_i64;

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include <math.h>  // the host build; NVRTC and nvcc provide the math functions themselves
#endif

// float16 storage: the bits only, so neither cuda_fp16.h nor NVRTC's include paths are needed.
struct cf_half {
    unsigned short bits;
};

CF_HD float cf_half_to_float(unsigned short h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    unsigned int exponent = (h >> 10) & 0x1fu;
    unsigned int mantissa = h & 0x3ffu;
    unsigned int bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: shift the leading one up to the implicit bit
            int shifts = -1;
            do {
                ++shifts;
                mantissa <<= 1;
            } while ((mantissa & 0x400u) == 0);
            bits = sign | ((unsigned int)(112 - shifts) << 23) | ((mantissa & 0x3ffu) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    union {
        unsigned int u;
        float f;
    } value;
    value.u = bits;
    return value.f;
#endif
}

// float -> float16, rounding to nearest even (as numpy's astype and the cvt.rn instruction).
CF_HD unsigned short cf_float_to_half(float f) {
#if defined(__CUDA_ARCH__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    union {
        float f;
        unsigned int u;
    } value;
    value.f = f;
    unsigned int x = value.u;
    unsigned int sign = (x >> 16) & 0x8000u;
    unsigned int magnitude = x & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) {  // inf or nan
        return (unsigned short)(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u));
    }
    if (magnitude >= 0x477ff000u) {  // >= 65520 rounds to inf
        return (unsigned short)(sign | 0x7c00u);
    }
    if (magnitude < 0x38800000u) {  // below 2**-14: a subnormal half or zero
        if (magnitude < 0x33000000u) {
            return (unsigned short)sign;
        }
        unsigned int exponent = magnitude >> 23;
        unsigned int mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        unsigned int shift = 126u - exponent;
        unsigned int result = mantissa >> shift;
        unsigned int rest = mantissa & ((1u << shift) - 1u);
        unsigned int halfway = 1u << (shift - 1u);
        if (rest > halfway || (rest == halfway && (result & 1u))) {
            ++result;
        }
        return (unsigned short)(sign | result);
    }
    unsigned int result = (magnitude - 0x38000000u) >> 13;
    unsigned int rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (result & 1u))) {
        ++result;  // a carry into the exponent is the correct rounding
    }
    return (unsigned short)(sign | result);
#endif
}

// bfloat16 storage: the upper 16 bits of a float32, so widening is a shift.
struct cf_bf16 {
    unsigned short bits;
};

CF_HD float cf_bf16_to_float(unsigned short b) {
    union {
        unsigned int u;
        float f;
    } value;
    value.u = (unsigned int)b << 16;
    return value.f;
}

// float -> bfloat16, rounding to nearest even (as ml_dtypes); NaN stays a (quiet) NaN.
CF_HD unsigned short cf_float_to_bf16(float f) {
    union {
        float f;
        unsigned int u;
    } value;
    value.f = f;
    if ((value.u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((value.u >> 16) | 0x40u);
    }
    return (unsigned short)((value.u + 0x7fffu + ((value.u >> 16) & 1u)) >> 16);
}

#if CF_DTYPE == 16
typedef cf_half cf_t;
typedef float cf_acc;
CF_HD cf_acc cf_load(const cf_t* p, cf_i64 i) { return cf_half_to_float(p[i].bits); }
CF_HD void cf_store(cf_t* p, cf_i64 i, cf_acc v) { p[i].bits = cf_float_to_half(v); }
#elif CF_DTYPE == 116
typedef cf_bf16 cf_t;
typedef float cf_acc;
CF_HD cf_acc cf_load(const cf_t* p, cf_i64 i) { return cf_bf16_to_float(p[i].bits); }
CF_HD void cf_store(cf_t* p, cf_i64 i, cf_acc v) { p[i].bits = cf_float_to_bf16(v); }
#elif CF_DTYPE == 32
typedef float cf_t;
typedef float cf_acc;
CF_HD cf_acc cf_load(const cf_t* p, cf_i64 i) { return p[i]; }
CF_HD void cf_store(cf_t* p, cf_i64 i, cf_acc v) { p[i] = v; }
#elif CF_DTYPE == 64
typedef double cf_t;
typedef double cf_acc;
CF_HD cf_acc cf_load(const cf_t* p, cf_i64 i) { return p[i]; }
CF_HD void cf_store(cf_t* p, cf_i64 i, cf_acc v) { p[i] = v; }
#else
#error "CF_DTYPE must be 16, 116, 32 or 64"
#endif

// The fused epilogue of the kernels writing a forward or data-gradient result (the same as
// the opencl backend's): ep_mode bit 0 = add bias[channel], bits 1-3 = the activation (0
// none, 1 relu, 2 relu6, 3 silu, 4 gelu: convflow/activations.py ACTIVATION_CODES), in the
// accumulator type, before the one rounding to the storage type. IEEE semantics as in
// PyTorch: NaN stays NaN, relu(-inf) = 0, silu(x) = x * sigmoid(x) and gelu(x) = x * Phi(x)
// with Phi(x) = erfc(-x / sqrt 2) / 2 (exact, and accurate where 1 + erf(x / sqrt 2)
// cancels), so silu(-inf) = gelu(-inf) = -inf * 0 = NaN.
#if CF_DTYPE == 64
CF_HD cf_acc cf_exp(cf_acc v) { return exp(v); }
CF_HD cf_acc cf_erfc(cf_acc v) { return erfc(v); }
#else
CF_HD cf_acc cf_exp(cf_acc v) { return expf(v); }
CF_HD cf_acc cf_erfc(cf_acc v) { return erfcf(v); }
#endif

CF_HD cf_acc cf_activate(cf_acc v, int activation) {
    if (activation == 1) return v < (cf_acc)0 ? (cf_acc)0 : v;
    if (activation == 2) return v < (cf_acc)0 ? (cf_acc)0 : (v > (cf_acc)6 ? (cf_acc)6 : v);
    if (activation == 3) return v / ((cf_acc)1 + cf_exp(-v));
    if (activation == 4) return (cf_acc)0.5 * v * cf_erfc(-v * (cf_acc)0.70710678118654752440);
    return v;
}

CF_HD cf_acc cf_epilogue(cf_acc v, const cf_t* bias, int ep_mode, cf_i64 channel) {
    if (ep_mode & 1) v += cf_load(bias, channel);
    return cf_activate(v, (ep_mode >> 1) & 7);
}

// One plain convolution in cuDNN's geometry, 1-D and 2-D problems lifted to 3-D: input x
// (n, c, id, ih, iw), weight (k, c / groups, kd, kh, kw), output y (n, k, od, oh, ow),
// stride s*, low zero padding p*, dilation d*. The outputs listed in od/oh/ow are the only
// ones that exist (they may be fewer than the convolution of x would give).
struct cf_geom {
    int n, c, id, ih, iw;
    int k, od, oh, ow;
    int kd, kh, kw;
    int sd, sh, sw;
    int pd, ph, pw;
    int dd, dh, dw;
    int groups;
};

// Kernels take the geometry as plain int arguments, in this order (the host passes them
// from KernelGeometry.args(); a test checks the two lists agree).
#define CF_GEOM_PARAMS                                                                     \
    int g_n, int g_c, int g_id, int g_ih, int g_iw, int g_k, int g_od, int g_oh, int g_ow, \
        int g_kd, int g_kh, int g_kw, int g_sd, int g_sh, int g_sw, int g_pd, int g_ph,    \
        int g_pw, int g_dd, int g_dh, int g_dw, int g_groups
#define CF_GEOM_MAKE                                                                     \
    cf_geom {                                                                            \
        g_n, g_c, g_id, g_ih, g_iw, g_k, g_od, g_oh, g_ow, g_kd, g_kh, g_kw, g_sd, g_sh, \
            g_sw, g_pd, g_ph, g_pw, g_dd, g_dh, g_dw, g_groups                           \
    }

CF_HD int cf_in_per_group(const cf_geom& g) { return g.c / g.groups; }
CF_HD int cf_out_per_group(const cf_geom& g) { return g.k / g.groups; }
CF_HD int cf_taps(const cf_geom& g) { return g.kd * g.kh * g.kw; }
CF_HD cf_i64 cf_in_plane(const cf_geom& g) { return (cf_i64)g.id * g.ih * g.iw; }
CF_HD cf_i64 cf_out_plane(const cf_geom& g) { return (cf_i64)g.od * g.oh * g.ow; }

// The input coordinate that output coordinate o reads through tap t, or -1 in the padding.
CF_HD int cf_in_coord(int o, int t, int stride, int pad, int dilation, int size) {
    int i = o * stride - pad + t * dilation;
    return (i >= 0 && i < size) ? i : -1;
}

// The output coordinate that reads input coordinate i through tap t, or -1 if none does.
CF_HD int cf_out_coord(int i, int t, int stride, int pad, int dilation, int size) {
    int q = i + pad - t * dilation;
    if (q < 0 || q % stride != 0) {
        return -1;
    }
    q /= stride;
    return q < size ? q : -1;
}

// Non-finite values have one IEEE answer on every own algorithm, as in the opencl backend
// (README, "Guarantees"): a forward pass multiplies the zero padding by the weights,
// so a tap that reads the padding adds 0 * w, NaN for an Inf or NaN weight (as PyTorch's
// im2col path and our im2col + cuBLAS do); a weight gradient likewise adds 0 * dy for every
// output that reads the padding; a data gradient (or transposed convolution) sums only the
// products of real entries. The direct kernels skip the padding and add those products in a
// branch taken only for a non-finite value, so finite sums keep their bits. (cuDNN's
// behaviour on non-finite values is NVIDIA's; it is checked only on a GPU.)
CF_HD cf_acc cf_add_padding_product(cf_acc acc, cf_acc v) {
    return isfinite(v) ? acc : acc + (cf_acc)0 * v;
}

// acc + 0 * w[first + i] for i < count: what `count` padding taps add to a forward sum.
CF_HD cf_acc cf_add_padding_products(cf_acc acc, const cf_t* w, cf_i64 first, int count) {
    for (int i = 0; i < count; ++i) acc = cf_add_padding_product(acc, cf_load(w, first + i));
    return acc;
}

// Flat offset of input element (n, c, id, ih, iw) and output element (n, k, position).
CF_HD cf_i64 cf_x_offset(const cf_geom& g, int n, int c, int id, int ih, int iw) {
    return (((cf_i64)n * g.c + c) * g.id + id) * ((cf_i64)g.ih * g.iw) + (cf_i64)ih * g.iw + iw;
}
CF_HD cf_i64 cf_y_offset(const cf_geom& g, int n, int k, cf_i64 position) {
    return ((cf_i64)n * g.k + k) * cf_out_plane(g) + position;
}

// Split an output position into (od, oh, ow) and an input position into (id, ih, iw).
CF_HD void cf_split_out(const cf_geom& g, cf_i64 position, int* od, int* oh, int* ow) {
    *ow = (int)(position % g.ow);
    cf_i64 rest = position / g.ow;
    *oh = (int)(rest % g.oh);
    *od = (int)(rest / g.oh);
}
CF_HD void cf_split_in(const cf_geom& g, cf_i64 position, int* id, int* ih, int* iw) {
    *iw = (int)(position % g.iw);
    cf_i64 rest = position / g.iw;
    *ih = (int)(rest % g.ih);
    *id = (int)(rest / g.ih);
}
CF_HD void cf_split_tap(const cf_geom& g, int tap, int* td, int* th, int* tw) {
    *tw = tap % g.kw;
    *th = (tap / g.kw) % g.kh;
    *td = tap / (g.kw * g.kh);
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// Sum one value per thread of a CF_BLOCK-thread block in a fixed pairwise order (the same
// order on every run: no atomics). Every thread of the block must call it; thread 0 gets
// the total.
__device__ __forceinline__ cf_acc cf_block_sum(cf_acc* scratch, cf_acc value) {
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int width = CF_BLOCK / 2; width > 0; width >>= 1) {
        if ((int)threadIdx.x < width) {
            scratch[threadIdx.x] += scratch[threadIdx.x + width];
        }
        __syncthreads();
    }
    cf_acc total = scratch[0];
    __syncthreads();
    return total;
}

// A grid-stride loop over [0, total).
#define CF_FOR_EACH(index, total)                                                   \
    for (cf_i64 index = (cf_i64)blockIdx.x * blockDim.x + threadIdx.x; index < (total); \
         index += (cf_i64)gridDim.x * blockDim.x)
#endif
