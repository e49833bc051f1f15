#ifndef CUSTOS_CPNG_SHIM_H
#define CUSTOS_CPNG_SHIM_H
#include <png.h>
#endif
