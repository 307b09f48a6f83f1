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

/* Non-finite values have one IEEE answer on every solver (README, "What is guaranteed"): a
 * forward pass multiplies the zero padding by the weights, so a tap that reads the padding
 * adds 0 * w, which is NaN for an Inf or NaN weight (as PyTorch's im2col path does); a
 * weight gradient likewise adds 0 * dy for every output that reads the padding; a data
 * gradient (or transposed convolution) sums only the products of real entries. Kernels that
 * skip the padding instead of reading zeros add those products with the helpers below, in a
 * branch that is taken only for a non-finite value, so finite sums keep their bits. */

/* acc + 0 * v, which is acc unless v is Inf or NaN. */
inline T add_padding_product(const T acc, const T v) {
    return isfinite(v) ? acc : acc + (T)0 * v;
}

/* acc + 0 * w[i] for i < n: what n padding taps with weights w add to a forward sum. */
inline T add_padding_products(T acc, const __global T* w, const int n) {
    for (int i = 0; i < n; ++i) acc = add_padding_product(acc, w[i]);
    return acc;
}

/* y[n, k, od, oh, ow] summed tap by tap, without the epilogue: the naive solver's output and
 * the fallback of solvers whose fast path cannot give the IEEE answer for non-finite values.
 * pad_products: a tap that reads the zero padding adds 0 * w (a forward pass), or nothing (a
 * data gradient computed as the forward pass of the flipped problem, whose padding stands for
 * products that do not exist). */
inline T direct_output(const __global T* restrict x, const __global T* restrict w, GEOM_PARAMS,
                       const int n, const int k, const int od, const int oh, const int ow,
                       const int pad_products)
{
    const int g = k / (K / G);
    const long plane = (long)D * H * W;
    const int taps = KD * KH * KW;
    T acc = 0;
    for (int c = 0; c < CG; ++c) {
        const __global T* xp = x + ((long)n * C + g * CG + c) * plane;
        const __global T* wp = w + ((long)k * CG + c) * taps;
        for (int kd = 0; kd < KD; ++kd) {
            const int id = in_coord(od, kd, SD, PD, DD, D);
            if (id < 0) {
                if (pad_products) acc = add_padding_products(acc, wp + kd * KH * KW, KH * KW);
                continue;
            }
            for (int kh = 0; kh < KH; ++kh) {
                const int ih = in_coord(oh, kh, SH, PH, DH, H);
                const __global T* wrow = wp + (kd * KH + kh) * KW;
                if (ih < 0) {
                    if (pad_products) acc = add_padding_products(acc, wrow, KW);
                    continue;
                }
                for (int kw = 0; kw < KW; ++kw) {
                    const int iw = in_coord(ow, kw, SW, PW, DW, W);
                    if (iw >= 0)
                        acc += xp[((long)id * H + ih) * W + iw] * wrow[kw];
                    else if (pad_products)
                        acc = add_padding_product(acc, wrow[kw]);
                }
            }
        }
    }
    return acc;
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

/* Index i of [0, n) with the range r = [r.x, r.y) left out: the i-th element of the rest. */
inline int skip_range(const int i, const int2 r) {
    return i < r.x ? i : i + (r.y - r.x);
}

/* acc + 0 * dy[o] for every output position o that reads the zero padding through one tap,
 * whose outputs that read real entries are the box rd x rh x rw (valid_outputs): the padding
 * products of a weight gradient, which a kernel summing over the box alone leaves out. dy of
 * image n at (od, oh, ow) is dy[n * sn + od * sd + oh * sh + ow * sw]; the positions outside
 * the box (three slabs: od outside rd; od inside, oh outside rh; both inside, ow outside rw)
 * are visited as first, first + step, ... so work-items can share them. */
inline T add_padding_grads(T acc, const __global T* dy, const long sn, const long sd,
                           const long sh, const long sw, const int N, const int OD,
                           const int OH, const int OW, const int2 rd, const int2 rh,
                           const int2 rw, const long first, const long step)
{
    const int nd = rd.y - rd.x, nh = rh.y - rh.x, nw = rw.y - rw.x;
    const long slab_d = (long)(OD - nd) * OH * OW;
    const long slab_h = (long)nd * (OH - nh) * OW;
    const long per_image = slab_d + slab_h + (long)nd * nh * (OW - nw);
    for (long l = first; l < N * per_image; l += step) {
        const int n = (int)(l / per_image);
        long q = l - n * per_image;
        int od, oh, ow;
        if (q < slab_d) {
            ow = (int)(q % OW); q /= OW;
            oh = (int)(q % OH);
            od = skip_range((int)(q / OH), rd);
        } else if ((q -= slab_d) < slab_h) {
            ow = (int)(q % OW); q /= OW;
            oh = skip_range((int)(q % (OH - nh)), rh);
            od = rd.x + (int)(q / (OH - nh));
        } else {
            q -= slab_h;
            ow = skip_range((int)(q % (OW - nw)), rw); q /= OW - nw;
            oh = rh.x + (int)(q % nh);
            od = rd.x + (int)(q / nh);
        }
        acc = add_padding_product(acc, dy[n * sn + od * sd + oh * sh + ow * sw]);
    }
    return acc;
}
