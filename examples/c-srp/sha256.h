/* SHA-256 (FIPS 180-4), for the optional CHECKSUM=sha256:<hex> of docs/srp.md §4. */
#ifndef SHA256_H
#define SHA256_H

#include <stddef.h>

/* hex must hold 65 bytes: 64 lowercase hex digits and a NUL. */
void sha256_hex(const void *data, size_t len, char hex[65]);

#endif
