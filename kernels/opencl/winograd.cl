/* Winograd F(2x2, 3x3) for 2-D 3x3 convolutions with stride 1 and dilation 1 (Lavin & Gray):
 * each 2x2 output tile costs 16 multiplications per (input, output) channel pair instead of
 * 36. Three kernels around a batched GEMM over the 16 transformed elements xi:
 *   U[xi][k][c] = (G g G^T)[xi]             wino_filter
 *   V[xi][c][t] = (B^T d B)[xi]             wino_input, t = (image, tile row, tile col)
 *   M[xi][k][t] = sum_c U[xi][k][c] V[xi][c][t]    (gemm.cl or vgemm.cl, batch (xi, group))
 *   y tile      = A^T M A                   wino_output
 * The transforms add and subtract values, so an Inf input would turn into NaN; wino_output
 * therefore recomputes a tile directly whenever any of its 16 M values is not finite, and
 * NaN and Inf propagate exactly as in the direct solvers. D, KD are 1 (2-D problems). */

/* Work-items handle RUN consecutive tiles (or, for the filter, RUN input channels) so each
 * of the 16 transformed elements is written as one contiguous run: on CPU devices 16 single-
 * element streams per work-item are several times slower than 16 runs. */
#define RUN 8
#define WINO_MAX_R 16   /* the largest panel height R (vgemm_m's float16 rows) */

/* G g G^T for one 3x3 filter g (row-major) into u[16]. */
inline void filter_transform(const __global T* g, T* u)
{
    T t[4][3];
    for (int j = 0; j < 3; ++j) {
        const T g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
        t[0][j] = g0;
        t[1][j] = (T)0.5 * (g0 + g1 + g2);
        t[2][j] = (T)0.5 * (g0 - g1 + g2);
        t[3][j] = g2;
    }
    for (int i = 0; i < 4; ++i) {
        const T a = t[i][0], b = t[i][1], c = t[i][2];
        u[i * 4 + 0] = a;
        u[i * 4 + 1] = (T)0.5 * (a + b + c);
        u[i * 4 + 2] = (T)0.5 * (a - b + c);
        u[i * 4 + 3] = c;
    }
}

/* G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]. A work-item transforms RUN input channels
 * c0 .. c0 + RUN - 1 of one output-channel row block. R == 0 writes U[xi][k][c] (one row
 * k per work-item); R > 0 writes the panels vgemm.cl reads for batch b = xi * G + g,
 * [b][m / R][c][m % R] with m = k % (K / G) and Mpad rows per batch (R rows per item). */
__kernel void wino_filter(__global const T* restrict w, __global T* restrict U, const int K,
                          const int CG, const int G, const int R, const int Mpad)
{
    const int c0 = get_global_id(0) * RUN;
    const int rb = get_global_id(1);            /* row k (R == 0) or panel (R > 0) */
    const int KG = K / G;
    const int blocks = R == 0 ? K : G * (Mpad / R);
    if (c0 >= CG || rb >= blocks) return;
    const int cn = min(RUN, CG - c0);
    T u[16];
    if (R == 0) {
        const long stride = (long)K * CG;
        for (int cc = 0; cc < cn; ++cc) {
            filter_transform(w + ((long)rb * CG + c0 + cc) * 9, u);
            __global T* out = U + (long)rb * CG + c0 + cc;
            for (int xi = 0; xi < 16; ++xi) out[xi * stride] = u[xi];
        }
        return;
    }
    const int panels = Mpad / R;
    const int grp = rb / panels, mb = rb - grp * panels;
    const long stride = (long)G * Mpad * CG;    /* per xi */
    __global T* base = U + ((long)grp * Mpad + mb * R) * CG + (long)c0 * R;
    /* All RUN x R filters first, then each xi's run of cn * R values as one stream. */
    T all[16][RUN * WINO_MAX_R];
    for (int cc = 0; cc < cn; ++cc) {
        for (int r = 0; r < R; ++r) {
            const int m = mb * R + r;
            if (m < KG) {
                filter_transform(w + ((long)(grp * KG + m) * CG + c0 + cc) * 9, u);
            } else {
                for (int xi = 0; xi < 16; ++xi) u[xi] = 0;
            }
            for (int xi = 0; xi < 16; ++xi) all[xi][cc * R + r] = u[xi];
        }
    }
    for (int xi = 0; xi < 16; ++xi)
        for (int q = 0; q < cn * R; ++q) base[xi * stride + q] = all[xi][q];
}

#ifdef USE_DOUBLE
typedef double8 T8;
typedef double16 T16;
typedef long8 I8;         /* what isfinite returns for T8: -1 (true) or 0 per lane */
typedef long IS;
#else
typedef float8 T8;
typedef float16 T16;
typedef int8 I8;
typedef int IS;
#endif

/* B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. Tiles t = (img, th, tw) of images
 * n0 .. n0 + nimg - 1. A work-item transforms RUN tiles tw0 .. tw0 + RUN - 1 of one tile row
 * (img, th) of channel c as RUN-wide vectors: the 4 x (2 RUN + 2) input window is loaded
 * once and split into even and odd columns. */
__kernel void wino_input(__global const T* restrict x, __global T* restrict V, GEOM_PARAMS,
                         const int n0, const int nimg, const int tiles_h, const int tiles_w)
{
    const int tw0 = get_global_id(0) * RUN;
    const int row = get_global_id(1);           /* img * tiles_h + th */
    const int c = get_global_id(2);
    if (tw0 >= tiles_w || row >= nimg * tiles_h || c >= C) return;
    const int th = row % tiles_h, img = row / tiles_h;
    const int T_ = nimg * tiles_h * tiles_w;
    const int ih0 = 2 * th - PH, iw0 = 2 * tw0 - PW;
    const __global T* xp = x + ((long)(n0 + img) * C + c) * (H * W);
    const int inside = iw0 >= 0 && iw0 + 2 * RUN + 2 <= W;
    T8 d[4][4];
    for (int i = 0; i < 4; ++i) {
        const int ih = ih0 + i;
        T seg[2 * RUN + 2];
        if (ih < 0 || ih >= H) {
            for (int q = 0; q < 2 * RUN + 2; ++q) seg[q] = 0;
        } else if (inside) {
            for (int q = 0; q < 2 * RUN + 2; ++q) seg[q] = xp[ih * W + iw0 + q];
        } else {
            for (int q = 0; q < 2 * RUN + 2; ++q) {
                const int iw = iw0 + q;
                seg[q] = (iw >= 0 && iw < W) ? xp[ih * W + iw] : (T)0;
            }
        }
        const T16 a = vload16(0, seg), b = vload16(0, seg + 2);
        d[i][0] = a.even;
        d[i][1] = a.odd;
        d[i][2] = b.even;
        d[i][3] = b.odd;
    }
    T8 s[4][4];
    for (int j = 0; j < 4; ++j) {
        s[0][j] = d[0][j] - d[2][j];
        s[1][j] = d[1][j] + d[2][j];
        s[2][j] = d[2][j] - d[1][j];
        s[3][j] = d[1][j] - d[3][j];
    }
    T8 v[16];
    for (int i = 0; i < 4; ++i) {
        v[i * 4 + 0] = s[i][0] - s[i][2];
        v[i * 4 + 1] = s[i][1] + s[i][2];
        v[i * 4 + 2] = s[i][2] - s[i][1];
        v[i * 4 + 3] = s[i][1] - s[i][3];
    }
    const long stride = (long)C * T_;
    __global T* out = V + (long)c * T_ + row * tiles_w + tw0;
    const int tn = min(RUN, tiles_w - tw0);
    for (int xi = 0; xi < 16; ++xi) {
        if (tn == RUN) {
            vstore8(v[xi], 0, out + xi * stride);
        } else {
            T tmp[RUN];
            vstore8(v[xi], 0, tmp);
            for (int l = 0; l < tn; ++l) out[xi * stride + l] = tmp[l];
        }
    }
}

/* A^T = [1 1 1 0; 0 1 -1 -1]. A work-item finishes tiles tw0 .. tw0 + RUN - 1 of one tile
 * row of output channel k as RUN-wide vectors and writes the outputs that exist (OH, OW may
 * be odd) through the epilogue; tiles with a non-finite M value are recomputed directly
 * (direct_output: the transforms would turn an Inf into NaN), their padding taps adding
 * 0 * w if pad_products (a forward pass) and nothing otherwise (a data gradient computed as
 * the flipped problem's forward pass). */
__kernel void wino_output(__global const T* restrict Mb, __global T* restrict y,
                          __global const T* restrict x, __global const T* restrict w,
                          GEOM_PARAMS, EPILOGUE_PARAMS, const int n0, const int nimg,
                          const int tiles_h, const int tiles_w, const int pad_products)
{
    const int tw0 = get_global_id(0) * RUN;
    const int row = get_global_id(1);           /* img * tiles_h + th */
    const int k = get_global_id(2);
    if (tw0 >= tiles_w || row >= nimg * tiles_h || k >= K) return;
    const int th = row % tiles_h, img = row / tiles_h;
    const int T_ = nimg * tiles_h * tiles_w;
    const int tn = min(RUN, tiles_w - tw0);
    const long stride = (long)K * T_;
    const __global T* in = Mb + (long)k * T_ + row * tiles_w + tw0;
    T8 m[16];
    for (int xi = 0; xi < 16; ++xi) {
        if (tn == RUN) {
            m[xi] = vload8(0, in + xi * stride);
        } else {
            T tmp[RUN];
            for (int l = 0; l < RUN; ++l) tmp[l] = l < tn ? in[xi * stride + l] : (T)0;
            m[xi] = vload8(0, tmp);
        }
    }
    T8 r[2][4];
    for (int j = 0; j < 4; ++j) {
        r[0][j] = m[j] + m[4 + j] + m[8 + j];
        r[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
    }
    T outv[2][2 * RUN];
    for (int i = 0; i < 2; ++i) {
        const T8 even = r[i][0] + r[i][1] + r[i][2];
        const T8 odd = r[i][1] - r[i][2] - r[i][3];
        vstore16((T16)(even, odd).s08192a3b4c5d6e7f, 0, outv[i]);
    }
    /* Any tile whose M values are not all finite is recomputed directly. */
    I8 finite = isfinite(m[0]);
    for (int xi = 1; xi < 16; ++xi) finite &= isfinite(m[xi]);
    IS lanes[RUN];
    vstore8(finite, 0, lanes);
    for (int l = 0; l < tn; ++l) {
        if (lanes[l]) continue;
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j)
                outv[i][2 * l + j] = direct_output(x, w, GEOM_ARGS, n0 + img, k, 0, 2 * th + i,
                                                   2 * (tw0 + l) + j, pad_products);
    }
    __global T* yp = y + ((long)(n0 + img) * K + k) * (OH * OW);
    const int ow0 = 2 * tw0;
    const int cols = min(2 * RUN, OW - ow0);
    if (ep_mode) {
        for (int i = 0; i < 2; ++i)
            for (int q = 0; q < 2 * RUN; ++q)
                outv[i][q] = epilogue(outv[i][q], ep_bias, ep_base + k, ep_mode);
    }
    for (int i = 0; i < 2; ++i) {
        const int oh = 2 * th + i;
        if (oh >= OH) continue;
        __global T* dst = yp + oh * OW + ow0;
        if (cols == 2 * RUN) {
            vstore16(vload16(0, outv[i]), 0, dst);
        } else {
            for (int q = 0; q < cols; ++q) dst[q] = outv[i][q];
        }
    }
}
