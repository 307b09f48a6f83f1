/* float16 storage <-> float32 compute. vload_half / vstore_half are core OpenCL, so this
 * works on devices without cl_khr_fp16: float16 tensors are computed in float32 everywhere
 * and rounded back to float16 (round to nearest even) once, at the end. */

/* dst[i] = (float) src[offset + strided index of i], dst C-contiguous of shape s0..s4. */
__kernel void half_to_float(__global const half* restrict src, const long offset,
                            const int s0, const int s1, const int s2, const int s3, const int s4,
                            const long t0, const long t1, const long t2, const long t3,
                            const long t4, __global float* restrict dst)
{
    const long gid = get_global_id(0);
    const long total = (long)s0 * s1 * s2 * s3 * s4;
    if (gid >= total) return;
    long r = gid;
    const long i4 = r % s4; r /= s4;
    const long i3 = r % s3; r /= s3;
    const long i2 = r % s2; r /= s2;
    const long i1 = r % s1;
    const long i0 = r / s1;
    dst[gid] = vload_half(offset + i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3 + i4 * t4, src);
}

__kernel void float_to_half(__global const float* restrict src, __global half* restrict dst,
                            const long count)
{
    const long gid = get_global_id(0);
    if (gid < count) vstore_half_rte(src[gid], gid, dst);
}
