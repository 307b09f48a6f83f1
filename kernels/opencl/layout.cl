/* Type-agnostic data movement: strided gathers into contiguous buffers and the non-zero
 * padding modes. Elements are moved as 2-, 4- or 8-byte integers, so one build serves
 * float16, float32 and float64 tensors (and needs neither cl_khr_fp16 nor cl_khr_fp64).
 *
 * Shapes are given as 5 dims (leading 1s for lower ranks) with element strides, so any
 * pyopencl view (sliced, with an offset) can be made contiguous on the device.
 */

/* dst[i] = src[offset + sum_d index_d(i) * stride_d], dst C-contiguous of shape s0..s4. */
#define COPY_STRIDED(E, NAME)                                                               \
__kernel void NAME(__global const E* restrict src, const long offset,                      \
                   const int s0, const int s1, const int s2, const int s3, const int s4,     \
                   const long t0, const long t1, const long t2, const long t3, const long t4, \
                   __global E* restrict dst)                                                \
{                                                                                           \
    const long gid = get_global_id(0);                                                      \
    const long total = (long)s0 * s1 * s2 * s3 * s4;                                        \
    if (gid >= total) return;                                                               \
    long r = gid;                                                                           \
    const long i4 = r % s4; r /= s4;                                                        \
    const long i3 = r % s3; r /= s3;                                                        \
    const long i2 = r % s2; r /= s2;                                                        \
    const long i1 = r % s1;                                                                 \
    const long i0 = r / s1;                                                                 \
    dst[gid] = src[offset + i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3 + i4 * t4];               \
}

COPY_STRIDED(ushort, copy_strided_u16)
COPY_STRIDED(uint, copy_strided_u32)
COPY_STRIDED(ulong, copy_strided_u64)

/* Source index of padded position i (may be < 0 or >= size) under a padding mode:
 * 1 reflect (mirror without repeating the edge), 2 replicate, 3 circular. */
inline int pad_source(int i, int size, int mode) {
    if (mode == 1) {
        if (size == 1) return 0;
        const int period = 2 * (size - 1);
        i = i % period;
        if (i < 0) i += period;
        return i < size ? i : period - i;
    }
    if (mode == 2) return clamp(i, 0, size - 1);
    i = i % size;
    return i < 0 ? i + size : i;
}

/* y (NC, OD, OH, OW) = x (NC, D, H, W) padded with (PD, PH, PW) at the low end. */
#define PAD(E, NAME)                                                                        \
__kernel void NAME(__global const E* restrict x, __global E* restrict y, const int NC,     \
                   const int D, const int H, const int W, const int OD, const int OH,       \
                   const int OW, const int PD, const int PH, const int PW, const int mode)  \
{                                                                                           \
    const long gid = get_global_id(0);                                                      \
    const long total = (long)NC * OD * OH * OW;                                             \
    if (gid >= total) return;                                                               \
    const int ow = (int)(gid % OW);                                                         \
    long r = gid / OW;                                                                      \
    const int oh = (int)(r % OH); r /= OH;                                                  \
    const int od = (int)(r % OD);                                                           \
    const long nc = r / OD;                                                                 \
    const int id = pad_source(od - PD, D, mode);                                            \
    const int ih = pad_source(oh - PH, H, mode);                                            \
    const int iw = pad_source(ow - PW, W, mode);                                            \
    y[gid] = x[((nc * D + id) * H + ih) * W + iw];                                          \
}

PAD(ushort, pad_u16)
PAD(uint, pad_u32)
PAD(ulong, pad_u64)
