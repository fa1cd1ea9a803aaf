/*
 * The table of built-in server-side node attestors. Kept apart from
 * registry.c so sigil-agent never links the server's datastore.
 */
#include "attestors/attestor.h"

#include <string.h>

static const sg_node_attestor_server *const node_server_attestors[] = {
    &sg_join_token_server_attestor,
};

const sg_node_attestor_server *sg_registry_node_server(const char *name)
{
    for (size_t i = 0; i < sizeof node_server_attestors / sizeof node_server_attestors[0]; i++)
        if (strcmp(node_server_attestors[i]->name, name) == 0)
            return node_server_attestors[i];
    return NULL;
}
