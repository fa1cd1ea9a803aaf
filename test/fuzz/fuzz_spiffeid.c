/* libFuzzer harness for SPIFFE ID and trust domain parsing. */
#include "common/spiffeid.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_spiffeid id, again;
    sg_err err;

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (sg_spiffeid_parse(s, &id, &err) == 0) {
        /* A parsed ID must rebuild from its parts to the same string. */
        if (sg_spiffeid_from_parts(id.td, id.path, &again, &err) != 0 ||
            strcmp(again.str, id.str) != 0)
            abort();
    }
    (void)sg_trust_domain_parse(s, td, &err);
    free(s);
    return 0;
}
