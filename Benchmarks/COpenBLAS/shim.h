// OpenBLAS's CBLAS interface (Debian: libopenblas-dev; pkg-config `openblas` names the include
// folder of the installed variant). Used only by switchyard-bench, as the dense-SGEMM peer.
#include <cblas.h>
