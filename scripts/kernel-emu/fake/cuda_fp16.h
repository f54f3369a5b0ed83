#pragma once
struct __half { _Float16 x; };
inline float __half2float(__half v) { return (float)v.x; }
inline __half __float2half_rn(float f) { return {(_Float16)f}; }
struct __half2 { __half x, y; };
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
