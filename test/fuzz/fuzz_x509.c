/*
 * libFuzzer harness for the peer-facing X.509 parsers: the CSR policy and
 * the SubjectPublicKeyInfo check that guards the mint fast path. Any input
 * must be accepted or refused cleanly; an accepted SPKI must also be one
 * OpenSSL itself can decode.
 */
#include "common/x509.h"

#include <openssl/x509.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_der spki = {0};
    sg_err err;

    if (sg_x509_spki_check(data, size, &err) == 0) {
        const unsigned char *p = data;
        X509_PUBKEY *pk = d2i_X509_PUBKEY(NULL, &p, (long)size);
        if (pk == NULL)
            abort();
        X509_PUBKEY_free(pk);
    }
    if (sg_x509_csr_public_key(data, size, &spki, &err) == 0)
        sg_der_cleanup(&spki);
    return 0;
}
