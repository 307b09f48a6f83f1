/* CPU-style GEMMs: no local memory, no barriers, explicit vectors.
 *
 * On CPU OpenCL implementations (PoCL) each work-item is a loop iteration of one thread, so
 * the fast shape is the one a BLAS micro-kernel has: a small block of C in vector registers,
 * A read from packed panels (util.cl pack_panels: [m / R][k][m % R]) as one stream, B
 * read as contiguous vectors. Columns j run over (image, position) pairs: image img,
 * position p < pcount, so the batch folds into the columns without copies:
 *   B(k, j) = B[b0 + img*b_img + k*ldb + p]      C(m, j) = C[c0 + img*c_img + m*ldc + p]
 * A batch index b = b1 * nb2 + b2 (e.g. group, Winograd element) offsets every operand.
 * accumulate: C += A B instead of C = A B. C is written through the epilogue (common.h;
 * callers that accumulate pass none): the channel is the row m (vgemm_nt: or, with
 * EP_BY_COLUMN, the column j % cp), plus ep_b1 per batch b1.
 */
#ifndef VW
#error "VW is a -D value from the host: kernel_constants() in convflow/backends/opencl/solvers.py"
#endif
#ifndef NT_VW
#error "NT_VW is a -D value from the host: kernel_constants() in convflow/backends/opencl/solvers.py"
#endif
#define CF_CAT_(a, b) a##b
#define CF_CAT(a, b) CF_CAT_(a, b)
#ifdef USE_DOUBLE
typedef CF_CAT(double, VW) VT;
typedef CF_CAT(double, NT_VW) VT_NT;
#else
typedef CF_CAT(float, VW) VT;
typedef CF_CAT(float, NT_VW) VT_NT;
#endif
#define VLOAD CF_CAT(vload, VW)
#define VSTORE CF_CAT(vstore, VW)
#define VLOAD_NT CF_CAT(vload, NT_VW)
#define VSTORE_NT CF_CAT(vstore, NT_VW)
DEFINE_ACTIVATE(activate_v, VT)

#ifndef MR
#error "MR is a -D value from the host: kernel_constants() in convflow/backends/opencl/solvers.py"
#endif
#ifndef NRJ
#error "NRJ is a -D value from the host: kernel_constants() in convflow/backends/opencl/solvers.py"
#endif
#ifndef NT_RM
#error "NT_RM is a -D value from the host: kernel_constants() in convflow/backends/opencl/solvers.py"
#endif
#ifndef NT_RJ
#error "NT_RJ is a -D value from the host: kernel_constants() in convflow/backends/opencl/solvers.py"
#endif

/* Vectors along the columns: a work-item computes MR rows x VW consecutive positions of
 * one image; A packed in panels of MR rows. Best when positions per image are many. */
__kernel void vgemm_n(const int M, const int Kd, const int nimg, const int pcount,
                      __global const T* restrict Ap, const long ap0, const long ap_b1,
                      const long ap_b2,
                      __global const T* restrict B, const long b0, const long b_img,
                      const int ldb, const long b_b1, const long b_b2,
                      __global T* restrict Cm, const long c0, const long c_img, const int ldc,
                      const long c_b1, const long c_b2, const int nb2, const int accumulate,
                      EPILOGUE_PARAMS)
{
    const int blocks = (pcount + VW - 1) / VW;
    const int mb = get_global_id(0);            /* row panels vary fastest: a B strip is */
    const int jb = get_global_id(1);            /* reused by every panel while in cache */
    const int bid = get_global_id(2);
    if (jb >= nimg * blocks || mb * MR >= M) return;
    const int b1 = bid / nb2, b2 = bid - (bid / nb2) * nb2;
    const int img = jb / blocks;
    const int p0 = (jb - img * blocks) * VW;
    const __global T* a = Ap + ap0 + b1 * ap_b1 + b2 * ap_b2 + (long)mb * Kd * MR;
    const __global T* b = B + b0 + b1 * b_b1 + b2 * b_b2 + img * b_img + p0;
    VT acc[MR];
#pragma unroll
    for (int i = 0; i < MR; ++i) acc[i] = (VT)(0);
    const int nvalid = min(VW, pcount - p0);
    if (nvalid == VW) {
#pragma unroll 4
        for (int k = 0; k < Kd; ++k) {
            const VT bv = VLOAD(0, b);
#pragma unroll
            for (int i = 0; i < MR; ++i) acc[i] = fma((VT)(a[i]), bv, acc[i]);
            a += MR;
            b += ldb;
        }
    } else {
        for (int k = 0; k < Kd; ++k) {
            T tmp[VW];
            for (int v = 0; v < VW; ++v) tmp[v] = v < nvalid ? b[v] : (T)0;
            const VT bv = VLOAD(0, tmp);
#pragma unroll
            for (int i = 0; i < MR; ++i) acc[i] = fma((VT)(a[i]), bv, acc[i]);
            a += MR;
            b += ldb;
        }
    }
    __global T* c = Cm + c0 + b1 * c_b1 + b2 * c_b2 + img * c_img + p0 + (long)mb * MR * ldc;
    const int rows = min(MR, M - mb * MR);
    const long ch0 = ep_base + b1 * ep_b1 + mb * MR;
#pragma unroll
    for (int i = 0; i < MR; ++i) {
        if (i >= rows) break;
        __global T* row = c + (long)i * ldc;
        VT out = acc[i];
        if (ep_mode) {
            if (ep_mode & EP_BIAS) out += (VT)(ep_bias[ch0 + i]);
            out = activate_v(out, EP_ACTIVATION(ep_mode));
        }
        if (nvalid == VW) {
            if (accumulate) VSTORE(VLOAD(0, row) + out, 0, row);
            else VSTORE(out, 0, row);
        } else {
            T tmp[VW];
            VSTORE(out, 0, tmp);
            for (int v = 0; v < nvalid; ++v) row[v] = accumulate ? row[v] + tmp[v] : tmp[v];
        }
    }
}

/* Vectors along the rows: a work-item computes VW rows x NRJ columns (which may straddle
 * images); A packed in panels of VW rows. Best when positions per image are few (7x7), and
 * for channels-last tensors, whose channels (the rows) are the contiguous index: column
 * position p of an image is b_sj (B) and c_sj (C) elements from position p - 1, so
 *   B(k, j) = B[b0 + img*b_img + k*ldb + p*b_sj]   C(m, j) = C[c0 + img*c_img + m*ldc + p*c_sj]
 * (b_sj = c_sj = 1 for channels-first tensors). */
__kernel void vgemm_m(const int M, const int Kd, const int nimg, const int pcount,
                      __global const T* restrict Ap, const long ap0, const long ap_b1,
                      const long ap_b2,
                      __global const T* restrict B, const long b0, const long b_img,
                      const int ldb, const int b_sj, const long b_b1, const long b_b2,
                      __global T* restrict Cm, const long c0, const long c_img, const int ldc,
                      const int c_sj, const long c_b1, const long c_b2, const int nb2,
                      const int accumulate, EPILOGUE_PARAMS)
{
    const int mb = get_global_id(0);
    const int jb = get_global_id(1);
    const int bid = get_global_id(2);
    const int ncols = nimg * pcount;
    if (jb * NRJ >= ncols || mb * VW >= M) return;
    const int b1 = bid / nb2, b2 = bid - (bid / nb2) * nb2;
    const __global T* a = Ap + ap0 + b1 * ap_b1 + b2 * ap_b2 + (long)mb * Kd * VW;
    const __global T* b = B + b0 + b1 * b_b1 + b2 * b_b2;
    long off[NRJ];
#pragma unroll
    for (int i = 0; i < NRJ; ++i) {
        const int j = min(jb * NRJ + i, ncols - 1);
        const int img = j / pcount;
        off[i] = img * b_img + (long)(j - img * pcount) * b_sj;
    }
    VT acc[NRJ];
#pragma unroll
    for (int i = 0; i < NRJ; ++i) acc[i] = (VT)(0);
#pragma unroll 2
    for (int k = 0; k < Kd; ++k) {
        const VT av = VLOAD(0, a);
#pragma unroll
        for (int i = 0; i < NRJ; ++i) acc[i] = fma(av, (VT)(b[off[i]]), acc[i]);
        a += VW;
        b += ldb;
    }
    __global T* c = Cm + c0 + b1 * c_b1 + b2 * c_b2;
    const int rows = min(VW, M - mb * VW);
    VT bias = (VT)(0);
    if (ep_mode & EP_BIAS) {
        const long ch0 = ep_base + b1 * ep_b1 + mb * VW;
        T tmp[VW];
        for (int r = 0; r < VW; ++r) tmp[r] = r < rows ? ep_bias[ch0 + r] : (T)0;
        bias = VLOAD(0, tmp);
    }
    for (int i = 0; i < NRJ; ++i) {
        const int j = jb * NRJ + i;
        if (j >= ncols) break;
        const int img = j / pcount;
        __global T* col = c + img * c_img + (long)(j - img * pcount) * c_sj + (long)mb * VW * ldc;
        T tmp[VW];
        if (ep_mode) acc[i] = activate_v(acc[i] + bias, EP_ACTIVATION(ep_mode));
        VSTORE(acc[i], 0, tmp);
        for (int r = 0; r < rows; ++r) {
            __global T* p = col + (long)r * ldc;
            *p = accumulate ? *p + tmp[r] : tmp[r];
        }
    }
}

/* Reductions along contiguous memory:
 *   C(m, j) (+)= sum_{img < nimg, p < pcount} A[a0 + img*a_img + m*lda + p]
 *                                             * B[b0 + img*b_img + j*ldb + p]
 * with C(m, j) at C[c0 + (j / cp)*c_img + m*ldc + j % cp]. Serves the weight gradient
 * (reduction over images and positions) and, with B transposed (im2col's transposed
 * layout), forward and data passes whose images have few positions: the weights are then
 * read as they are, without packing. A work-item computes NT_RM x NT_RJ outputs, each a
 * vector of partial sums over p, reduced once at the end (a fixed order: deterministic). */
__kernel void vgemm_nt(const int M, const int Nj, const int nimg, const int pcount,
                       __global const T* restrict A, const long a0, const long a_img,
                       const int lda, const long a_b1, const long a_b2,
                       __global const T* restrict B, const long b0, const long b_img,
                       const int ldb, const long b_b1, const long b_b2,
                       __global T* restrict Cm, const long c0, const long c_img, const int cp,
                       const int ldc, const long c_b1, const long c_b2, const int nb2,
                       const int accumulate, EPILOGUE_PARAMS)
{
    const int jb = get_global_id(0);
    const int mb = get_global_id(1);
    const int bid = get_global_id(2);
    if (jb * NT_RJ >= Nj || mb * NT_RM >= M) return;
    const int b1 = bid / nb2, b2 = bid - (bid / nb2) * nb2;
    const __global T* a = A + a0 + b1 * a_b1 + b2 * a_b2;
    const __global T* b = B + b0 + b1 * b_b1 + b2 * b_b2;
    int rows[NT_RM], cols[NT_RJ];
#pragma unroll
    for (int i = 0; i < NT_RM; ++i) rows[i] = min(mb * NT_RM + i, M - 1);
#pragma unroll
    for (int j = 0; j < NT_RJ; ++j) cols[j] = min(jb * NT_RJ + j, Nj - 1);
    VT_NT acc[NT_RM][NT_RJ];
    T tail[NT_RM][NT_RJ];
#pragma unroll
    for (int i = 0; i < NT_RM; ++i)
#pragma unroll
        for (int j = 0; j < NT_RJ; ++j) {
            acc[i][j] = (VT_NT)(0);
            tail[i][j] = 0;
        }
    const int pvec = pcount - pcount % NT_VW;
    for (int img = 0; img < nimg; ++img) {
        const __global T* ai[NT_RM];
        const __global T* bj[NT_RJ];
#pragma unroll
        for (int i = 0; i < NT_RM; ++i) ai[i] = a + img * a_img + (long)rows[i] * lda;
#pragma unroll
        for (int j = 0; j < NT_RJ; ++j) bj[j] = b + img * b_img + (long)cols[j] * ldb;
        for (int p = 0; p < pvec; p += NT_VW) {
            VT_NT av[NT_RM], bv[NT_RJ];
#pragma unroll
            for (int i = 0; i < NT_RM; ++i) av[i] = VLOAD_NT(0, ai[i] + p);
#pragma unroll
            for (int j = 0; j < NT_RJ; ++j) bv[j] = VLOAD_NT(0, bj[j] + p);
#pragma unroll
            for (int i = 0; i < NT_RM; ++i)
#pragma unroll
                for (int j = 0; j < NT_RJ; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
        for (int p = pvec; p < pcount; ++p)
#pragma unroll
            for (int i = 0; i < NT_RM; ++i)
#pragma unroll
                for (int j = 0; j < NT_RJ; ++j) tail[i][j] = fma(ai[i][p], bj[j][p], tail[i][j]);
    }
    __global T* c = Cm + c0 + b1 * c_b1 + b2 * c_b2;
    for (int i = 0; i < NT_RM; ++i) {
        const int m = mb * NT_RM + i;
        if (m >= M) break;
        for (int j = 0; j < NT_RJ; ++j) {
            const int n = jb * NT_RJ + j;
            if (n >= Nj) break;
            T lanes[NT_VW];
            VSTORE_NT(acc[i][j], 0, lanes);
            T sum = tail[i][j];
            for (int v = 0; v < NT_VW; ++v) sum += lanes[v];
            __global T* p = c + (n / cp) * c_img + (long)m * ldc + n % cp;
            if (ep_mode) {
                const long channel = ep_base + b1 * ep_b1
                                   + ((ep_mode & EP_BY_COLUMN) ? n % cp : m);
                sum = epilogue(sum, ep_bias, channel, ep_mode);
            }
            *p = accumulate ? *p + sum : sum;
        }
    }
}
