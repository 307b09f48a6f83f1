/* Shared definitions of convflow's OpenCL kernels (prepended to each program's source).
 *
 * T is the compute type: float, or double with -DUSE_DOUBLE (needs cl_khr_fp64). float16
 * tensors are converted to float on the device first (convert.cl), so no kernel needs
 * cl_khr_fp16.
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
