/*
 * libFuzzer harness for JWT-SVID validation: any token must be accepted or
 * refused cleanly. The bundle holds one fixed P-256 test key (below, used
 * nowhere else) so that seeds in test/fuzz/corpus/jwt/ can be validly
 * signed tokens; an accepted token must carry claims that parse as JSON.
 * The first input byte picks the audience, the rest is the token.
 */
#include "common/jwt.h"

#include <jansson.h>
#include <openssl/pem.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_NOW 1700000000

static const char TEST_KEY[] = "-----BEGIN PRIVATE KEY-----\n"
                               "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwXTt7PdKjLMQMo5G\n"
                               "E0moXdeW2TrDoioC+qocIrdCUqahRANCAARIcXKhaWdmhyUJwg7fhK/Kp9rjt2IQ\n"
                               "HVDLq3x2SUosZJwy9Mo+OEwEIRnvtsiA6pGnjbnr/HWVrtcHPkV/M/WC\n"
                               "-----END PRIVATE KEY-----\n";

static sg_bundle bundle;

static const sg_bundle *lookup(void *ctx, const char *td)
{
    (void)ctx;
    return strcmp(td, bundle.trust_domain) == 0 ? &bundle : NULL;
}

/* Loads the test key into the bundle of example.org under its kid. */
static void setup(void)
{
    BIO *b = BIO_new_mem_buf(TEST_KEY, -1);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    unsigned char *der = NULL;
    char kid[33];
    int n;

    if (k == NULL || sg_jwt_kid(k, kid, NULL) < 0 || (n = i2d_PUBKEY(k, &der)) <= 0)
        abort();
    bundle.trust_domain = strdup("example.org");
    bundle.jwt = calloc(1, sizeof *bundle.jwt);
    bundle.jwt[0].kid = strdup(kid);
    bundle.jwt[0].spki.data = malloc((size_t)n);
    memcpy(bundle.jwt[0].spki.data, der, (size_t)n);
    bundle.jwt[0].spki.len = (size_t)n;
    bundle.njwt = 1;
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    BIO_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const auds[] = {"reports", "spiffe://example.org/db", "x"};
    sg_jwt_validated v;
    sg_err err;
    char *tok;

    if (bundle.trust_domain == NULL)
        setup();
    if (size == 0)
        return 0;
    tok = malloc(size);
    if (tok == NULL)
        return 0;
    memcpy(tok, data + 1, size - 1);
    tok[size - 1] = '\0';
    if (sg_jwt_validate(tok, auds[data[0] % 3], FUZZ_NOW, lookup, NULL, &v, &err) == 0) {
        json_t *c = json_loads(v.claims_json, 0, NULL);
        if (c == NULL || v.spiffe_id == NULL || v.exp <= FUZZ_NOW)
            abort();
        json_decref(c);
        sg_jwt_validated_cleanup(&v);
    }
    free(tok);
    return 0;
}
