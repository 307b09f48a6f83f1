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

/* G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] */
__kernel void wino_filter(__global const T* restrict w, __global T* restrict U, const int K,
                          const int CG)
{
    const long gid = get_global_id(0);
    if (gid >= (long)K * CG) return;
    const __global T* g = w + gid * 9;
    T t[4][3];
    for (int j = 0; j < 3; ++j) {
        const T g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
        t[0][j] = g0;
        t[1][j] = (T)0.5 * (g0 + g1 + g2);
        t[2][j] = (T)0.5 * (g0 - g1 + g2);
        t[3][j] = g2;
    }
    const long stride = (long)K * CG;
    for (int i = 0; i < 4; ++i) {
        const T a = t[i][0], b = t[i][1], c = t[i][2];
        U[(i * 4 + 0) * stride + gid] = a;
        U[(i * 4 + 1) * stride + gid] = (T)0.5 * (a + b + c);
        U[(i * 4 + 2) * stride + gid] = (T)0.5 * (a - b + c);
        U[(i * 4 + 3) * stride + gid] = c;
    }
}

/* B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]; tiles of images n0 .. n0 + nimg - 1. */
__kernel void wino_input(__global const T* restrict x, __global T* restrict V, GEOM_PARAMS,
                         const int n0, const int nimg, const int tiles_h, const int tiles_w)
{
    const int t = get_global_id(0);
    const int c = get_global_id(1);
    const int T_ = nimg * tiles_h * tiles_w;
    if (t >= T_ || c >= C) return;
    const int tw = t % tiles_w, th = (t / tiles_w) % tiles_h, img = t / (tiles_w * tiles_h);
    const int ih0 = 2 * th - PH, iw0 = 2 * tw - PW;
    const __global T* xp = x + ((long)(n0 + img) * C + c) * H * W;
    T d[4][4];
    for (int i = 0; i < 4; ++i) {
        const int ih = ih0 + i;
        for (int j = 0; j < 4; ++j) {
            const int iw = iw0 + j;
            d[i][j] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? xp[(long)ih * W + iw] : (T)0;
        }
    }
    T s[4][4];
    for (int j = 0; j < 4; ++j) {
        s[0][j] = d[0][j] - d[2][j];
        s[1][j] = d[1][j] + d[2][j];
        s[2][j] = d[2][j] - d[1][j];
        s[3][j] = d[1][j] - d[3][j];
    }
    const long stride = (long)C * T_;
    __global T* v = V + (long)c * T_ + t;
    for (int i = 0; i < 4; ++i) {
        v[(i * 4 + 0) * stride] = s[i][0] - s[i][2];
        v[(i * 4 + 1) * stride] = s[i][1] + s[i][2];
        v[(i * 4 + 2) * stride] = s[i][2] - s[i][1];
        v[(i * 4 + 3) * stride] = s[i][1] - s[i][3];
    }
}

/* A^T = [1 1 1 0; 0 1 -1 -1]; writes the tile's outputs that exist (OH, OW may be odd). */
__kernel void wino_output(__global const T* restrict Mb, __global T* restrict y,
                          __global const T* restrict x, __global const T* restrict w,
                          GEOM_PARAMS, const int n0, const int nimg, const int tiles_h,
                          const int tiles_w)
{
    const int t = get_global_id(0);
    const int k = get_global_id(1);
    const int T_ = nimg * tiles_h * tiles_w;
    if (t >= T_ || k >= K) return;
    const int tw = t % tiles_w, th = (t / tiles_w) % tiles_h, img = t / (tiles_w * tiles_h);
    const long stride = (long)K * T_;
    T m[16];
    int finite = 1;
    for (int xi = 0; xi < 16; ++xi) {
        m[xi] = Mb[xi * stride + (long)k * T_ + t];
        finite &= isfinite(m[xi]);
    }
    T out[2][2];
    if (finite) {
        T r[2][4];
        for (int j = 0; j < 4; ++j) {
            r[0][j] = m[j] + m[4 + j] + m[8 + j];
            r[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
        }
        for (int i = 0; i < 2; ++i) {
            out[i][0] = r[i][0] + r[i][1] + r[i][2];
            out[i][1] = r[i][1] - r[i][2] - r[i][3];
        }
    } else {
        const int g = k / (K / G);
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) {
                T acc = 0;
                const int oh = 2 * th + i, ow = 2 * tw + j;
                for (int c = 0; c < CG; ++c) {
                    const __global T* xp = x + ((long)(n0 + img) * C + g * CG + c) * H * W;
                    const __global T* wp = w + ((long)k * CG + c) * 9;
                    for (int kh = 0; kh < 3; ++kh) {
                        const int ih = oh - PH + kh;
                        if (ih < 0 || ih >= H) continue;
                        for (int kw = 0; kw < 3; ++kw) {
                            const int iw = ow - PW + kw;
                            if (iw >= 0 && iw < W) acc += xp[(long)ih * W + iw] * wp[kh * 3 + kw];
                        }
                    }
                }
                out[i][j] = acc;
            }
    }
    __global T* yp = y + ((long)(n0 + img) * K + k) * OH * OW;
    for (int i = 0; i < 2; ++i) {
        const int oh = 2 * th + i;
        if (oh >= OH) continue;
        for (int j = 0; j < 2; ++j) {
            const int ow = 2 * tw + j;
            if (ow < OW) yp[(long)oh * OW + ow] = out[i][j];
        }
    }
}
