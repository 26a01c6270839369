// TenPak codec decode kernels, compiled at run time with NVRTC (no headers needed).
//
// Layout (see docs/FORMAT.md §4): a stage is scales (fp16) | offsets (fp16, absent when
// symmetric) | codes (b-bit, packed low bits first, each group starting on a byte
// boundary). Value = code * scale + offset, symmetric offset = -2^(b-1) * scale.
// Arithmetic uses __fmul_rn/__fadd_rn (no FMA contraction) so results equal the CPU
// decode bit for bit.
//
// Kernels are named <op>_<dtype>: dtype f32, bf16, f16.
//  - int4_flat_*:     4-bit stage whose groups tile rows exactly (cols % group == 0,
//                     group % 8 == 0): code byte of element e is e/2; 4 × 8 weights a
//                     thread, laid out so each warp access is contiguous.
//  - int4res_flat_*:  int4 + int2 residual, both flat, fused (one rounding at the end).
//  - stage_generic_*: any geometry (ragged last group, odd group sizes, 2 or 4 bits,
//                     accumulate into f32 for residuals); one weight a thread.
//  - scatter_*:       fp16 outliers: out[idx[i]] = val[i].

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2bf(float f) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
__device__ __forceinline__ float dq(u32 code, float s, float m) {
    return __fadd_rn(__fmul_rn((float)code, s), m);
}

// Stores 8 consecutive outputs.
__device__ __forceinline__ void store8(float* out, u64 e, const float v[8]) {
    float4* o = (float4*)(out + e);
    o[0] = make_float4(v[0], v[1], v[2], v[3]);
    o[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(u16* out, u64 e, const float v[8], bool bf) {
    u32 w[4];
    for (int k = 0; k < 4; ++k) {
        u32 lo = bf ? f2bf(v[2 * k]) : f2h(v[2 * k]);
        u32 hi = bf ? f2bf(v[2 * k + 1]) : f2h(v[2 * k + 1]);
        w[k] = lo | (hi << 16);
    }
    *(uint4*)(out + e) = make_uint4(w[0], w[1], w[2], w[3]);
}

// Each block covers ITEMS × blockDim × 8 weights; pass `it` of thread `t` takes the 8
// weights at tile + (it·blockDim + t)·8, so every load and store of a warp is contiguous.
#define ITEMS 4
__device__ __forceinline__ u64 chunk_start(int it) {
    return ((u64)blockIdx.x * ITEMS * blockDim.x + (u64)it * blockDim.x + threadIdx.x) * 8;
}

__device__ __forceinline__ bool int4_flat8(const u8* codes, const u16* scales, const u16* offsets,
                                           u64 n, u32 group, int symmetric, float v[8], u64 e) {
    if (e >= n) return false;
    u32 q = *(const u32*)(codes + e / 2);
    u64 g = e / group;
    float s = h2f(scales[g]);
    float m = symmetric ? __fmul_rn(-8.0f, s) : h2f(offsets[g]);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = dq((q >> (4 * k)) & 15u, s, m);
    return true;
}

extern "C" __global__ void int4_flat_f32(const u8* codes, const u16* scales, const u16* offsets,
                                         float* out, u64 n, u32 group, int symmetric) {
    for (int it = 0; it < ITEMS; ++it) {
        float v[8]; u64 e = chunk_start(it);
        if (int4_flat8(codes, scales, offsets, n, group, symmetric, v, e)) store8(out, e, v);
    }
}
extern "C" __global__ void int4_flat_bf16(const u8* codes, const u16* scales, const u16* offsets,
                                          u16* out, u64 n, u32 group, int symmetric) {
    for (int it = 0; it < ITEMS; ++it) {
        float v[8]; u64 e = chunk_start(it);
        if (int4_flat8(codes, scales, offsets, n, group, symmetric, v, e)) store8(out, e, v, true);
    }
}
extern "C" __global__ void int4_flat_f16(const u8* codes, const u16* scales, const u16* offsets,
                                         u16* out, u64 n, u32 group, int symmetric) {
    for (int it = 0; it < ITEMS; ++it) {
        float v[8]; u64 e = chunk_start(it);
        if (int4_flat8(codes, scales, offsets, n, group, symmetric, v, e)) store8(out, e, v, false);
    }
}

__device__ __forceinline__ bool int4res_flat8(const u8* c1, const u16* s1, const u16* o1, u32 g1,
                                              const u8* c2, const u16* s2, const u16* o2, u32 g2,
                                              u64 n, float v[8], u64 e) {
    if (e >= n) return false;
    u32 q = *(const u32*)(c1 + e / 2);
    u32 r = *(const u16*)(c2 + e / 4);
    float sa = h2f(s1[e / g1]), ma = h2f(o1[e / g1]);
    float sb = h2f(s2[e / g2]), mb = h2f(o2[e / g2]);
#pragma unroll
    for (int k = 0; k < 8; ++k)
        v[k] = __fadd_rn(dq((q >> (4 * k)) & 15u, sa, ma), dq((r >> (2 * k)) & 3u, sb, mb));
    return true;
}

extern "C" __global__ void int4res_flat_f32(const u8* c1, const u16* s1, const u16* o1, u32 g1,
                                            const u8* c2, const u16* s2, const u16* o2, u32 g2,
                                            float* out, u64 n) {
    for (int it = 0; it < ITEMS; ++it) {
        float v[8]; u64 e = chunk_start(it);
        if (int4res_flat8(c1, s1, o1, g1, c2, s2, o2, g2, n, v, e)) store8(out, e, v);
    }
}
extern "C" __global__ void int4res_flat_bf16(const u8* c1, const u16* s1, const u16* o1, u32 g1,
                                             const u8* c2, const u16* s2, const u16* o2, u32 g2,
                                             u16* out, u64 n) {
    for (int it = 0; it < ITEMS; ++it) {
        float v[8]; u64 e = chunk_start(it);
        if (int4res_flat8(c1, s1, o1, g1, c2, s2, o2, g2, n, v, e)) store8(out, e, v, true);
    }
}
extern "C" __global__ void int4res_flat_f16(const u8* c1, const u16* s1, const u16* o1, u32 g1,
                                            const u8* c2, const u16* s2, const u16* o2, u32 g2,
                                            u16* out, u64 n) {
    for (int it = 0; it < ITEMS; ++it) {
        float v[8]; u64 e = chunk_start(it);
        if (int4res_flat8(c1, s1, o1, g1, c2, s2, o2, g2, n, v, e)) store8(out, e, v, false);
    }
}

// Any geometry, one weight a thread, f32 output; accumulate adds (residual stages).
extern "C" __global__ void stage_generic_f32(const u8* codes, const u16* scales, const u16* offsets,
                                             float* out, u64 rows, u64 cols, u32 group, u32 bits,
                                             int symmetric, int accumulate) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= rows * cols) return;
    u64 row = e / cols, col = e % cols;
    u32 per_byte = 8 / bits;
    u64 gpr = (cols + group - 1) / group;
    u64 full = cols / group, tail = cols % group;
    u64 gbytes = (group + per_byte - 1) / per_byte;
    u64 cbr = full * gbytes + (tail + per_byte - 1) / per_byte;
    u64 g = col / group, k = col % group;
    u64 byte = row * cbr + g * gbytes + k / per_byte;
    u32 code = (codes[byte] >> ((k % per_byte) * bits)) & ((1u << bits) - 1u);
    u64 gi = row * gpr + g;
    float s = h2f(scales[gi]);
    float m = symmetric ? __fmul_rn(-(float)(1u << (bits - 1)), s) : h2f(offsets[gi]);
    float v = dq(code, s, m);
    out[e] = accumulate ? __fadd_rn(out[e], v) : v;
}

// f32 -> bf16/f16 (after generic stages).
extern "C" __global__ void convert_bf16(const float* in, u16* out, u64 n) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < n) out[e] = f2bf(in[e]);
}
extern "C" __global__ void convert_f16(const float* in, u16* out, u64 n) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < n) out[e] = f2h(in[e]);
}

// Outliers: indices (u32, ascending, < n) and fp16 values.
extern "C" __global__ void scatter_f32(const u32* idx, const u16* val, float* out, u64 count) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[idx[i]] = h2f(val[i]);
}
extern "C" __global__ void scatter_bf16(const u32* idx, const u16* val, u16* out, u64 count) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[idx[i]] = f2bf(h2f(val[i]));
}
extern "C" __global__ void scatter_f16(const u32* idx, const u16* val, u16* out, u64 count) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[idx[i]] = val[i];
}

// bf16 -> bf16 copy is a memcpy; raw bf16 -> f32 for raw tensors loaded as f32.
extern "C" __global__ void bf16_to_f32(const u16* in, float* out, u64 n) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < n) out[e] = __uint_as_float(((u32)in[e]) << 16);
}
