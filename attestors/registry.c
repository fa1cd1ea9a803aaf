/*
 * The table of built-in attestors. Adding one is a new file implementing a
 * vtable from attestor.h and one line here.
 */
#include "attestors/attestor.h"

#include <string.h>

static const sg_workload_attestor *const workload_attestors[] = {
    &sg_unix_workload_attestor,
};

static const sg_node_attestor_agent *const node_agent_attestors[] = {
    &sg_join_token_agent_attestor,
};

static const sg_node_attestor_server *const node_server_attestors[] = {
    &sg_join_token_server_attestor,
};

#define LOOKUP(table, name)                                                                        \
    do {                                                                                           \
        for (size_t i = 0; i < sizeof(table) / sizeof((table)[0]); i++)                            \
            if (strcmp((table)[i]->name, (name)) == 0)                                             \
                return (table)[i];                                                                 \
        return NULL;                                                                               \
    } while (0)

const sg_workload_attestor *sg_registry_workload(const char *name)
{
    LOOKUP(workload_attestors, name);
}

const sg_node_attestor_agent *sg_registry_node_agent(const char *name)
{
    LOOKUP(node_agent_attestors, name);
}

const sg_node_attestor_server *sg_registry_node_server(const char *name)
{
    LOOKUP(node_server_attestors, name);
}
