// The kernels for CPUs without AVX2 (the compiler's baseline instruction set).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "involution_cpu_dispatch.h"
