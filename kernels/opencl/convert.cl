/* float16 and bfloat16 storage <-> float32 compute. Both are carried as their 16 bits
 * (ushort) and converted with integer arithmetic, so no device needs cl_khr_fp16 (and on
 * PoCL this is several times faster than vload_half / vstore_half_rte, which it emulates).
 * Half types are computed in float32 everywhere and rounded back (round to nearest even)
 * once, at the end. */

/* float16 bits -> float32, exactly (subnormal halves are exact float32 normals). */
inline float half_bits_to_float(const ushort h)
{
    const uint sign = (uint)(h & 0x8000u) << 16;
    const uint em = h & 0x7fffu;
    if (em >= 0x7c00u) return as_float(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
    if (em < 0x0400u) return as_float(as_uint((float)em * 5.9604644775390625e-8f) | sign);
    return as_float(sign | ((em << 13) + 0x38000000u));
}

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
__kernel void half_to_float(__global const ushort* restrict src, const long offset,
                            const int s0, const int s1, const int s2, const int s3, const int s4,
                            const long t0, const long t1, const long t2, const long t3,
                            const long t4, __global float* restrict dst)
{
    const long gid = get_global_id(0);
    const long total = (long)s0 * s1 * s2 * s3 * s4;
    if (gid >= total) return;
    dst[gid] = half_bits_to_float(
        src[offset + strided_index(gid, s1, s2, s3, s4, t0, t1, t2, t3, t4)]);
}

/* float32 -> float16 bits, round to nearest even (what vstore_half_rte stores), without
 * branches so PoCL vectorizes it (F. Giesen's float_to_half_fast3_rtne): normal halves by
 * rebiasing the exponent and rounding the dropped 13 bits to even, subnormal ones by letting
 * the float adder round (x + 0.5), overflow to inf; NaN becomes the quiet NaN 0x7e00. */
inline ushort float_to_half_bits(const float value)
{
    const uint bits = as_uint(value);
    const uint f = bits & 0x7fffffffu;
    const uint normal = (f + 0xc8000fffu + ((f >> 13) & 1u)) >> 13;
    const uint subnormal = as_uint(as_float(f) + 0.5f) - 0x3f000000u;
    const uint special = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
    const uint out = f >= 0x47800000u ? special : (f < 0x38800000u ? subnormal : normal);
    return (ushort)(((bits >> 16) & 0x8000u) | out);
}

__kernel void float_to_half(__global const float* restrict src, __global ushort* restrict dst,
                            const long count)
{
    const long gid = get_global_id(0);
    if (gid < count) dst[gid] = float_to_half_bits(src[gid]);
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
    const uint rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    dst[gid] = (ushort)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

/* Contiguous sources (the usual case): the same without the strided index arithmetic. */
__kernel void half_to_float_flat(__global const ushort* restrict src, const long offset,
                                 __global float* restrict dst, const long count)
{
    const long gid = get_global_id(0);
    if (gid < count) dst[gid] = half_bits_to_float(src[offset + gid]);
}

__kernel void bf16_to_float_flat(__global const ushort* restrict src, const long offset,
                                 __global float* restrict dst, const long count)
{
    const long gid = get_global_id(0);
    if (gid < count) dst[gid] = as_float((uint)src[offset + gid] << 16);
}
