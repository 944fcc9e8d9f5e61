// A hand-written FMA peak for x86 CPUs, to hold `switchyard-bench`'s `ceilings_fma` against
// (`make fma-peak`): 12 independent vfmadd231ps accumulators in inline assembly (ymm: AVX2 + FMA,
// zmm: AVX-512), so neither the compiler nor a latency chain stands between the loop and the
// FMA ports; OMP_NUM_THREADS threads (one per core), best of five runs.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#define ITERS 50000000L
#define F12(OP, R) OP " %%" R "14, %%" R "15, %%" R "0\n" OP " %%" R "14, %%" R "15, %%" R "1\n" OP " %%" R "14, %%" R "15, %%" R "2\n" \
 OP " %%" R "14, %%" R "15, %%" R "3\n" OP " %%" R "14, %%" R "15, %%" R "4\n" OP " %%" R "14, %%" R "15, %%" R "5\n" \
 OP " %%" R "14, %%" R "15, %%" R "6\n" OP " %%" R "14, %%" R "15, %%" R "7\n" OP " %%" R "14, %%" R "15, %%" R "8\n" \
 OP " %%" R "14, %%" R "15, %%" R "9\n" OP " %%" R "14, %%" R "15, %%" R "10\n" OP " %%" R "14, %%" R "15, %%" R "11\n"
static void run(int w, long n) {
    if (w == 16)
        __asm__ volatile("vxorps %%xmm14,%%xmm14,%%xmm14\n vxorps %%xmm15,%%xmm15,%%xmm15\n"
                         "1:\n" F12("vfmadd231ps", "zmm") "dec %0\n jnz 1b\n"
                         : "+r"(n) : : "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm14","xmm15");
    else
        __asm__ volatile("vxorps %%xmm14,%%xmm14,%%xmm14\n vxorps %%xmm15,%%xmm15,%%xmm15\n"
                         "1:\n" F12("vfmadd231ps", "ymm") "dec %0\n jnz 1b\n"
                         : "+r"(n) : : "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm14","xmm15");
}
int main(int argc, char** argv) {
    int w = argc > 1 ? atoi(argv[1]) : 8;
    if (w != 8 && w != 16) { fprintf(stderr, "usage: fma-peak 8|16\n"); return 2; }
    if (w == 16 ? !__builtin_cpu_supports("avx512f") : !__builtin_cpu_supports("fma")) {
        printf("%d-wide FMA: not supported by this CPU\n", w);
        return 0;
    }
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
        double t0 = omp_get_wtime();
#pragma omp parallel
        run(w, ITERS);
        double t = omp_get_wtime() - t0;
        double gf = 2.0 * w * 12 * (double)ITERS * omp_get_max_threads() / t / 1e9;
        if (gf > best) best = gf;
    }
    printf("%d-wide vfmadd231ps, 12 independent accumulators, %d threads: %.0f GFLOP/s\n", w, omp_get_max_threads(), best);
}
