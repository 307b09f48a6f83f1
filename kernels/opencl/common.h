/* Shared definitions of convflow's OpenCL kernels (prepended to each program's source).
 *
 * T is the compute type: float, or double with -DUSE_DOUBLE (needs cl_khr_fp64). float16
 * and bfloat16 tensors are converted to float on the device first (convert.cl), so no
 * kernel needs cl_khr_fp16.
 *
 * Every convolution kernel sees 5-D tensors (N, C, D, H, W): 1-D and 2-D problems are lifted
 * with singleton leading spatial dims. The geometry is passed at run time (GEOM_PARAMS), so
 * one build serves every problem shape; -D macros only fix what shapes the code (dtype, tile
 * sizes, work-group sizes).
 */
#ifdef USE_DOUBLE
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double T;
#else
typedef float T;
#endif

/* x: (N, C, D, H, W); w: (K, CG, KD, KH, KW) with CG = C / G; y: (N, K, OD, OH, OW).
 * S* stride, P* low zero padding (any sign: a negative value crops), D* dilation. */
#define GEOM_PARAMS \
    const int N, const int C, const int D, const int H, const int W, \
    const int K, const int CG, const int KD, const int KH, const int KW, \
    const int OD, const int OH, const int OW, \
    const int SD, const int SH, const int SW, \
    const int PD, const int PH, const int PW, \
    const int DD, const int DH, const int DW, const int G

#define GEOM_ARGS N, C, D, H, W, K, CG, KD, KH, KW, OD, OH, OW, SD, SH, SW, PD, PH, PW, DD, DH, DW, G

/* The fused epilogue of the kernels that write a forward or data-gradient result: as a
 * value v of channel ch is stored it becomes activation(v + bias[ep_base + ch]). ep_mode:
 * bit 0 = there is a bias, bits 1-3 = the activation (0 none, 1 relu, 2 relu6, 3 silu,
 * 4 gelu: convflow/activations.py ACTIVATION_CODES), bit 4 = the channel follows the
 * column index of a GEMM instead of its row index. Batched GEMMs add ep_b1 per batch b1.
 * IEEE semantics as in PyTorch: NaN stays NaN, relu(-inf) = 0, silu(x) = x * sigmoid(x) and
 * gelu(x) = x * Phi(x) (exact form; Phi(x) = erfc(-x / sqrt 2) / 2, which keeps its relative
 * accuracy for negative x where 1 + erf(x / sqrt 2) cancels), so silu(-inf) = gelu(-inf) =
 * -inf * 0 = NaN. */
#define EPILOGUE_PARAMS \
    __global const T* ep_bias, const long ep_base, const long ep_b1, const int ep_mode
#define EP_BIAS 1
#define EP_BY_COLUMN 16
#define EP_ACTIVATION(mode) (((mode) >> 1) & 7)

#ifdef USE_DOUBLE
#define SQRT1_2 0.70710678118654752440
#else
#define SQRT1_2 0.70710678118654752440f
#endif

/* activation(v) for a scalar or vector type: a comparison of vectors selects per lane. */
#define DEFINE_ACTIVATE(NAME, TYPE)                                                         \
inline TYPE NAME(const TYPE v, const int act) {                                             \
    if (act == 1) return v < (TYPE)(0) ? (TYPE)(0) : v;                                     \
    if (act == 2) return v < (TYPE)(0) ? (TYPE)(0) : (v > (TYPE)(6) ? (TYPE)(6) : v);       \
    if (act == 3) return v / ((TYPE)(1) + exp(-v));                                         \
    if (act == 4) return (TYPE)(0.5) * v * erfc(-v * (TYPE)(SQRT1_2));                      \
    return v;                                                                               \
}
DEFINE_ACTIVATE(activate, T)

inline T epilogue(T v, __global const T* bias, const long channel, const int mode) {
    if (mode & EP_BIAS) v += bias[channel];
    return activate(v, EP_ACTIVATION(mode));
}

/* The input coordinate that output coordinate o reads through tap t, or -1 in the padding
 * (the same as cf_in_coord in kernels/cuda/common.cuh). */
inline int in_coord(int o, int t, int stride, int pad, int dil, int size) {
    const int i = o * stride - pad + t * dil;
    return (i >= 0 && i < size) ? i : -1;
}

/* The output coordinate that reads input coordinate i through tap t, or -1 if none does: the
 * gather form of the transposed pass (cf_out_coord in kernels/cuda/common.cuh). */
inline int out_coord(int i, int t, int stride, int pad, int dil, int size) {
    const int q = i + pad - t * dil;
    if (q < 0 || q % stride) return -1;
    return q / stride < size ? q / stride : -1;
}

/* Floor division for any signs of a (b > 0). */
inline int floor_div(int a, int b) {
    const int q = a / b;
    return (q * b > a) ? q - 1 : q;
}

/* Outputs o in [lo, hi) whose input index o * stride - pad + tap * dil lies in [0, size). */
inline int2 valid_outputs(int pad, int tap, int dil, int stride, int size, int n_out) {
    const int offset = pad - tap * dil;          /* input = o * stride - offset */
    int lo = -floor_div(-offset, stride);        /* ceil(offset / stride) */
    int hi = floor_div(size - 1 + offset, stride) + 1;
    lo = max(lo, 0);
    hi = min(hi, n_out);
    return (int2)(lo, max(hi, lo));
}
