// A hand-written FMA-throughput loop: the yardstick the OpenCL FMA ceiling kernel
// (Kernels/ceilings.cl, ceilings_fma) is checked against. CHAINS independent vector FMA chains
// per thread (enough to cover FMA latency × throughput: 4 cycles × 2 units = 8 at least),
// AVX-512 (zmm, 16 floats) or AVX2 (ymm, 8 floats), on 1..N threads (pthreads).
//
//   gcc -O2 -mavx512f -DWIDTH=16 fma_peak.c -o fma512 -lpthread && ./fma512 [threads] [seconds]
//   gcc -O2 -mavx2 -mfma -DWIDTH=8 fma_peak.c -o fma256 -lpthread && ./fma256 [threads] [seconds]
//
// Prints GFLOP/s (an FMA counts 2) for 1 thread and for `threads` threads, the best of 5 runs.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef WIDTH
#define WIDTH 16
#endif
#ifndef CHAINS
#define CHAINS 12
#endif

#if WIDTH == 16
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
static float hsum(vec v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 vec;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float hsum(vec v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

static long iterations;
static volatile float sink[64];  // read by nobody, but volatile: the loop cannot be removed

static void* work(void* arg) {
    long id = (long)arg;
    vec a = SET1(0.999999f), b = SET1(1e-6f);
    vec x[CHAINS];
    for (int c = 0; c < CHAINS; ++c) x[c] = SET1(0.1f * c + id);
    for (long i = 0; i < iterations; ++i) {
#pragma GCC unroll 32
        for (int c = 0; c < CHAINS; ++c) x[c] = FMA(x[c], a, b);
    }
    vec s = x[0];
    for (int c = 1; c < CHAINS; ++c) s = ADD(s, x[c]);
    sink[id] = hsum(s);
    return NULL;
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double run(int threads) {
    pthread_t t[64];
    double start = seconds();
    for (long i = 0; i < threads; ++i) pthread_create(&t[i], NULL, work, (void*)i);
    for (int i = 0; i < threads; ++i) pthread_join(t[i], NULL);
    double s = seconds() - start;
    return 2.0 * WIDTH * CHAINS * (double)iterations * threads / s / 1e9;
}

int main(int argc, char** argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    double target = argc > 2 ? atof(argv[2]) : 0.2;
    if (threads < 1 || threads > 64) return 1;
    iterations = 1 << 16;
    double rate = run(1);  // calibrate to about `target` seconds a run
    iterations = (long)(target * rate * 1e9 / (2.0 * WIDTH * CHAINS));
    for (int n = 1; n <= threads; n = n == threads ? threads + 1 : threads) {
        double best = 0;
        for (int r = 0; r < 5; ++r) {
            double g = run(n);
            if (g > best) best = g;
        }
        printf("%s %d chains, %d thread%s: %.1f GFLOP/s\n", WIDTH == 16 ? "AVX-512" : "AVX2", CHAINS, n,
               n == 1 ? "" : "s", best);
    }
    return 0;
}
