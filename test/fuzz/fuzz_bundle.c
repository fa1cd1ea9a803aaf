/*
 * libFuzzer harness for SPIFFE bundle decoding and the base64 variants.
 * Any document must decode or fail cleanly; a decoded bundle must encode
 * and decode again to the same keys. Strict base64 means at most one
 * encoding per byte string: whatever decodes must re-encode to the input.
 */
#include "common/bundle.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void b64_round_trip(const uint8_t *data, size_t size, bool url)
{
    uint8_t *d = NULL;
    size_t n = 0;
    char *s = NULL;

    if (sg_bundle_b64_decode((const char *)data, size, url, &d, &n, NULL) < 0)
        return;
    if (sg_bundle_b64_encode(d, n, url, &s, NULL) < 0 || strlen(s) != size ||
        memcmp(s, data, size) != 0)
        abort();
    free(s);
    free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_bundle b, again;
    char *json = NULL;
    sg_err err;

    b64_round_trip(data, size, true);
    b64_round_trip(data, size, false);
    if (sg_bundle_from_jwks("example.org", (const char *)data, size, &b, &err) < 0)
        return 0;
    if (sg_bundle_to_jwks(&b, &json, &err) < 0 ||
        sg_bundle_from_jwks("example.org", json, strlen(json), &again, &err) < 0)
        abort();
    if (!sg_bundle_same_keys(&b, &again) || again.sequence != b.sequence ||
        again.refresh_hint != b.refresh_hint)
        abort();
    free(json);
    sg_bundle_cleanup(&again);
    sg_bundle_cleanup(&b);
    return 0;
}
