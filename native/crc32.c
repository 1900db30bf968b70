// CRC-32 (zlib's: reflected 0xEDB88320, same chaining as zlib.crc32(buf, prev)) by carry-less
// multiplication folding (Intel's PCLMULQDQ method): four 128-bit lanes are folded 64 bytes at a
// time, then into one lane, and the last 16 bytes plus the tail go through a byte table. Frame
// checksums cover every data byte twice (agent seals, hub verifies); zlib's crc32 was a quarter
// of the CPU of a 1 MiB write. Folding keeps the invariant: CRC(message) = CRC(lane bytes
// followed by the unprocessed rest), so no Barrett step is needed. Where the CPU and the OS have
// AVX-512 VPCLMULQDQ, four 512-bit lanes fold 256 bytes at a time first (about 3x: 33 against
// 80-135 us per MiB on this machine's EPYC, issue 17), ending in the same four 128-bit lanes.
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_FOLDING 1
#endif

static uint32_t table[256];
static int have_pclmul;
static int have_vpclmul512; // 4 x 128-bit folds per instruction (AVX-512 VPCLMULQDQ)
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
#ifdef HAVE_FOLDING
  __builtin_cpu_init();
  have_pclmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  // libgcc's avx512f answer includes the OS saving zmm state (XGETBV), not only CPUID
  have_vpclmul512 = have_pclmul && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq");
#endif
}

static uint32_t bytewise(uint32_t c, const uint8_t *p, size_t n) {
  while (n--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#ifdef HAVE_FOLDING
// x moved forward by the distance its constants encode: lo * k_lo ^ hi * k_hi.
__attribute__((target("pclmul,sse4.1"))) static inline __m128i fold(__m128i x, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

// Four 128-bit lanes 128 bits apart, then the unprocessed rest p[0, n): into one lane, the
// remaining whole blocks folded in, the last lane and the tail through the byte table.
__attribute__((target("pclmul,sse4.1"))) static inline uint32_t reduce(__m128i x0, __m128i x1, __m128i x2, __m128i x3,
                                                                      const uint8_t *p, size_t n) {
  const __m128i by1 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL); // 128 bits ahead
  __m128i x = _mm_xor_si128(fold(x0, by1), x1);
  x = _mm_xor_si128(fold(x, by1), x2);
  x = _mm_xor_si128(fold(x, by1), x3);
  for (; n >= 16; p += 16, n -= 16) x = _mm_xor_si128(fold(x, by1), _mm_loadu_si128((const __m128i *)p));
  uint8_t lane[16];
  _mm_storeu_si128((__m128i *)lane, x);
  return bytewise(bytewise(0, lane, 16), p, n);
}

__attribute__((target("pclmul,sse4.1"))) static uint32_t folded(uint32_t c, const uint8_t *p, size_t n) {
  const __m128i by4 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL); // 512 bits ahead
  __m128i x0 = _mm_loadu_si128((const __m128i *)p), x1 = _mm_loadu_si128((const __m128i *)(p + 16));
  __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32)), x3 = _mm_loadu_si128((const __m128i *)(p + 48));
  x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)c)); // the register enters as the first 4 bytes
  p += 64, n -= 64;
  for (; n >= 64; p += 64, n -= 64) {
    x0 = _mm_xor_si128(fold(x0, by4), _mm_loadu_si128((const __m128i *)p));
    x1 = _mm_xor_si128(fold(x1, by4), _mm_loadu_si128((const __m128i *)(p + 16)));
    x2 = _mm_xor_si128(fold(x2, by4), _mm_loadu_si128((const __m128i *)(p + 32)));
    x3 = _mm_xor_si128(fold(x3, by4), _mm_loadu_si128((const __m128i *)(p + 48)));
  }
  return reduce(x0, x1, x2, x3, p, n);
}

// Four 512-bit lanes (16 x 128 bits) folded 256 bytes at a time: the 128-bit loop above is
// bound by the latency of its folds, this one moves four times the bytes per fold. Its lanes
// then fold into one 512-bit lane, whose four 128-bit parts are exactly the x0..x3 of the loop
// above at the same point of the message, so reduce() finishes it. Needs n >= 256.
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.1"))) static inline __m512i fold512(__m512i x, __m512i k) {
  return _mm512_xor_si512(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11));
}

__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.1"))) static uint32_t folded512(uint32_t c, const uint8_t *p,
                                                                                     size_t n) {
  const __m512i by16 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1322d1430LL, 0x11542778aLL)); // 2048 bits ahead
  const __m512i by4 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL));  // 512 bits ahead
  __m512i z0 = _mm512_loadu_si512(p), z1 = _mm512_loadu_si512(p + 64);
  __m512i z2 = _mm512_loadu_si512(p + 128), z3 = _mm512_loadu_si512(p + 192);
  z0 = _mm512_xor_si512(z0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)c)));
  p += 256, n -= 256;
  for (; n >= 256; p += 256, n -= 256) {
    z0 = _mm512_xor_si512(fold512(z0, by16), _mm512_loadu_si512(p));
    z1 = _mm512_xor_si512(fold512(z1, by16), _mm512_loadu_si512(p + 64));
    z2 = _mm512_xor_si512(fold512(z2, by16), _mm512_loadu_si512(p + 128));
    z3 = _mm512_xor_si512(fold512(z3, by16), _mm512_loadu_si512(p + 192));
  }
  __m512i z = _mm512_xor_si512(fold512(z0, by4), z1);
  z = _mm512_xor_si512(fold512(z, by4), z2);
  z = _mm512_xor_si512(fold512(z, by4), z3);
  for (; n >= 64; p += 64, n -= 64) z = _mm512_xor_si512(fold512(z, by4), _mm512_loadu_si512(p));
  return reduce(_mm512_extracti32x4_epi32(z, 0), _mm512_extracti32x4_epi32(z, 1), _mm512_extracti32x4_epi32(z, 2),
                _mm512_extracti32x4_epi32(z, 3), p, n);
}

#endif

/** 1 when this CPU folds (fast), 0 when only the byte table is left (slower than zlib). */
int rephub_crc32_folded(void) {
  pthread_once(&once, init);
  return have_pclmul;
}

uint32_t rephub_crc32(uint32_t prev, const uint8_t *p, size_t n) {
  pthread_once(&once, init);
  uint32_t c = ~prev;
#ifdef HAVE_FOLDING
  if (have_vpclmul512 && n >= 256) return ~folded512(c, p, n);
  if (have_pclmul && n >= 64) return ~folded(c, p, n);
#endif
  return ~bytewise(c, p, n);
}
