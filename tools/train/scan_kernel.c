/* Fused selective scan for the trainer (CPU, float32), forward and backward.
 *
 * One layer's SSM part of Mamba-1, per batch lane b and channel d:
 *   h_t[n] = exp(dt_t * A[d,n]) * h_{t-1}[n] + dt_t * x_t * B_t[n],   y_t = sum_n C_t[n] * h_t[n]
 * Shapes (all contiguous): x, dt, y, gy, gx, gdt [B,L,D]; A [D,N]; Bm, Cm, gB, gC [B,L,N];
 * h0, hlast, gh0, ghlast, gA_lane [B,D,N]; hs [B,D,L,N] (every state, kept for the backward).
 *
 * The Python scan in mamba_model.py materializes [T,B,D,N] tensors for every elementwise
 * step, which makes it memory-bound; here each (b, d) lane keeps its N-vector in registers.
 * Built by mamba_model.py with gcc -O3 -fopenmp and called through ctypes.
 */
#include <math.h>
#include <stddef.h>

#define MAXN 64

void scan_fwd(int B, int L, int D, int N, const float *x, const float *dt, const float *A,
              const float *Bm, const float *Cm, const float *h0, float *y, float *hs, float *hlast) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int d = 0; d < D; d++) {
      float h[MAXN];
      const float *Ad = A + (size_t)d * N;
      for (int n = 0; n < N; n++) h[n] = h0[((size_t)b * D + d) * N + n];
      float *hsd = hs + ((size_t)b * D + d) * (size_t)L * N;
      for (int t = 0; t < L; t++) {
        size_t i = ((size_t)b * L + t) * D + d;
        float dtv = dt[i], dx = dt[i] * x[i];
        const float *Bt = Bm + ((size_t)b * L + t) * N, *Ct = Cm + ((size_t)b * L + t) * N;
        float *hst = hsd + (size_t)t * N;
        float acc = 0.f;
        for (int n = 0; n < N; n++) {
          float v = expf(dtv * Ad[n]) * h[n] + dx * Bt[n];
          h[n] = v;
          hst[n] = v;
          acc += v * Ct[n];
        }
        y[i] = acc;
      }
      for (int n = 0; n < N; n++) hlast[((size_t)b * D + d) * N + n] = h[n];
    }
}

/* gB, gC must be zeroed by the caller. Parallel over lanes only: gB and gC sum over d. */
void scan_bwd(int B, int L, int D, int N, const float *x, const float *dt, const float *A,
              const float *Bm, const float *Cm, const float *h0, const float *hs, const float *gy,
              const float *ghlast, float *gx, float *gdt, float *gA_lane, float *gB, float *gC,
              float *gh0) {
#pragma omp parallel for schedule(static)
  for (int b = 0; b < B; b++)
    for (int d = 0; d < D; d++) {
      float gh[MAXN], gAacc[MAXN];
      const float *Ad = A + (size_t)d * N;
      const float *h0d = h0 + ((size_t)b * D + d) * N;
      for (int n = 0; n < N; n++) {
        gh[n] = ghlast[((size_t)b * D + d) * N + n];
        gAacc[n] = 0.f;
      }
      const float *hsd = hs + ((size_t)b * D + d) * (size_t)L * N;
      for (int t = L - 1; t >= 0; t--) {
        size_t i = ((size_t)b * L + t) * D + d;
        float dtv = dt[i], xv = x[i], gyv = gy[i];
        const float *Bt = Bm + ((size_t)b * L + t) * N, *Ct = Cm + ((size_t)b * L + t) * N;
        float *gBt = gB + ((size_t)b * L + t) * N, *gCt = gC + ((size_t)b * L + t) * N;
        const float *hst = hsd + (size_t)t * N;
        const float *hprev = t > 0 ? hsd + (size_t)(t - 1) * N : h0d;
        float gxv = 0.f, gdtv = 0.f;
        for (int n = 0; n < N; n++) {
          gCt[n] += gyv * hst[n];
          float g = gh[n] + gyv * Ct[n]; /* dL/dh_t, total */
          float a = expf(dtv * Ad[n]);
          gBt[n] += g * dtv * xv;
          gxv += g * dtv * Bt[n];
          float ga = g * hprev[n];
          gdtv += g * xv * Bt[n] + ga * a * Ad[n];
          gAacc[n] += ga * a * dtv;
          gh[n] = g * a;
        }
        gx[i] = gxv;
        gdt[i] = gdtv;
      }
      for (int n = 0; n < N; n++) {
        gh0[((size_t)b * D + d) * N + n] = gh[n];
        gA_lane[((size_t)b * D + d) * N + n] = gAacc[n];
      }
    }
}
