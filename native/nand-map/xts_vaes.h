/* AES-256-XTS with VAES on 512-bit vectors (xts_vaes.c). */
#ifndef PSTORAGE_XTS_VAES_H
#define PSTORAGE_XTS_VAES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The expanded round keys of one 64-byte XTS key: K1 for encryption and decryption, K2 for the tweak. */
typedef struct {
  uint8_t encrypt[15][16];
  uint8_t decrypt[15][16];
  uint8_t tweak[15][16];
} xts_vaes_key;

/* True when this CPU has what xts_vaes needs (AES-NI, AVX-512F/BW, VAES, VPCLMULQDQ). */
bool xts_vaes_supported(void);
void xts_vaes_set_key(xts_vaes_key* out, const uint8_t key[64]);
/* Encrypts or decrypts `length` (>= 16) bytes in place; the tweak input is `sequence`, u64 little-endian, zero-padded. */
bool xts_vaes(const xts_vaes_key* key, bool encrypt, uint8_t* data, size_t length, uint64_t sequence);

#endif
