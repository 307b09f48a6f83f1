/* GPU-style GEMM: local-memory tiles, register blocking, coalesced loads.
 *
 * C_b(m, j) (+)= sum_k A_b(m, k) B_b(k, j) for a batch b = b1 * nb2 + b2, with general
 * addressing so one kernel serves every pass without copies:
 *   A(m, k) = A[a0 + m*a_sm + (k / kp)*a_kimg + (k % kp)*a_sk]
 *   B(k, j) = B[b0 + (k / kp)*b_kimg + (k % kp)*b_sk + (j / np)*b_jimg + (j % np)*b_sj]
 *   C(m, j) = C[c0 + m*c_sm + (j / np)*c_jimg + (j % np)*c_sj]
 * (kp / np split a reduction or column index into (image, position) when it runs over
 * several images). A work-group of (TS/WPT)^2 work-items computes a TS x TS tile of C; each
 * work-item keeps WPT x WPT accumulators in registers and walks K in steps of TK, staging
 * A and B tiles in __local memory. -D TS=64 gives 256-item groups, TS=32 64-item ones.
 * C is written through the epilogue (common.h): the channel is the row m (or, with
 * EP_BY_COLUMN, the column's position j % np), plus ep_b1 per batch b1.
 */
#ifndef TS
#define TS 64
#endif
#ifndef WPT
#error "WPT is a -D value from the host: kernel_constants() in convflow/backends/opencl/solvers.py"
#endif
#define RT (TS / WPT)
#define TK 16

__kernel __attribute__((reqd_work_group_size(RT, RT, 1)))
void gemm_tiled(const int M, const int Nc, const int Kd, const int kp, const int np,
                __global const T* restrict A, const long a0, const long a_sm, const long a_kimg,
                const long a_sk, const long a_b1, const long a_b2,
                __global const T* restrict B, const long b0, const long b_kimg, const long b_sk,
                const long b_jimg, const long b_sj, const long b_b1, const long b_b2,
                __global T* restrict Cm, const long c0, const long c_sm, const long c_jimg,
                const long c_sj, const long c_b1, const long c_b2, const int nb2,
                const int accumulate, EPILOGUE_PARAMS)
{
    __local T As[TK][TS];
    __local T Bs[TK][TS];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int tid = ty * RT + tx;
    const int j_base = get_group_id(0) * TS;
    const int m_base = get_group_id(1) * TS;
    const int bid = get_group_id(2);
    const int b1 = bid / nb2, b2 = bid - (bid / nb2) * nb2;
    const __global T* a = A + a0 + b1 * a_b1 + b2 * a_b2;
    const __global T* b = B + b0 + b1 * b_b1 + b2 * b_b2;
    __global T* c = Cm + c0 + b1 * c_b1 + b2 * c_b2;

    T acc[WPT][WPT];
    for (int i = 0; i < WPT; ++i)
        for (int j = 0; j < WPT; ++j) acc[i][j] = 0;

    for (int k0 = 0; k0 < Kd; k0 += TK) {
        for (int l = tid; l < TS * TK; l += RT * RT) {
            const int t = l % TS, kk = l / TS;
            const int k = k0 + kk;
            const int m = m_base + t, j = j_base + t;
            const long kpart_a = (long)(k / kp) * a_kimg + (long)(k % kp) * a_sk;
            const long kpart_b = (long)(k / kp) * b_kimg + (long)(k % kp) * b_sk;
            As[kk][t] = (m < M && k < Kd) ? a[m * a_sm + kpart_a] : (T)0;
            Bs[kk][t] = (j < Nc && k < Kd)
                ? b[kpart_b + (long)(j / np) * b_jimg + (long)(j % np) * b_sj] : (T)0;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TK; ++kk) {
            T ar[WPT], br[WPT];
            for (int i = 0; i < WPT; ++i) ar[i] = As[kk][ty + i * RT];
            for (int j = 0; j < WPT; ++j) br[j] = Bs[kk][tx + j * RT];
            for (int i = 0; i < WPT; ++i)
                for (int j = 0; j < WPT; ++j) acc[i][j] = mad(ar[i], br[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < WPT; ++i) {
        const int m = m_base + ty + i * RT;
        if (m >= M) continue;
        for (int j = 0; j < WPT; ++j) {
            const int col = j_base + tx + j * RT;
            if (col >= Nc) continue;
            __global T* p = c + m * c_sm + (long)(col / np) * c_jimg + (long)(col % np) * c_sj;
            T v = accumulate ? *p + acc[i][j] : acc[i][j];
            if (ep_mode) {
                const long channel = ep_base + b1 * ep_b1
                                   + ((ep_mode & EP_BY_COLUMN) ? col % np : m);
                v = epilogue(v, ep_bias, channel, ep_mode);
            }
            *p = v;
        }
    }
}
