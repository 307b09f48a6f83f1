/* float16 and bfloat16 storage <-> float32 compute. vload_half / vstore_half are core
 * OpenCL, so float16 works on devices without cl_khr_fp16; bfloat16 is carried as its 16
 * bits (ushort) and widened by a shift. Half types are computed in float32 everywhere and
 * rounded back (round to nearest even) once, at the end. */

/* Index of element gid of a C-contiguous s0..s4 walk over a strided source. */
inline long strided_index(long gid, const int s1, const int s2, const int s3, const int s4,
                          const long t0, const long t1, const long t2, const long t3,
                          const long t4)
{
    long r = gid;
    const long i4 = r % s4; r /= s4;
    const long i3 = r % s3; r /= s3;
    const long i2 = r % s2; r /= s2;
    const long i1 = r % s1;
    const long i0 = r / s1;
    return i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3 + i4 * t4;
}

/* dst[i] = (float) src[offset + strided index of i], dst C-contiguous of shape s0..s4. */
__kernel void half_to_float(__global const half* restrict src, const long offset,
                            const int s0, const int s1, const int s2, const int s3, const int s4,
                            const long t0, const long t1, const long t2, const long t3,
                            const long t4, __global float* restrict dst)
{
    const long gid = get_global_id(0);
    const long total = (long)s0 * s1 * s2 * s3 * s4;
    if (gid >= total) return;
    dst[gid] = vload_half(offset + strided_index(gid, s1, s2, s3, s4, t0, t1, t2, t3, t4), src);
}

__kernel void float_to_half(__global const float* restrict src, __global half* restrict dst,
                            const long count)
{
    const long gid = get_global_id(0);
    if (gid < count) vstore_half_rte(src[gid], gid, dst);
}

/* The same for bfloat16: its bits are the upper half of a float32's. */
__kernel void bf16_to_float(__global const ushort* restrict src, const long offset,
                            const int s0, const int s1, const int s2, const int s3, const int s4,
                            const long t0, const long t1, const long t2, const long t3,
                            const long t4, __global float* restrict dst)
{
    const long gid = get_global_id(0);
    const long total = (long)s0 * s1 * s2 * s3 * s4;
    if (gid >= total) return;
    const ushort bits = src[offset + strided_index(gid, s1, s2, s3, s4, t0, t1, t2, t3, t4)];
    dst[gid] = as_float((uint)bits << 16);
}

/* float32 -> bfloat16, round to nearest even (as ml_dtypes); NaN stays a (quiet) NaN. */
__kernel void float_to_bf16(__global const float* restrict src, __global ushort* restrict dst,
                            const long count)
{
    const long gid = get_global_id(0);
    if (gid >= count) return;
    const uint u = as_uint(src[gid]);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        dst[gid] = (ushort)((u >> 16) | 0x40u);
        return;
    }
    dst[gid] = (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
