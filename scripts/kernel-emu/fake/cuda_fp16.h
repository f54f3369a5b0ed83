#pragma once
struct __half { _Float16 x; };
inline float __half2float(__half v) { return (float)v.x; }
inline __half __float2half_rn(float f) { return {(_Float16)f}; }
