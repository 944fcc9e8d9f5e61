// expandTokens: the replace mode of the token scatter (see scatter_tokens.cl): packed rows go
// back to their positions, the other positions get the base row or the fill value.
#define SCATTER_REPLACE 1
#include "scatter_tokens.cl"
