// CLBlast's C API (Debian: libclblast-dev; pkg-config `clblast`). Used only by switchyard-bench,
// as the OpenCL SGEMM peer of the grouped expert matmul. The OpenCL headers are pinned to the
// 1.2 host API, as in Sources/COpenCL/shim.h.
#ifndef SWITCHYARD_CCLBLAST_SHIM_H
#define SWITCHYARD_CCLBLAST_SHIM_H
#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <clblast_c.h>
#endif
