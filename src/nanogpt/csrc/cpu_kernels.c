/* Hand-written CPU kernels for bf16 training on AVX-512 BF16 CPUs (see nanogpt/native.py).
 *
 * Each kernel does in one pass over memory what eager PyTorch does in several, or skips work
 * it cannot skip: the causal softmax touches only the allowed (lower-left) part of each score
 * row and folds in the 1/sqrt(hs) scale, so the scores need no mask or bias pass; the GELU and
 * its derivative are table lookups. Math in float32, bf16 in and out, rounding to nearest even:
 * the same numbers as PyTorch's bf16 kernels up to the last bit of rounding. Threads: OpenMP,
 * linked against the runtime torch already runs (one pool).
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <omp.h>

static inline __m512 load_bf16(const uint16_t *p, __mmask16 k) {
    __m256i h = _mm256_maskz_loadu_epi16(k, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline void store_bf16(uint16_t *p, __m512 v, __mmask16 k) {
    _mm256_mask_storeu_epi16(p, k, (__m256i)_mm512_cvtneps_pbh(v));
}

/* lanes still inside a row of `left` remaining elements */
static inline __mmask16 lanes(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* e^x on [-87, 88] (clamped outside), relative error about 2e-7: range reduction by ln 2 and a
   degree-6 polynomial, the power of two applied by scalef */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

#define ROW_BUFFER 2048

/* Query row `row` of a (tq, tk) causal block may see keys 0 .. tk - tq + row % tq. */
static inline int64_t allowed(int64_t row, int64_t tq, int64_t tk) {
    int64_t len = row % tq + 1 + (tk - tq);
    return len < tk ? len : tk;
}

/* p = softmax(scale * s) over each row's allowed keys, 0 elsewhere; s, p: rows x tk, rows a multiple of tq */
void causal_softmax_fwd_bf16(const uint16_t *s, uint16_t *p, int64_t rows, int64_t tq, int64_t tk, float scale,
                             int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t row = 0; row < rows; row++) {
        float buf[ROW_BUFFER + 16];  /* each row's exponentials, written once and read once */
        const uint16_t *x = s + row * tk;
        uint16_t *y = p + row * tk;
        int64_t len = allowed(row, tq, tk);
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < len; j += 16) {
            __mmask16 k = lanes(len - j);
            vmax = _mm512_mask_max_ps(vmax, k, vmax, load_bf16(x + j, k));
        }
        /* the max of scale * s is scale * max(s) for scale > 0 */
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax) * scale), sc = _mm512_set1_ps(scale);
        __m512 vsum = _mm512_setzero_ps();
        for (int64_t j = 0; j < len; j += 16) {
            __mmask16 k = lanes(len - j);
            __m512 e = exp512(_mm512_fmsub_ps(load_bf16(x + j, k), sc, m));
            vsum = _mm512_mask_add_ps(vsum, k, vsum, e);
            if (len <= ROW_BUFFER)
                _mm512_storeu_ps(buf + j, e);
        }
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
        for (int64_t j = 0; j < len; j += 16) {
            __mmask16 k = lanes(len - j);
            /* long rows take the exponentials again rather than a buffer that would not stay in L1 */
            __m512 e = len <= ROW_BUFFER ? _mm512_loadu_ps(buf + j) : exp512(_mm512_fmsub_ps(load_bf16(x + j, k), sc, m));
            store_bf16(y + j, _mm512_mul_ps(e, inv), k);
        }
        if (len < tk)
            memset(y + len, 0, (size_t)(tk - len) * sizeof(uint16_t));
    }
}

/* ds = scale * p * (dp - sum(p * dp)) on the allowed keys, 0 elsewhere: the gradient of the forward above */
void causal_softmax_bwd_bf16(const uint16_t *p, const uint16_t *dp, uint16_t *ds, int64_t rows, int64_t tq,
                             int64_t tk, float scale, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t row = 0; row < rows; row++) {
        const uint16_t *a = p + row * tk, *g = dp + row * tk;
        uint16_t *o = ds + row * tk;
        int64_t len = allowed(row, tq, tk);
        __m512 vdot = _mm512_setzero_ps();
        for (int64_t j = 0; j < len; j += 16) {
            __mmask16 k = lanes(len - j);
            vdot = _mm512_fmadd_ps(load_bf16(a + j, k), load_bf16(g + j, k), vdot);
        }
        __m512 dot = _mm512_set1_ps(_mm512_reduce_add_ps(vdot)), sc = _mm512_set1_ps(scale);
        for (int64_t j = 0; j < len; j += 16) {
            __mmask16 k = lanes(len - j);
            __m512 pa = _mm512_mul_ps(load_bf16(a + j, k), sc);
            store_bf16(o + j, _mm512_mul_ps(pa, _mm512_sub_ps(load_bf16(g + j, k), dot)), k);
        }
        if (len < tk)
            memset(o + len, 0, (size_t)(tk - len) * sizeof(uint16_t));
    }
}

/* y = table[bits of x], times factor where factor is not NULL (in float32, rounded once). Any
   function of one bf16 value is one of 65536 numbers, so the exact GELU is a gather from a 256 KB
   table that stays in L2, and its backward dy * GELU'(x) a gather and a multiply. The tables hold
   PyTorch's own results, so the output is PyTorch's bit for bit. */
void lookup_bf16(const uint16_t *x, const uint16_t *factor, uint16_t *y, const float *table, int64_t n,
                 int nthreads) {
    int64_t blocks = (n + 15) / 16;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t i = b * 16;
        __mmask16 k = lanes(n - i);
        __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, x + i));
        __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, table, 4);
        if (factor)
            v = _mm512_mul_ps(load_bf16(factor + i, k), v);
        store_bf16(y + i, v, k);
    }
}

/* y = (x - mean) * rstd * w (+ b) over rows of c channels, statistics in float32 (two passes
   over a row that sits in L1); mean and rstd kept for the backward. b may be NULL. */
void layer_norm_fwd_bf16(const uint16_t *x, const float *w, const float *b, float eps, uint16_t *y, float *mean,
                         float *rstd, int64_t rows, int64_t c, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t row = 0; row < rows; row++) {
        const uint16_t *xr = x + row * c;
        uint16_t *yr = y + row * c;
        __m512 vs = _mm512_setzero_ps();
        for (int64_t j = 0; j < c; j += 16)
            vs = _mm512_add_ps(vs, load_bf16(xr + j, lanes(c - j)));
        float mu = _mm512_reduce_add_ps(vs) / (float)c;
        __m512 vmu = _mm512_set1_ps(mu), vv = _mm512_setzero_ps();
        for (int64_t j = 0; j < c; j += 16) {
            __mmask16 k = lanes(c - j);
            __m512 d = _mm512_maskz_sub_ps(k, load_bf16(xr + j, k), vmu);
            vv = _mm512_fmadd_ps(d, d, vv);
        }
        float rs = 1.0f / sqrtf(_mm512_reduce_add_ps(vv) / (float)c + eps);
        __m512 vrs = _mm512_set1_ps(rs);
        for (int64_t j = 0; j < c; j += 16) {
            __mmask16 k = lanes(c - j);
            __m512 o = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(load_bf16(xr + j, k), vmu), vrs),
                                     _mm512_maskz_loadu_ps(k, w + j));
            if (b)
                o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(k, b + j));
            store_bf16(yr + j, o, k);
        }
        mean[row] = mu;
        rstd[row] = rs;
    }
}

/* The LayerNorm gradients: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w, and
   dw = sum over rows of dy * xhat, db = sum of dy (each thread sums its rows, then the threads
   add up). dw, db: c floats, overwritten; db may be NULL. */
void layer_norm_bwd_bf16(const uint16_t *dy, const uint16_t *x, const float *w, const float *mean,
                         const float *rstd, uint16_t *dx, float *dw, float *db, int64_t rows, int64_t c,
                         float *scratch, int nthreads) {
    /* scratch: nthreads * 2 * c floats for the per-thread sums */
    memset(scratch, 0, (size_t)nthreads * 2 * (size_t)c * sizeof(float));
    #pragma omp parallel num_threads(nthreads)
    {
        int tid = omp_get_thread_num();
        float *pw = scratch + (int64_t)tid * 2 * c, *pb = pw + c;
        #pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; row++) {
            const uint16_t *xr = x + row * c, *gr = dy + row * c;
            uint16_t *out = dx + row * c;
            __m512 vmu = _mm512_set1_ps(mean[row]), vrs = _mm512_set1_ps(rstd[row]);
            __m512 sg = _mm512_setzero_ps(), sgx = _mm512_setzero_ps();
            for (int64_t j = 0; j < c; j += 16) {
                __mmask16 k = lanes(c - j);
                __m512 xhat = _mm512_mul_ps(_mm512_maskz_sub_ps(k, load_bf16(xr + j, k), vmu), vrs);
                __m512 d = load_bf16(gr + j, k);
                __m512 g = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(k, w + j));
                sg = _mm512_add_ps(sg, g);
                sgx = _mm512_fmadd_ps(g, xhat, sgx);
                _mm512_mask_storeu_ps(pw + j, k, _mm512_fmadd_ps(d, xhat, _mm512_maskz_loadu_ps(k, pw + j)));
                _mm512_mask_storeu_ps(pb + j, k, _mm512_add_ps(d, _mm512_maskz_loadu_ps(k, pb + j)));
            }
            __m512 mg = _mm512_set1_ps(_mm512_reduce_add_ps(sg) / (float)c);
            __m512 mgx = _mm512_set1_ps(_mm512_reduce_add_ps(sgx) / (float)c);
            for (int64_t j = 0; j < c; j += 16) {
                __mmask16 k = lanes(c - j);
                __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(load_bf16(xr + j, k), vmu), vrs);
                __m512 g = _mm512_mul_ps(load_bf16(gr + j, k), _mm512_maskz_loadu_ps(k, w + j));
                __m512 t = _mm512_sub_ps(_mm512_sub_ps(g, mg), _mm512_mul_ps(xhat, mgx));
                store_bf16(out + j, _mm512_mul_ps(t, vrs), k);
            }
        }
    }
    for (int64_t j = 0; j < c; j++) {
        float sw = 0.0f, sb = 0.0f;
        for (int t = 0; t < nthreads; t++) {
            sw += scratch[(int64_t)t * 2 * c + j];
            sb += scratch[(int64_t)t * 2 * c + c + j];
        }
        dw[j] = sw;
        if (db)
            db[j] = sb;
    }
}
