/* libFuzzer harness for the HCL parser: any input must parse or fail cleanly. */
#include "common/hcl.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_hcl_node *root = NULL;
    sg_err err;

    if (sg_hcl_parse("fuzz.conf", (const char *)data, size, &root, &err) == 0)
        sg_hcl_free(root);
    return 0;
}
