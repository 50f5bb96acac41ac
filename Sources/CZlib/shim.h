#ifndef SYNCLINE_CZLIB_SHIM_H
#define SYNCLINE_CZLIB_SHIM_H
#include <zlib.h>

/* deflateInit2/inflateInit2 are macros, which Swift cannot call. */
static inline int syncline_deflateInit2(z_streamp strm, int level, int windowBits, int memLevel, int strategy) {
    return deflateInit2(strm, level, Z_DEFLATED, windowBits, memLevel, strategy);
}

static inline int syncline_inflateInit2(z_streamp strm, int windowBits) {
    return inflateInit2(strm, windowBits);
}
#endif
