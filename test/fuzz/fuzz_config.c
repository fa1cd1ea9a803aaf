/* libFuzzer harness for config loading: any file must load or fail with an error. */
#include "common/config.h"

#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[] = "/tmp/sigil-fuzz-config-XXXXXX";
    int fd = mkstemp(path);
    sg_server_config sc;
    sg_agent_config ac;
    sg_err err;

    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        if (sg_server_config_load(path, false, &sc, &err) == 0)
            sg_server_config_cleanup(&sc);
        if (sg_agent_config_load(path, false, &ac, &err) == 0)
            sg_agent_config_cleanup(&ac);
    }
    close(fd);
    unlink(path);
    return 0;
}
