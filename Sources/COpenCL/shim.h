#ifndef SWITCHYARD_COPENCL_SHIM_H
#define SWITCHYARD_COPENCL_SHIM_H

// Switchyard targets the OpenCL 1.2 host API (plus the 2.0 queue-creation entry point,
// looked up at run time), so it links against any ICD loader and runs on every driver.
#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS

#include <CL/cl.h>
#include <CL/cl_ext.h>

#endif
