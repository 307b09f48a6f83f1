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

/* Non-finite values have one IEEE answer on every solver (README, "Guarantees"): a forward
 * pass multiplies the zero padding by the weights, so a tap that reads the padding adds
 * 0 * w, which is NaN for an Inf or NaN weight (as PyTorch's im2col path does); a weight
 * gradient likewise adds 0 * dy for every output that reads the padding; a data gradient (or
 * transposed convolution) sums only the products of real entries. Kernels that skip the
 * padding instead of reading zeros add those products with the helpers below, after their
 * main loops and only when the operand the padding meets has an Inf or NaN (a flag from
 * util.cl any_nonfinite), so finite sums keep their bits and their speed. */

/* acc + 0 * v, which is acc unless v is Inf or NaN. */
inline T add_padding_product(const T acc, const T v) {
    return isfinite(v) ? acc : acc + (T)0 * v;
}

/* Whether outputs o0 .. o1 read the padding through some tap (t = 0 .. k - 1) along one dim:
 * the input coordinate grows with o and t, so the two ends decide. */
inline int reads_padding(const int o0, const int o1, const int stride, const int pad,
                         const int dil, const int k, const int size) {
    return o0 * stride - pad < 0 || o1 * stride - pad + (k - 1) * dil >= size;
}

/* acc + 0 * w for the taps of output (od, oh, ow) that read the zero padding, w running over
 * the output channel's CG filters wk[c * taps + tap]: the padding products of a forward sum
 * that skipped those taps. An output that reads no padding returns at once. */
inline T add_padding_taps(T acc, const __global T* wk, GEOM_PARAMS, const int od, const int oh,
                          const int ow)
{
    if (!reads_padding(od, od, SD, PD, DD, KD, D) && !reads_padding(oh, oh, SH, PH, DH, KH, H)
            && !reads_padding(ow, ow, SW, PW, DW, KW, W))
        return acc;
    const int taps = KD * KH * KW;
    for (int kd = 0; kd < KD; ++kd) {
        const int pad_d = in_coord(od, kd, SD, PD, DD, D) < 0;
        for (int kh = 0; kh < KH; ++kh) {
            const int pad_h = pad_d || in_coord(oh, kh, SH, PH, DH, H) < 0;
            for (int kw = 0; kw < KW; ++kw) {
                if (!pad_h && in_coord(ow, kw, SW, PW, DW, W) >= 0) continue;
                const __global T* wt = wk + (kd * KH + kh) * KW + kw;
                for (int c = 0; c < CG; ++c) acc = add_padding_product(acc, wt[(long)c * taps]);
            }
        }
    }
    return acc;
}

/* y[n, k, od, oh, ow] summed tap by tap, without the epilogue: the naive solver's output and
 * the fallback of solvers whose fast path cannot give the IEEE answer for non-finite values.
 * pad_products: the taps that read the zero padding add 0 * w (a forward pass), or nothing (a
 * data gradient computed as the forward pass of the flipped problem, whose padding stands for
 * products that do not exist). */
inline T direct_output(const __global T* restrict x, const __global T* restrict w, GEOM_PARAMS,
                       const int n, const int k, const int od, const int oh, const int ow,
                       const int pad_products)
{
    const int g = k / (K / G);
    const long plane = (long)D * H * W;
    const int taps = KD * KH * KW;
    const __global T* wk = w + (long)k * CG * taps;
    T acc = 0;
    for (int c = 0; c < CG; ++c) {
        const __global T* xp = x + ((long)n * C + g * CG + c) * plane;
        const __global T* wp = wk + c * taps;
        for (int kd = 0; kd < KD; ++kd) {
            const int id = in_coord(od, kd, SD, PD, DD, D);
            if (id < 0) continue;
            for (int kh = 0; kh < KH; ++kh) {
                const int ih = in_coord(oh, kh, SH, PH, DH, H);
                if (ih < 0) continue;
                for (int kw = 0; kw < KW; ++kw) {
                    const int iw = in_coord(ow, kw, SW, PW, DW, W);
                    if (iw < 0) continue;
                    acc += xp[((long)id * H + ih) * W + iw] * wp[(kd * KH + kh) * KW + kw];
                }
            }
        }
    }
    return pad_products ? add_padding_taps(acc, wk, GEOM_ARGS, od, oh, ow) : acc;
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

/* acc + 0 * dy[o] for every output position o that reads the zero padding through one tap,
 * whose outputs that read real entries are the box rd x rh x rw (valid_outputs): the padding
 * products of a weight gradient, which a kernel summing over the box alone leaves out. dy of
 * image n at (od, oh, ow) is dy[n * sn + od * sd + oh * sh + ow * sw]. Rows (n, od, oh) first,
 * first + step, ... are visited, so work-items can share them; a row outside the box reads the
 * padding at every column, one inside it at the columns outside rw. Not inlined: inlined in
 * direct_wrw it slowed the finite case by about 8% on PoCL (measured), though it never ran. */
__attribute__((noinline))
T add_padding_grads(T acc, const __global T* dy, const long sn, const long sd, const long sh,
                    const long sw, const int N, const int OD, const int OH, const int OW,
                    const int2 rd, const int2 rh, const int2 rw, const int first, const int step)
{
    if (rd.x == 0 && rd.y == OD && rh.x == 0 && rh.y == OH && rw.x == 0 && rw.y == OW)
        return acc;                             /* this tap never meets the padding */
    const int rows_per_image = OD * OH;
    int oh = first % OH, od = first / OH % OD, n = first / rows_per_image;
    while (n < N) {
        const int inside = od >= rd.x && od < rd.y && oh >= rh.x && oh < rh.y;
        const int lo = inside ? rw.x : OW, hi = inside ? rw.y : OW;
        const __global T* row = dy + n * sn + od * sd + oh * sh;
        for (int ow = 0; ow < lo; ++ow) acc = add_padding_product(acc, row[ow * sw]);
        for (int ow = hi; ow < OW; ++ow) acc = add_padding_product(acc, row[ow * sw]);
        oh += step;                             /* the next row of this work-item */
        if (oh >= OH) {
            od += oh / OH;
            oh %= OH;
            n += od / OD;
            od %= OD;
        }
    }
    return acc;
}
