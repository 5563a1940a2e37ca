// The kernels built for AVX2 + FMA; only called where the CPU has them (involution_cpu.cpp).
// One extension cannot give one file its own -m flags, so the ISA is enabled here; GCC's
// pragma does not define the ISA macros that sleef.h and ATen's vector headers test, so
// they are defined by hand.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx,avx2,fma,f16c")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "involution_cpu_dispatch.h"
#endif
